package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/regomesh/regomesh/ztunnel"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// lockablePolicy is allowFrontendToAPI plus a DENY of any destination
// labelled locked=true.
const lockablePolicy = allowFrontendToAPI + `
deny contains {"policy": "e2e/locked", "rule": "locked"} if input.destination.labels.locked == "true"
`

// A state change re-checks open connections against the state it brings:
// the api labelled locked=true closes the frontend's open connection, which
// a re-check with the labels of its admission would have kept.
func TestStateChangeRechecksWithNewLabels(t *testing.T) {
	m := newMesh(t, lockablePolicy)
	api := m.Pods["api"]
	echoServer(t, api, 8080)
	c := openEcho(t, m, "frontend", fmt.Sprintf("%s:8080", api.IP))
	since := len(m.accessEntries(t))
	m.setLabel(t, "api", "locked", "true")
	closedByPolicy(t, c)
	e := m.waitForEntrySince(t, since, func(e ztunnel.AccessEntry) bool {
		return e.Direction == "inbound" && e.Flags == ztunnel.FlagPolicyClose
	})
	if e.DestinationWL != "api" {
		t.Errorf("closed entry %+v, want the api's inbound connection", e)
	}
}

// Passthrough connections (to a workload outside the mesh) are decided by
// policy, so a policy change re-checks and closes them like tunnels.
func TestPolicyChangeClosesPassthrough(t *testing.T) {
	m := newMesh(t, allowFrontendToAPI)
	legacy := m.Pods["legacy"]
	echoServer(t, legacy, 8080)
	c := openEcho(t, m, "frontend", fmt.Sprintf("%s:8080", legacy.IP))
	since := len(m.accessEntries(t))
	m.loadPolicy(t, "node-1", allowFrontendToAPI+`
deny contains {"policy": "e2e/legacy", "rule": "no-legacy"} if input.destination.labels.app == "legacy"
`)
	closedByPolicy(t, c)
	e := m.waitForEntrySince(t, since, func(e ztunnel.AccessEntry) bool {
		return e.Direction == "outbound" && e.Flags == ztunnel.FlagPolicyClose
	})
	if e.Destination != fmt.Sprintf("%s:8080", legacy.IP) {
		t.Errorf("closed entry %+v, want the passthrough to legacy", e)
	}
}

// openEcho opens a connection from pod name to target and checks that it
// echoes.
func openEcho(t *testing.T, m *mesh, name, target string) net.Conn {
	t.Helper()
	c, err := dialFrom(t, m.Pods[name], target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if got, err := roundTrip(c, "before"); err != nil || got != "before" {
		t.Fatalf("%s -> %s: %q, %v", name, target, got, err)
	}
	return c
}

// closedByPolicy checks that c is closed (or reset) without anything
// sent, well before a read deadline that a kept connection would meet.
func closedByPolicy(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(refusedWithin))
	n, err := c.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) || n > 0 {
		t.Fatalf("read %d bytes, %v: the connection survived a change that denies it", n, err)
	}
}

// setLabel sets label key=value on pod name in every ztunnel's state.
func (m *mesh) setLabel(t *testing.T, name, key, value string) {
	t.Helper()
	m.editWorkload(t, name, func(w *state.Workload) {
		labels := map[string]string{key: value}
		for k, v := range w.Labels {
			labels[k] = v
		}
		w.Labels = labels
	})
}

// editWorkload installs, in every ztunnel, the state with pod name's
// workload changed by edit (on a copy: m.State stays as it was).
func (m *mesh) editWorkload(t *testing.T, name string, edit func(*state.Workload)) {
	t.Helper()
	var workloads []*state.Workload
	for _, w := range m.State.Workloads {
		if w.Name == name {
			copied := *w
			edit(&copied)
			w = &copied
		}
		workloads = append(workloads, w)
	}
	snap, err := state.NewSnapshot(workloads, m.State.Services)
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range m.Ztunnels {
		z.SetState(context.Background(), snap)
	}
}
