package cli

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// The dry-run describes a connection as ztunnel does: --from/--to with
// --workloads build the input ztunnel's builder makes from the same local
// config, field for field (labels, service account, service).
func TestFlagsBuildTheMeshInput(t *testing.T) {
	const workloads = "testdata/workloads.yaml"
	f := inputFlags{from: "spiffe://cluster.local/ns/shop/sa/api", fromIP: "10.1.0.5", to: "shop/postgres-0", workloads: workloads, port: 5432}
	got, err := f.build()
	if err != nil {
		t.Fatal(err)
	}
	snap, err := state.LoadFile(workloads, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	peer := state.Peer{Principal: f.from, Addr: netip.MustParseAddrPort("10.1.0.5:0")}
	want, _, err := snap.InboundInput(peer, netip.MustParseAddrPort("10.1.0.20:5432"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("flags built\n%+v\nztunnel builds\n%+v", got, want)
	}
	if got.Destination.Service != "postgres.shop.svc.cluster.local" || got.Destination.Labels["app"] != "postgres" || got.Layer != policy.L4 {
		t.Errorf("destination %+v, want postgres's labels and service", got.Destination)
	}
}

func TestFlagsRefuseWhatTheStateContradicts(t *testing.T) {
	base := inputFlags{to: "shop/postgres-0", workloads: "testdata/workloads.yaml"}
	for _, tc := range []struct {
		name string
		edit func(*inputFlags)
		want string
	}{
		{"an address of another workload", func(f *inputFlags) { f.toIP = "10.1.0.5" }, "is not an address of shop/postgres-0"},
		{"not an address", func(f *inputFlags) { f.toIP = "db" }, `--to-ip "db": not an IP address`},
		{"a port out of range", func(f *inputFlags) { f.port = 70000 }, "--port 70000: not a port number"},
		{"a bad source address", func(f *inputFlags) { f.fromIP = "10.1" }, `--from-ip "10.1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := base
			tc.edit(&f)
			if _, err := f.build(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("build() = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
