package spire_test

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/spire"
)

var td = spiffeid.RequireTrustDomainFromString("regomesh.test")

func TestKubernetesID(t *testing.T) {
	for _, tc := range []struct {
		name, ns, sa string
		want         string
		wantErr      bool
	}{
		{name: "service account", ns: "demo", sa: "web", want: "spiffe://regomesh.test/ns/demo/sa/web"},
		{name: "dots and dashes", ns: "kube-system", sa: "coredns.v1", want: "spiffe://regomesh.test/ns/kube-system/sa/coredns.v1"},
		{name: "no namespace", sa: "web", wantErr: true},
		{name: "no service account", ns: "demo", wantErr: true},
		{name: "slash in name", ns: "demo", sa: "a/b", wantErr: true},
		{name: "dot segment", ns: "demo", sa: "..", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := spire.KubernetesID(td, tc.ns, tc.sa)
			if tc.wantErr {
				if !errors.Is(err, spire.ErrInvalidWorkload) {
					t.Errorf("KubernetesID = %v, %v; want ErrInvalidWorkload", id, err)
				}
				return
			}
			if err != nil || id.String() != tc.want {
				t.Errorf("KubernetesID = %v, %v; want %s", id, err, tc.want)
			}
		})
	}
}

// newOfflineStore is a store whose agent is not there.
func newOfflineStore(t *testing.T, cfg spire.StoreConfig) *spire.Store {
	t.Helper()
	client, err := spire.Dial("/tmp/rm-nonexistent/admin.sock")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = testLogger(t)
	store := spire.NewStore(client, cfg)
	t.Cleanup(func() {
		store.Close()
		client.Close()
	})
	return store
}

func TestStoreAddRefusesInvalidWorkloads(t *testing.T) {
	store := newOfflineStore(t, spire.StoreConfig{})
	id := spiffeid.RequireFromString("spiffe://regomesh.test/ns/demo/sa/web")
	for _, tc := range []struct {
		name string
		w    spire.Workload
	}{
		{"no ID", spire.Workload{Selectors: spire.KubernetesSelectors("demo", "web")}},
		{"neither selectors nor PID", spire.Workload{ID: id}},
		{"both selectors and PID", spire.Workload{ID: id, Selectors: spire.KubernetesSelectors("demo", "web"), PID: 42}},
		{"negative PID", spire.Workload{ID: id, PID: -1}},
		{"selector without type", spire.Workload{ID: id, Selectors: []spire.Selector{{Value: "ns:demo"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := store.Add(tc.w); !errors.Is(err, spire.ErrInvalidWorkload) {
				t.Errorf("Add = %v, want ErrInvalidWorkload", err)
			}
		})
	}
}

// Without an agent the store fails closed and says where it looked.
func TestStoreWithoutAgent(t *testing.T) {
	reg := prometheus.NewRegistry()
	store := newOfflineStore(t, spire.StoreConfig{Metrics: spire.NewMetrics(reg), MaxBackoff: 100 * time.Millisecond})
	w, err := spire.KubernetesWorkload(td, "demo", "web")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Add(w); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the stream to fail", func() bool {
		return store.Health().Workloads[0].Stream.LastError != nil
	})
	_, err = store.SVID(w.ID)
	wantErr(t, err, spire.ErrNoSVID, "spiffe://regomesh.test/ns/demo/sa/web", "/tmp/rm-nonexistent/admin.sock")
	wantErr(t, err, spire.ErrAgentUnavailable, "admin_socket_path")
	wantErr(t, store.Health().Err(), spire.ErrAgentUnavailable, "no bundles")
	if _, err := store.Bundles(w.ID).GetX509BundleForTrustDomain(td); err == nil {
		t.Error("a bundle without an agent")
	}
	eventually(t, 5*time.Second, "reconnect attempts to be counted", func() bool {
		return counter(t, reg, "regomesh_spire_stream_reconnects_total", map[string]string{"stream": "x509_svids"}) >= 2
	})
	if got := counter(t, reg, "regomesh_spire_svids", nil); got != 0 {
		t.Errorf("regomesh_spire_svids = %v, want 0", got)
	}

	store.Add(w) // a second pod of the same service account
	store.Remove(w.ID)
	if len(store.Health().Workloads) != 1 {
		t.Error("the first of two Removes released the identity")
	}
	store.Remove(w.ID)
	if len(store.Health().Workloads) != 0 {
		t.Error("the identity outlived its last Remove")
	}
	store.Remove(w.ID) // one too many: nothing happens
}

// Metrics of two stores registered on one registry are shared, and a nil
// *Metrics records nothing without failing.
func TestMetricsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1, m2 := spire.NewMetrics(reg), spire.NewMetrics(reg)
	if m1 != m2 {
		t.Error("a second NewMetrics on the same registry made new collectors")
	}
	newOfflineStore(t, spire.StoreConfig{Metrics: nil})
}
