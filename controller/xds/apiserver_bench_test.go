package xds_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/bundleserver"
	"github.com/regomesh/regomesh/controller/kubeharness"
	"github.com/regomesh/regomesh/controller/xds"
	"github.com/regomesh/regomesh/internal/testpki"
	"github.com/regomesh/regomesh/ztunnel/state"
	wire "github.com/regomesh/regomesh/ztunnel/state/xds"
)

// ackPolicies is issue 14's count of AuthorizationPolicies.
const ackPolicies = 1000

// BenchmarkAckFromAPIServer is issue 14's benchmark end to end: a real
// kube-apiserver (controller/kubeharness) holding 5,000 pods on 50 nodes
// behind 500 services and 1,000 AuthorizationPolicies; the controller
// (controller.New, default 100 ms debounce) publishing to the stream and
// to the bundle server (bundles signed, RS256); 50 ztunnels subscribed
// over mutual TLS gRPC in this process, each to 10 services. It measures
// the time from the start of the API request that makes a change to the
// last ACK, by the server's clock, of every proxy the change is for:
//
//   - pod: one pod relabeled: its node's ztunnel and those subscribed to
//     its service;
//   - policy: one AuthorizationPolicy changed: the new mesh bundle's
//     revision, to all 50.
//
// The controller, the stream server and the 50 clients share this
// process: its RSS and CPU are theirs together (the API server and etcd
// are processes of their own, not counted).
//
//	go test -run XXX -bench AckFromAPIServer -benchtime 20x -timeout 30m ./controller/xds/
func BenchmarkAckFromAPIServer(b *testing.B) {
	cluster := kubeharness.New(b, kubeharness.Config{})
	rc := cluster.RESTConfig()
	rc.QPS, rc.Burst = 2000, 4000
	ctx := b.Context()
	kube := kubernetes.NewForConfigOrDie(rc)
	istio := istioclient.NewForConfigOrDie(rc)
	loadStart := time.Now()
	loadCluster(b, ctx, kube, istio)
	b.Logf("loaded %d pods, %d services, %d policies through the API server in %s", ackPods, ackServices, ackPolicies, time.Since(loadStart).Round(time.Second))

	ca := testpki.New(b, "td.test")
	bed := newBed(b, ca, "127.0.0.1:0", &state.Snapshot{})
	bundles := newBundleServer(b, bed.srv)
	published := make(chan struct{}, 1)
	c, err := controller.New(rc, controller.Config{
		TrustDomain: "td.test",
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Publish: func(u *controller.Update) {
			bed.srv.Update(u.Snapshot)
			bundles.Update(u)
			bed.srv.UpdateBundles(bundles.Revisions())
			select {
			case published <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	b.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			b.Errorf("controller: %v", err)
		}
	})
	waitFor(b, func() (int, bool) {
		v := bed.srv.Version()
		return len(v), v != "0" && len(bundles.Revisions()) > 0
	}, "the controller's first update")
	waitStatus(b, ctx, istio)
	syncStart := time.Now()
	proxies := make([]*proxy, ackNodes)
	subscribers := map[int][]int{}
	for n := range ackNodes {
		proxies[n] = bed.connect(b, fmt.Sprintf("/regomesh/ztunnel/node-%d", n), fmt.Sprintf("node-%d", n))
	}
	vips := serviceVIPs(b, ctx, kube)
	for n, p := range proxies {
		bed.waitAcked(b, p)
		for k := range demandsPerNode {
			svc := (n*7 + k*ackNodes) % ackServices
			demandVIP(b, p, vips[svc])
			subscribers[svc] = append(subscribers[svc], n)
		}
	}
	for _, p := range proxies {
		bed.waitAcked(b, p)
	}
	b.Logf("50 ztunnels synced in %s; RSS %d MiB", time.Since(syncStart).Round(time.Millisecond), rss(b)>>20)

	b.Run("pod", func(b *testing.B) {
		var lat []time.Duration
		cpu := cpuTime()
		i := 0
		for b.Loop() {
			i++
			at := (i * 37) % ackPods
			name := fmt.Sprintf("pod-%d", at)
			nodes := append([]int{at % ackNodes}, subscribers[at%ackServices]...)
			pod, err := kube.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			pod.Labels["rev"] = strconv.Itoa(i)
			start := time.Now()
			if _, err := kube.CoreV1().Pods("shop").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, lastAck(b, bed, proxies, nodes, start, func(st xds.ProxyStatus) (time.Time, bool) {
				return st.AckedAt, holdsRev(proxies, st, name, i)
			}))
		}
		report(b, lat, cpuTime()-cpu)
	})
	b.Run("policy", func(b *testing.B) {
		var lat []time.Duration
		all := make([]int, ackNodes)
		for n := range all {
			all[n] = n
		}
		cpu := cpuTime()
		i := 0
		for b.Loop() {
			i++
			name := fmt.Sprintf("policy-%d", (i*13)%ackPolicies)
			ap, err := istio.SecurityV1().AuthorizationPolicies("shop").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			ap.Spec.Rules[0].From[0].Source.Principals = []string{fmt.Sprintf("td.test/ns/shop/sa/client-%d", i)}
			before := bed.srv.Proxies()[0].Bundles[wire.MeshBundle]
			start := time.Now()
			if _, err := istio.SecurityV1().AuthorizationPolicies("shop").Update(ctx, ap, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, lastAck(b, bed, proxies, all, start, func(st xds.ProxyStatus) (time.Time, bool) {
				return st.BundlesAckedAt, st.Bundles[wire.MeshBundle] != before
			}))
		}
		report(b, lat, cpuTime()-cpu)
	})
	b.Logf("RSS at the end: %d MiB", rss(b)>>20)
}

