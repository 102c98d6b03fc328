package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/localmesh/netbed"
	"github.com/regomesh/regomesh/ztunnel/capture"
	"github.com/regomesh/regomesh/ztunnel/cni"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// A CNI request naming a network namespace that is not the pod's is
// refused: ztunnel's own (here also the node's: capturing it would take
// the node's traffic), or one that does not hold the pod's addresses (ztunnel would
// speak for them from elsewhere). The same pod in its own namespace is
// enrolled.
func TestEnrolRefusesANetnsThatIsNotThePods(t *testing.T) {
	m := newMesh(t, allowFrontendToAPI)
	late, err := m.Bed.Nodes()[0].AddPod("late")
	if err != nil {
		t.Fatal(err)
	}
	addToState(t, m, late)
	z := m.Ztunnels["node-1"]
	pod := func(netns string, ips ...string) cni.Pod {
		return cni.Pod{UID: "late", Name: "late", Namespace: "shop", Netns: netns, IPs: ips}
	}
	for _, tc := range []struct {
		name string
		pod  cni.Pod
		want string
	}{
		{"ztunnel's own namespace", pod(capture.SelfNetnsPath), "ztunnel's own network namespace"},
		{"ztunnel's own namespace by another path", pod(ownNetnsByFD(t)), "ztunnel's own network namespace"},
		{"another pod's namespace", pod(m.Pods["api"].Path), "does not hold " + late.IP.String()},
		{"an address the namespace lacks", pod(late.Path, late.IP.String(), "10.99.0.7"), "does not hold 10.99.0.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := z.AddPod(context.Background(), tc.pod)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("AddPod(%s) = %v, want a refusal saying %q", tc.pod.Netns, err, tc.want)
			}
			for _, p := range z.Pods() {
				if p.UID == "late" {
					t.Fatalf("a refused pod is enrolled: %+v", p)
				}
			}
		})
	}
	if err := z.AddPod(context.Background(), pod(late.Path, late.IP.String())); err != nil {
		t.Fatalf("the pod in its own namespace: %v", err)
	}
	if err := z.RemovePod(context.Background(), "late"); err != nil {
		t.Fatal(err)
	}
}

// addToState adds p to both nodes' state as shop/late, node-1, running as
// the frontend's service account.
func addToState(t *testing.T, m *mesh, p *netbed.Pod) {
	t.Helper()
	workloads := append([]*state.Workload(nil), m.State.Workloads...)
	workloads = append(workloads, &state.Workload{
		UID: "shop/" + p.Name, Name: p.Name, Namespace: "shop", ServiceAccount: "frontend", Node: "node-1", TrustDomain: m.TrustDomain.Name(),
		IPs: []netip.Addr{p.IP}, Labels: map[string]string{"app": p.Name},
	})
	snap, err := state.NewSnapshot(workloads, m.State.Services)
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range m.Ztunnels {
		z.SetState(context.Background(), snap)
	}
}

// ownNetnsByFD is another path to the test process's own network
// namespace: an open descriptor of it, opened from this goroutine's
// thread (never /proc/self, whose main thread may be inside a pod's
// namespace for a moment).
func ownNetnsByFD(t *testing.T) string {
	t.Helper()
	f, err := os.Open(capture.SelfNetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return fmt.Sprintf("/proc/self/fd/%d", f.Fd())
}
