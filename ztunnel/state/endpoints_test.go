package state

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

// endpointsSnapshot has n workloads in namespace shop, every tenth
// labelled app=web, and one service selecting them.
func endpointsSnapshot(t testing.TB, n int) (*Snapshot, *Service) {
	t.Helper()
	var workloads []*Workload
	for i := range n {
		labels := map[string]string{"app": fmt.Sprintf("app-%d", i)}
		if i%10 == 0 {
			labels["app"] = "web"
		}
		workloads = append(workloads, &Workload{
			UID: fmt.Sprintf("uid-%05d", n-i), Name: fmt.Sprintf("w-%d", i), Namespace: "shop", ServiceAccount: "sa", TrustDomain: "td",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}, Labels: labels, Protocol: HBONE,
		})
	}
	svc := &Service{Name: "web", Namespace: "shop", Selector: map[string]string{"app": "web"}}
	snap, err := NewSnapshot(workloads, []*Service{svc})
	if err != nil {
		t.Fatal(err)
	}
	return snap, svc
}

// Endpoints are the workloads the selector picks in the service's
// namespace, by UID; found once per snapshot and service.
func TestEndpoints(t *testing.T) {
	snap, svc := endpointsSnapshot(t, 100)
	eps := snap.Endpoints(svc)
	if len(eps) != 10 || !slices.IsSortedFunc(eps, func(a, b *Workload) int { return compareStrings(a.UID, b.UID) }) {
		t.Fatalf("Endpoints = %d workloads, sorted %v; want the 10 labelled app=web, by UID", len(eps), slices.IsSortedFunc(eps, func(a, b *Workload) int { return compareStrings(a.UID, b.UID) }))
	}
	for _, ep := range eps {
		if ep.Labels["app"] != "web" {
			t.Errorf("endpoint %s has app=%s", ep.Name, ep.Labels["app"])
		}
	}
	if again := snap.Endpoints(svc); &again[0] != &eps[0] {
		t.Error("asked again, Endpoints walked the workloads again")
	}
	other, _ := endpointsSnapshot(t, 20)
	if got := other.Endpoints(svc); len(got) != 2 {
		t.Errorf("another snapshot's Endpoints of the same service = %d workloads, want its own 2", len(got))
	}
}

// BenchmarkEndpoints is a service's endpoints among 5,000 workloads, as a
// proxy asks for them per connection or request.
func BenchmarkEndpoints(b *testing.B) {
	snap, svc := endpointsSnapshot(b, 5000)
	for b.Loop() {
		if len(snap.Endpoints(svc)) != 500 {
			b.Fatal("wrong endpoints")
		}
	}
}

// HasIdentity is Identity() == id, for ids that are and are not w's.
func FuzzHasIdentity(f *testing.F) {
	f.Add("td", "shop", "web", "spiffe://td/ns/shop/sa/web")
	f.Add("td", "shop", "web", "spiffe://td/ns/shop/sa/web/")
	f.Add("td", "shop", "web", "spiffe://td/ns/shop/sa/we")
	f.Add("td", "a/sa/b", "c", "spiffe://td/ns/a/sa/b/sa/c")
	f.Add("", "", "", "spiffe:///ns//sa/")
	f.Fuzz(func(t *testing.T, td, ns, sa, id string) {
		w := &Workload{TrustDomain: td, Namespace: ns, ServiceAccount: sa}
		if got, want := w.HasIdentity(id), w.Identity() == id; got != want {
			t.Fatalf("HasIdentity(%q) = %v for %q, want %v", id, got, w.Identity(), want)
		}
		if !w.HasIdentity(w.Identity()) {
			t.Fatalf("HasIdentity(Identity()) is false for %q", w.Identity())
		}
	})
}