// waitStatus waits until the controller has written every policy's
// status condition, 1,000 writes that would otherwise compete with the
// first changes measured.
func waitStatus(b *testing.B, ctx context.Context, istio istioclient.Interface) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		list, err := istio.SecurityV1().AuthorizationPolicies("shop").List(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		written := 0
		for _, ap := range list.Items {
			if len(ap.Status.GetConditions()) > 0 {
				written++
			}
		}
		if written == ackPolicies {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("the controller wrote the status of %d policies of %d in 5 minutes", written, ackPolicies)
		}
		time.Sleep(200 * time.Millisecond) // a list of 1,000 policies is no cheap poll
	}
}

// holdsRev says whether the proxy of st holds pod name with label rev=i
// at the version it ACKed.
func holdsRev(proxies []*proxy, st xds.ProxyStatus, name string, i int) bool {
	for _, p := range proxies {
		if p.id.String() != st.ID {
			continue
		}
		s, _ := p.state()
		w, ok := s.Workload("shop", name)
		return ok && w.Labels["rev"] == strconv.Itoa(i) && st.AckedVersion == p.client.Version()
	}
	return false
}

func demandVIP(b *testing.B, p *proxy, vip string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ip, err := netip.ParseAddr(vip)
	if err != nil {
		b.Fatalf("service VIP %q: %v", vip, err)
	}
	if err := p.client.Demand(ctx, ip); err != nil {
		b.Fatal(err)
	}
}

// loadCluster creates, 16 requests at a time, the namespace, 500
// services, 5,000 pods (Running, with an address, as a kubelet reports
// them) and 1,000 AuthorizationPolicies.
func loadCluster(b *testing.B, ctx context.Context, kube kubernetes.Interface, istio istioclient.Interface) {
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"},
	}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	parallel(b, ackServices, func(i int) error {
		_, err := kube.CoreV1().Services("shop").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i)},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		}, metav1.CreateOptions{})
		return err
	})
	parallel(b, ackPods, func(i int) error {
		pod, err := kube.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%ackServices)}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%ackNodes),
				Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		ip := fmt.Sprintf("10.1.%d.%d", i>>8, i&0xff)
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		_, err = kube.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	parallel(b, ackPolicies, func(i int) error {
		_, err := istio.SecurityV1().AuthorizationPolicies("shop").Create(ctx, &istiosecurity.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("policy-%d", i)},
			Spec: securityv1beta1.AuthorizationPolicy{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%ackServices)}},
				Rules: []*securityv1beta1.Rule{{
					From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: []string{fmt.Sprintf("td.test/ns/shop/sa/client-%d", i)}}}},
				}},
			},
		}, metav1.CreateOptions{})
		return err
	})
}

func parallel(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// serviceVIPs are the ClusterIPs the API server gave svc-0 to svc-499.
func serviceVIPs(b *testing.B, ctx context.Context, kube kubernetes.Interface) []string {
	list, err := kube.CoreV1().Services("shop").List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	out := make([]string, ackServices)
	for _, svc := range list.Items {
		var i int
		if _, err := fmt.Sscanf(svc.Name, "svc-%d", &i); err == nil && i < ackServices {
			out[i] = svc.Spec.ClusterIP
		}
	}
	return out
}

// newBundleServer serves the controller's bundles signed with a fresh
// RSA key, its clients identified by srv, as regomesh-controller does.
func newBundleServer(b *testing.B, srv *xds.Server) *bundleserver.Server {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := bundleserver.NewSigner(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), "RS256", "regomesh")
	if err != nil {
		b.Fatal(err)
	}
	s, err := bundleserver.New(bundleserver.Config{Signer: signer, Proxies: srv, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	return s
}
