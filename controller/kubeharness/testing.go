package kubeharness

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/regomesh/regomesh/internal/childproc"
)

// startTimeout bounds how long tests wait for the cluster: kube-apiserver
// needs 10-30 seconds on a busy two-core machine.
const startTimeout = 2 * time.Minute

// logLines is how much of each log a failed test prints.
const logLines = 150

// New starts a cluster for t, skipping t when kube-apiserver or etcd is
// missing (`make kube` provides both) and failing it on any other error. At
// cleanup it closes the cluster; when t failed, it first logs the tail of
// both logs.
func New(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := Start(ctx, cfg)
	if errors.Is(err, ErrNoBinaries) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver (%s) log:\n%s", c.config.Host, childproc.Tail(c.Logs(), logLines))
			t.Logf("etcd log:\n%s", childproc.Tail(c.EtcdLogs(), logLines))
		}
		if err := c.Close(); err != nil {
			t.Errorf("kubeharness: close: %v", err)
		}
	})
	return c
}
