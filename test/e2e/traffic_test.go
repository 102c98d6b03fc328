package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/testgo"
	"github.com/regomesh/regomesh/ztunnel"
)

func TestMeshTraffic(t *testing.T) {
	m := newMesh(t, allowFrontendToAPI)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	echoServer(t, api, 9090)
	target := fmt.Sprintf("%s:8080", api.IP)

	t.Run("allowed across nodes through both ztunnels", func(t *testing.T) {
		c, err := dialFrom(t, m.Pods["frontend"], target)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := roundTrip(c, "hello mesh"); err != nil || got != "hello mesh" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		c.Close()
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "inbound" && e.SourceID == "spiffe://regomesh.test/ns/shop/sa/frontend" && e.Decision == "allow"
		})
		if e.Policy != "e2e/api" || e.Rule != "frontend-only" || e.Received != 10 || e.Sent != 10 {
			t.Errorf("inbound access entry = %+v", e)
		}
	})
	t.Run("denied, and the access log names the rule", func(t *testing.T) {
		e := m.intruderRefused(t, target)
		if e.Decision != "deny" || e.Flags != ztunnel.FlagDenied || e.Reason != "no ALLOW policy matched; selecting the destination: e2e/api" {
			t.Errorf("deny entry = %+v", e)
		}
	})
	t.Run("wrong port denied", func(t *testing.T) {
		e := m.refused(t, m.Pods["frontend"], "spiffe://regomesh.test/ns/shop/sa/frontend", fmt.Sprintf("%s:9090", api.IP))
		if e.Destination != fmt.Sprintf("%s:9090", api.IP) {
			t.Errorf("deny entry = %+v, want the port the policy does not allow", e)
		}
	})
	t.Run("plaintext from outside the mesh is policy-checked on 15006", func(t *testing.T) {
		m.refused(t, m.Pods["legacy"], "", target)
	})
	t.Run("no SVID: refused, never sent in plaintext", func(t *testing.T) {
		before := len(m.accessEntries(t))
		c, err := dialFrom(t, m.Pods["orphan"], target)
		if err == nil {
			defer c.Close()
			if got, err := roundTrip(c, "no id"); err == nil {
				t.Fatalf("a pod without an SVID got through: %q", got)
			}
		}
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "outbound" && e.SourceID == "spiffe://regomesh.test/ns/shop/sa/orphan"
		})
		if e.Flags != ztunnel.FlagNoSVID {
			t.Errorf("orphan entry = %+v", e)
		}
		for _, e := range m.accessEntries(t)[before:] {
			if e.Direction == "inbound" {
				t.Errorf("the api side saw a connection from the pod without an SVID: %+v", e)
			}
		}
	})
	t.Run("outside the mesh: passthrough in plaintext when policy allows", func(t *testing.T) {
		echoServer(t, m.Pods["legacy"], 7070)
		c, err := dialFrom(t, m.Pods["frontend"], fmt.Sprintf("%s:7070", m.Pods["legacy"].IP))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := roundTrip(c, "out"); err != nil || got != "out" {
			t.Fatalf("passthrough: %q, %v", got, err)
		}
		c.Close()
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "outbound" && e.DestinationWL == "legacy"
		})
		if e.Hbone != "" || e.Decision != "allow" || e.Sent != 3 {
			t.Errorf("passthrough entry = %+v", e)
		}
	})
	t.Run("config dump certificates: the enrolled pods' SVIDs, no keys", func(t *testing.T) {
		certs := m.Ztunnels["node-1"].Certificates()
		var names []string
		for _, c := range certs {
			names = append(names, c.Identity)
			if c.Identity != "spiffe://regomesh.test/ns/shop/sa/orphan" && (c.Error != "" || c.NotAfter.IsZero()) {
				t.Errorf("certificate %+v", c)
			}
		}
		if strings.Join(names, ",") != "spiffe://regomesh.test/ns/shop/sa/frontend,spiffe://regomesh.test/ns/shop/sa/intruder,spiffe://regomesh.test/ns/shop/sa/orphan" {
			t.Errorf("identities = %v", names)
		}
	})
	t.Run("a policy change closes an open connection", func(t *testing.T) {
		c, err := dialFrom(t, m.Pods["frontend"], target)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := roundTrip(c, "before"); err != nil || got != "before" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		time.Sleep(500 * time.Millisecond) // idle: both ztunnels park its relays (after 100ms)
		m.loadPolicy(t, "node-2", `package mesh.policies.e2e.api

allow_scope contains {"policy": "e2e/api"} if input.destination.labels.app == "api"
`)
		// Without sending anything: an idle connection has no goroutine
		// reading it (hbone parks it), and must be closed all the same.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) || n > 0 {
			t.Errorf("read %d bytes, %v: the idle connection survived a policy that denies it", n, err)
		}
		if _, err := roundTrip(c, "after"); err == nil {
			t.Error("the connection still carries data after a policy that denies it")
		}
		// node-2's relay ended and reported it, both directions accounted.
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "inbound" && e.Flags == ztunnel.FlagPolicyClose
		})
		if e.Received != 6 || e.Sent != 6 {
			t.Errorf("policy-closed entry = %+v, want 6 bytes each way", e)
		}
	})
}

func TestDrainAndMetrics(t *testing.T) {
	m := newMeshWithMetrics(t, allowFrontendToAPI)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	c, err := dialFrom(t, m.Pods["frontend"], fmt.Sprintf("%s:8080", api.IP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "12345"); err != nil || got != "12345" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	t.Run("istio metrics with Istio's labels", func(t *testing.T) {
		got := gatherMetric(t, m.registries["node-2"], "istio_tcp_connections_opened_total")
		want := `reporter=destination,source_principal=spiffe://regomesh.test/ns/shop/sa/frontend,destination_workload=api,destination_workload_namespace=shop,response_flags=-,connection_security_policy=mutual_tls`
		if !hasSeries(got, want) {
			t.Errorf("istio_tcp_connections_opened_total lacks %s:\n%s", want, strings.Join(got, "\n"))
		}
	})
	t.Run("SIGTERM drain: open connections finish, then close at the deadline", func(t *testing.T) {
		z := m.Ztunnels["node-2"]
		// The drain deadline leaves a busy machine time for the checks
		// inside it; the shutdown goroutine gets half a second to start
		// (there is no event to wait for: the listeners close inside it).
		const drain = 3 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		start := time.Now()
		done := testgo.Go(t, func(context.Context) {
			if err := z.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
		time.Sleep(500 * time.Millisecond)
		if got, err := roundTrip(c, "still"); err != nil || got != "still" {
			t.Errorf("an open connection broke during the drain: %q, %v", got, err)
		}
		// node-1 still captures the frontend, but node-2 takes no new tunnel.
		if late, err := dialFrom(t, m.Pods["frontend"], fmt.Sprintf("%s:8080", api.IP)); err == nil {
			if got, err := roundTrip(late, "new"); err == nil {
				t.Errorf("a new connection was accepted during the drain: %q", got)
			}
			late.Close()
		}
		<-done
		if time.Since(start) < drain-100*time.Millisecond {
			t.Errorf("shutdown returned after %v, before the drain deadline", time.Since(start))
		}
		if _, err := roundTrip(c, "after"); err == nil {
			t.Error("the connection survived the drain deadline")
		}
		e := m.waitForEntry(t, func(e ztunnel.AccessEntry) bool {
			return e.Direction == "inbound" && e.Flags == ztunnel.FlagDrained
		})
		if e.Received != 10 || e.Sent != 10 {
			t.Errorf("drained entry = %+v", e)
		}
	})
}
