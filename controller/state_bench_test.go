package controller

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/regomesh/regomesh/controller/xds"
)

// BenchmarkStateRebuild is the controller's work for one pod's change in
// BenchmarkAckFromAPIServer's mesh (5,000 enrolled pods on 50 nodes,
// behind 500 services, in 10 namespaces): building the snapshot from the
// informers' objects and handing it to the stream server, which encodes
// what changed. No proxy is connected; the stream's side is
// BenchmarkPodChange and BenchmarkAckLatency in controller/xds.
// "fresh" builds every snapshot from nothing, as the controller did
// before it kept its last build; "kept" is the controller now. The ratio
// is the gain.
//
//	go test -run XXX -bench StateRebuild ./controller/
func BenchmarkStateRebuild(b *testing.B) {
	objs := benchObjects(5000, 50, 500, 10)
	for _, mode := range []string{"fresh", "kept"} {
		b.Run(mode, func(b *testing.B) {
			cfg := Config{}.withDefaults()
			srv := xds.New(xds.Config{})
			builder := newSnapshots(cfg)
			snap, _, err := builder.build(objs)
			if err != nil {
				b.Fatal(err)
			}
			srv.Update(snap)
			pods := objs.pods
			i := 0
			for b.Loop() {
				i++
				if mode == "fresh" {
					builder = newSnapshots(cfg)
				}
				pods = slices.Clone(pods)
				k := (i * 7919) % len(pods)
				pod := *pods[k]
				pod.Labels = maps.Clone(pod.Labels)
				pod.Labels["rev"] = fmt.Sprint(i)
				pods[k] = &pod
				snap, problems, err := builder.build(objects{namespaces: objs.namespaces, pods: pods, services: objs.services})
				if err != nil || len(problems) != 0 {
					b.Fatalf("build: %v %v", err, problems)
				}
				srv.Update(snap)
			}
		})
	}
}

// benchObjects are pods enrolled through their namespace, spread over
// nodes, each selected by one service (pod i by service i % services).
func benchObjects(pods, nodes, services, namespaces int) objects {
	objs := objects{namespaces: map[string]*corev1.Namespace{}}
	for n := range namespaces {
		name := fmt.Sprintf("ns-%d", n)
		objs.namespaces[name] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: map[string]string{labelDataplaneMode: modeAmbient},
		}}
	}
	for s := range services {
		objs.services = append(objs.services, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", s%namespaces), Name: fmt.Sprintf("svc-%d", s)},
			Spec: corev1.ServiceSpec{
				ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", s/250, s%250+1)},
				Selector:   map[string]string{"app": fmt.Sprintf("svc-%d", s)},
				Ports:      []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		})
	}
	for p := range pods {
		s := p % services
		pod := runningPod(fmt.Sprintf("pod-%d", p), fmt.Sprintf("10.1.%d.%d", p/250, p%250+1), map[string]string{"app": fmt.Sprintf("svc-%d", s)})
		pod.Namespace = fmt.Sprintf("ns-%d", s%namespaces)
		pod.Spec.NodeName = fmt.Sprintf("node-%d", p%nodes)
		pod.Spec.ServiceAccountName = fmt.Sprintf("sa-%d", s)
		objs.pods = append(objs.pods, pod)
	}
	return objs
}
