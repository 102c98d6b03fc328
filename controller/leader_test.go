package controller_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/regomesh/regomesh/controller"
	"github.com/regomesh/regomesh/controller/kubeharness"
)

// Two replicas with leader election: both watch and publish, only the
// leader writes status (counted per replica at the HTTP layer), and when
// the leader stops, it gives the Lease up and the other takes over and
// writes the status of what changed meanwhile.
func TestLeaderWritesStatus(t *testing.T) {
	cluster := kubeharness.New(t, kubeharness.Config{})
	rc := cluster.RESTConfig()
	kube := kubernetes.NewForConfigOrDie(rc)
	istio := istioclient.NewForConfigOrDie(rc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type replica struct {
		name   string
		writes *statusWrites
		rec    *recorder
		stop   func()
	}
	start := func(name string) *replica {
		r := &replica{name: name, writes: &statusWrites{n: map[string]int{}}, rec: &recorder{changed: make(chan struct{})}}
		crc := rest.CopyConfig(rc)
		crc.Wrap(r.writes.wrap)
		c, err := controller.New(crc, controller.Config{
			TrustDomain: trustDomain, Debounce: 20 * time.Millisecond, Publish: r.rec.set,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("replica", name),
			LeaderElection: &controller.LeaderElection{
				Namespace: "default", Identity: name,
				LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 200 * time.Millisecond,
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		var stopped bool
		r.stop = func() {
			if stopped {
				return
			}
			stopped = true
			rcancel()
			if err := <-done; err != nil {
				t.Errorf("replica %s: Run: %v", name, err)
			}
		}
		t.Cleanup(r.stop)
		return r
	}
	holder := func() string {
		l, err := kube.CoordinationV1().Leases("default").Get(ctx, "regomesh-controller", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	waitUntil := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("gave up waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	a := start("replica-a")
	waitUntil("replica-a to hold the Lease", func() bool { return holder() == "replica-a" })
	b := start("replica-b")

	e := &env{t: t, ctx: ctx, istio: istio, kube: kube, updates: b.rec}
	e.namespace("pay", map[string]string{"istio.io/dataplane-mode": "ambient"})
	aps := istio.SecurityV1().AuthorizationPolicies("pay")
	if _, err := aps.Create(ctx, allowFrom("first", "regomesh.test/ns/shop/sa/web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := e.conditionOf("pay", "first", "ZtunnelAccepted"); got != "True Accepted: attached to ztunnel" {
		t.Fatalf("first: %q", got)
	}
	// replica-b has built the bundle with "first" too, yet written nothing.
	e.waitFor("replica-b to publish first", func(u *controller.Update) string {
		if moduleNames(u.Bundle, "/pay/first") == "" {
			return "no pay/first module"
		}
		return ""
	})
	const firstStatus = "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies/first/status"
	if a.writes.count(firstStatus) == 0 || b.writes.count(firstStatus) != 0 {
		t.Fatalf("status writes of first: leader %d, follower %d; want some by the leader only", a.writes.count(firstStatus), b.writes.count(firstStatus))
	}

	// The leader stops: it gives the Lease up, and replica-b takes it
	// without waiting out the 4s lease.
	a.stop()
	waitUntil("replica-b to hold the Lease", func() bool { return holder() == "replica-b" })
	if _, err := aps.Create(ctx, allowFrom("second", "regomesh.test/ns/shop/sa/web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := e.conditionOf("pay", "second", "ZtunnelAccepted"); got != "True Accepted: attached to ztunnel" {
		t.Fatalf("second: %q", got)
	}
	const secondStatus = "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies/second/status"
	if b.writes.count(secondStatus) == 0 || a.writes.count(secondStatus) != 0 {
		t.Fatalf("status writes of second: new leader %d, stopped replica %d", b.writes.count(secondStatus), a.writes.count(secondStatus))
	}
}

func TestLeaderElectionNeedsIdentity(t *testing.T) {
	c, err := controller.New(&rest.Config{Host: "https://127.0.0.1:1"}, controller.Config{LeaderElection: &controller.LeaderElection{Namespace: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Run fails before it waits for the caches: the configuration is wrong.
	if err := c.Run(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("Run = %v (ctx %v); want an error naming --leader-elect-identity at once", err, ctx.Err())
	}
}
