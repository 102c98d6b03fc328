package spire_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/spire"
	"github.com/regomesh/regomesh/spire/harness"
)

// Apply converges the server's entry for (ID, parent) on the registration,
// creating, updating or leaving it; Delete is idempotent.
func TestRegistrarApply(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := harness.NewServer(t, harness.ServerConfig{})
	r := srv.Registrar()
	partner := spiffeid.RequireTrustDomainFromString("partner.test")
	if err := srv.SetFederatedBundle(ctx, selfSignedBundle(t, partner)); err != nil {
		t.Fatal(err)
	}
	parent := spiffeid.RequireFromString("spiffe://regomesh.test/spire/agent/join_token/node1")
	base, err := spire.KubernetesRegistration(srv.TrustDomain(), "demo", "web", parent)
	if err != nil {
		t.Fatal(err)
	}
	with := func(edit func(*spire.Registration)) spire.Registration {
		r := base
		r.Selectors = slices.Clone(base.Selectors)
		edit(&r)
		return r
	}
	var entryID string
	for _, step := range []struct {
		name string
		reg  spire.Registration
		want spire.Change
	}{
		{"create", base, spire.Created},
		{"same again", base, spire.Unchanged},
		{"selectors in another order", with(func(r *spire.Registration) { slices.Reverse(r.Selectors) }), spire.Unchanged},
		{"new TTL", with(func(r *spire.Registration) { r.X509SVIDTTL = 5 * time.Minute }), spire.Updated},
		{"federation", with(func(r *spire.Registration) { r.FederatesWith = []spiffeid.TrustDomain{partner} }), spire.Updated},
		{"federation again", with(func(r *spire.Registration) { r.FederatesWith = []spiffeid.TrustDomain{partner} }), spire.Unchanged},
		{"more selectors", with(func(r *spire.Registration) {
			r.Selectors = append(r.Selectors, spire.Selector{Type: "k8s", Value: "pod-label:app:web"})
		}), spire.Updated},
		{"back to base", base, spire.Updated},
	} {
		t.Run(step.name, func(t *testing.T) {
			id, got, err := r.Apply(ctx, step.reg)
			if err != nil {
				t.Fatal(err)
			}
			if got != step.want {
				t.Errorf("Apply = %s, want %s", got, step.want)
			}
			if entryID == "" {
				entryID = id
			}
			if id != entryID {
				t.Errorf("entry ID %s, want the one entry %s", id, entryID)
			}
			held, err := r.Lookup(ctx, base.ID, parent)
			if err != nil {
				t.Fatal(err)
			}
			if len(held) != 1 || !sameRegistration(held[0], step.reg) {
				t.Errorf("server holds %+v, want exactly %+v", held, step.reg)
			}
		})
	}

	t.Run("concurrent applies make one entry", func(t *testing.T) {
		reg, _ := spire.KubernetesRegistration(srv.TrustDomain(), "demo", "db", parent)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				_, _, err := r.Apply(ctx, reg)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if held, err := r.Lookup(ctx, reg.ID, parent); err != nil || len(held) != 1 {
			t.Errorf("server holds %d entries (%v), want 1", len(held), err)
		}
	})

	t.Run("delete", func(t *testing.T) {
		for _, want := range []int{1, 0} {
			got, err := r.Delete(ctx, base.ID, parent)
			if err != nil || got != want {
				t.Errorf("Delete = %d, %v; want %d", got, err, want)
			}
		}
	})
}

func TestRegistrarRefusesInvalid(t *testing.T) {
	t.Parallel()
	r, err := spire.DialRegistrar("/nonexistent/api.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	id := spiffeid.RequireFromString("spiffe://regomesh.test/ns/demo/sa/web")
	parent := spiffeid.RequireFromString("spiffe://regomesh.test/spire/agent/join_token/x")
	selectors := spire.KubernetesSelectors("demo", "web")
	for _, tc := range []struct {
		name string
		reg  spire.Registration
	}{
		{"no ID", spire.Registration{Parent: parent, Selectors: selectors}},
		{"no parent", spire.Registration{ID: id, Selectors: selectors}},
		{"no selectors", spire.Registration{ID: id, Parent: parent}},
		{"empty selector value", spire.Registration{ID: id, Parent: parent, Selectors: []spire.Selector{{Type: "k8s"}}}},
		{"negative TTL", spire.Registration{ID: id, Parent: parent, Selectors: selectors, X509SVIDTTL: -time.Second}},
		{"TTL not whole seconds", spire.Registration{ID: id, Parent: parent, Selectors: selectors, X509SVIDTTL: 1500 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := r.Apply(context.Background(), tc.reg); !errors.Is(err, spire.ErrInvalidWorkload) {
				t.Errorf("Apply = %v, want ErrInvalidWorkload", err)
			}
		})
	}
	t.Run("server down", func(t *testing.T) {
		reg := spire.Registration{ID: id, Parent: parent, Selectors: selectors}
		_, _, err := r.Apply(context.Background(), reg)
		wantErr(t, err, spire.ErrServer, "is spire-server running with socket_path")
	})
}

func sameRegistration(a, b spire.Registration) bool {
	key := func(r spire.Registration) []string {
		var k []string
		for _, s := range r.Selectors {
			k = append(k, s.String())
		}
		for _, td := range r.FederatesWith {
			k = append(k, "federates:"+td.Name())
		}
		slices.Sort(k)
		return append(k, r.ID.String(), r.Parent.String(), r.X509SVIDTTL.String())
	}
	return slices.Equal(key(a), key(b))
}

// selfSignedBundle is a bundle of one fresh CA for trust domain td.
func selfSignedBundle(t *testing.T, td spiffeid.TrustDomain) *x509bundle.Bundle {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return x509bundle.FromX509Authorities(td, []*x509.Certificate{cert})
}
