package spire_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"

	"github.com/regomesh/regomesh/internal/testgo"
)

// node is one SPIRE agent with its server, and a store that uses the agent
// as a ztunnel would.
type node struct {
	srv    *harness.Server
	agent  *harness.Agent
	client *spire.Client
	store  *spire.Store
}

// startNode starts a server, an agent that authorizes this process, and a
// store on the agent's admin socket.
func startNode(t *testing.T, cfg harness.ServerConfig) *node {
	t.Helper()
	srv := harness.NewServer(t, cfg)
	return newNode(t, srv, srv.NewAgent(t, harness.AgentConfig{}), spire.StoreConfig{})
}

func newNode(t *testing.T, srv *harness.Server, agent *harness.Agent, cfg spire.StoreConfig) *node {
	t.Helper()
	client, err := spire.Dial(agent.AdminSocket())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	store := spire.NewStore(client, cfg)
	t.Cleanup(func() {
		store.Close()
		client.Close()
	})
	return &node{srv: srv, agent: agent, client: client, store: store}
}

// register creates the entry of service account ns/sa on the node's agent
// and returns its workload (not added to the store).
func (n *node) register(t *testing.T, ns, sa string, edit ...func(*spire.Registration)) spire.Workload {
	t.Helper()
	reg, err := spire.KubernetesRegistration(n.srv.TrustDomain(), ns, sa, n.agent.ID())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range edit {
		e(&reg)
	}
	if _, _, err := n.srv.Registrar().Apply(context.Background(), reg); err != nil {
		t.Fatal(err)
	}
	return workload(t, n.srv.TrustDomain(), ns, sa)
}

func workload(t *testing.T, td spiffeid.TrustDomain, ns, sa string) spire.Workload {
	t.Helper()
	w, err := spire.KubernetesWorkload(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// add adds w to the node's store and waits for its SVID.
func (n *node) add(t *testing.T, w spire.Workload) *x509svid.SVID {
	t.Helper()
	if err := n.store.Add(w); err != nil {
		t.Fatal(err)
	}
	return waitSVID(t, n.store, w.ID)
}

func waitSVID(t *testing.T, store *spire.Store, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svid, err := store.WaitSVID(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func waitReady(t *testing.T, store *spire.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := store.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond every 100ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serveEcho serves TLS echo on a loopback port as identity id, with the
// server side of a ztunnel's mTLS: SVID and bundles from ids, peers
// authorized by authorize. Every accepted connection echoes until closed.
func serveEcho(t *testing.T, ids spire.Identities, id spiffeid.ID, authorize tlsconfig.Authorizer) string {
	t.Helper()
	cfg := tlsconfig.MTLSServerConfig(spire.SVIDSource(ids, id), ids.Bundles(id), authorize)
	cfg.MinVersion = tls.VersionTLS13
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { l.Close() })()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			testgo.Go(t, func(ctx context.Context) {
				defer context.AfterFunc(ctx, func() { conn.Close() })()
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
			})
		}
	})
	return l.Addr().String()
}

// dial opens an mTLS connection to addr as identity id, expecting peer,
// and proves it with one echo round trip.
func dial(ids spire.Identities, id, peer spiffeid.ID, addr string) (*tls.Conn, error) {
	cfg := tlsconfig.MTLSClientConfig(spire.SVIDSource(ids, id), ids.Bundles(id), tlsconfig.AuthorizeID(peer))
	cfg.MinVersion = tls.VersionTLS13
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := echo(conn, "hello"); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// echo sends msg and expects it back.
func echo(conn net.Conn, msg string) error {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

// testLogger logs through t, so a store's log shows with the test that
// failed (or with -v). The store is closed by a cleanup before t ends.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
