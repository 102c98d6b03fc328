package harness

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/regomesh/regomesh/internal/childproc"
	"github.com/regomesh/regomesh/spire"
)

// DefaultTrustDomain is the trust domain of a server whose config names none.
var DefaultTrustDomain = spiffeid.RequireTrustDomainFromString("regomesh.test")

// ServerConfig configures a SPIRE server. The zero value works.
type ServerConfig struct {
	// TrustDomain of the server; default DefaultTrustDomain.
	TrustDomain spiffeid.TrustDomain
	// DefaultX509SVIDTTL is the server's default_x509_svid_ttl, for entries
	// without their own; default 1h.
	DefaultX509SVIDTTL time.Duration
	// BinDir holds spire-server and spire-agent; default $REGOMESH_SPIRE_BIN,
	// else bin/ of the regomesh module around the working directory.
	BinDir string
	// Dir is where the server and its agents keep their files; default a
	// fresh /tmp/rm-* directory, removed by Close.
	Dir string
}

func (c ServerConfig) withDefaults() ServerConfig {
	if c.TrustDomain.IsZero() {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.DefaultX509SVIDTTL <= 0 {
		c.DefaultX509SVIDTTL = time.Hour
	}
	return c
}

// Server is a running spire-server and the agents started from it.
type Server struct {
	cfg         ServerConfig
	agentBin    string
	dir         string
	ownDir      bool
	socket      string
	port        int
	proc        *childproc.Process
	conn        *grpc.ClientConn
	registrar   *spire.Registrar
	mu          sync.Mutex
	agents      []*Agent
	agentsNamed int
}

// StartServer starts a SPIRE server and waits until it is healthy.
func StartServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	cfg = cfg.withDefaults()
	serverBin, agentBin, err := binaries(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, agentBin: agentBin, dir: cfg.Dir}
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("/tmp", "rm-"); err != nil {
			return nil, fmt.Errorf("harness: %w", err)
		}
		s.ownDir = true
	}
	s.socket = filepath.Join(s.dir, "server", "api.sock")
	if err := s.start(ctx, serverBin); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// start runs the server on a free port, trying another port if the one
// chosen was taken meanwhile.
func (s *Server) start(ctx context.Context, bin string) error {
	if err := mkdirs(filepath.Join(s.dir, "server", "data")); err != nil {
		return err
	}
	var err error
	for range 3 {
		if err = s.startOnce(ctx, bin); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return err
	}
	if s.registrar, err = spire.DialRegistrar(s.socket); err != nil {
		return err
	}
	s.conn, err = grpc.NewClient("unix://"+s.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("harness: server API: %w", err)
	}
	return nil
}

func (s *Server) startOnce(ctx context.Context, bin string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.port = port
	conf := filepath.Join(s.dir, "server", "server.conf")
	if err := os.WriteFile(conf, []byte(s.config()), 0o644); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	s.proc, err = childproc.Run("spire-server", bin, filepath.Join(s.dir, "server", "server.log"), "run", "-config", conf)
	if err != nil {
		return err
	}
	return waitHealthy(ctx, s.proc, s.socket)
}

// config is the server's HCL configuration.
func (s *Server) config() string {
	data := filepath.Join(s.dir, "server", "data")
	return fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "DEBUG"
  ca_key_type = "ec-p256"
  ca_ttl = "24h"
  default_x509_svid_ttl = %q
  experimental {
    # New entries reach agents within about a second (default 5s).
    cache_reload_interval = "1s"
  }
}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      keys_path = %q
    }
  }
}
`, s.port, s.socket, s.cfg.TrustDomain.Name(), data, s.cfg.DefaultX509SVIDTTL.String(),
		filepath.Join(data, "datastore.sqlite3"), filepath.Join(data, "keys.json"))
}

// TrustDomain is the server's trust domain.
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.cfg.TrustDomain }

// Socket is the path of the server API socket (socket_path).
func (s *Server) Socket() string { return s.socket }

// Address is the host:port agents connect to.
func (s *Server) Address() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// Registrar manages entries on this server.
func (s *Server) Registrar() *spire.Registrar { return s.registrar }

// Logs returns the server's log.
func (s *Server) Logs() string { return s.proc.Logs() }

// Bundle returns the server's own X.509 bundle.
func (s *Server) Bundle(ctx context.Context) (*x509bundle.Bundle, error) {
	b, err := bundlev1.NewBundleClient(s.conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("harness: get bundle of %s: %w", s.cfg.TrustDomain, err)
	}
	var authorities []*x509.Certificate
	for _, a := range b.GetX509Authorities() {
		cert, err := x509.ParseCertificate(a.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("harness: bundle of %s: %w", s.cfg.TrustDomain, err)
		}
		authorities = append(authorities, cert)
	}
	return x509bundle.FromX509Authorities(s.cfg.TrustDomain, authorities), nil
}

// SetFederatedBundle makes the server trust bundle's trust domain, whose
// SVIDs the workloads whose entries federate with it may then verify.
func (s *Server) SetFederatedBundle(ctx context.Context, bundle *x509bundle.Bundle) error {
	b := &types.Bundle{TrustDomain: bundle.TrustDomain().Name()}
	for _, cert := range bundle.X509Authorities() {
		b.X509Authorities = append(b.X509Authorities, &types.X509Certificate{Asn1: cert.Raw})
	}
	resp, err := bundlev1.NewBundleClient(s.conn).BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{b}})
	if err != nil {
		return fmt.Errorf("harness: set federated bundle %s on %s: %w", bundle.TrustDomain(), s.cfg.TrustDomain, err)
	}
	if st := resp.GetResults()[0].GetStatus(); codes.Code(st.GetCode()) != codes.OK {
		return fmt.Errorf("harness: set federated bundle %s on %s: %s", bundle.TrustDomain(), s.cfg.TrustDomain, st.GetMessage())
	}
	return nil
}

// Federate makes s and other trust each other's trust domain.
func (s *Server) Federate(ctx context.Context, other *Server) error {
	for _, pair := range [][2]*Server{{s, other}, {other, s}} {
		b, err := pair[1].Bundle(ctx)
		if err != nil {
			return err
		}
		if err := pair[0].SetFederatedBundle(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

// joinToken creates a join token for one agent.
func (s *Server) joinToken(ctx context.Context) (string, error) {
	tok, err := agentv1.NewAgentClient(s.conn).CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 3600})
	if err != nil {
		return "", fmt.Errorf("harness: create join token on %s: %w", s.cfg.TrustDomain, err)
	}
	return tok.GetValue(), nil
}

// writeBootstrapBundle writes the server's bundle as PEM, for the agents'
// trust_bundle_path.
func (s *Server) writeBootstrapBundle(ctx context.Context, path string) error {
	b, err := s.Bundle(ctx)
	if err != nil {
		return err
	}
	var out []byte
	for _, cert := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	return nil
}

// Close stops the agents and the server and removes the files the
// harness created.
func (s *Server) Close() error {
	s.mu.Lock()
	agents := s.agents
	s.agents = nil
	s.mu.Unlock()
	for _, a := range agents {
		a.Stop()
	}
	var errs []error
	if s.registrar != nil {
		errs = append(errs, s.registrar.Close())
	}
	if s.conn != nil {
		errs = append(errs, s.conn.Close())
	}
	s.proc.Stop(syscall.SIGTERM, 5*time.Second)
	if s.ownDir {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}
