package hbone_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/regomesh/regomesh/hbone"
)

// A tunnel end to end, as two ztunnels run it: an inbound server that
// authorizes each tunnel, dials its destination and relays; and a pool
// that opens tunnels with the source workload's SVID. cmd/ wires the
// identities from SPIRE; here a throwaway CA issues them.
func Example() {
	td := spiffeid.RequireTrustDomainFromString("td")
	ca, bundle := exampleCA(td)
	web, client, intruder := ca.svid("/ns/b/sa/web"), ca.svid("/ns/a/sa/client"), ca.svid("/ns/a/sa/intruder")

	// The inbound side: only the client workload may connect.
	srv, err := hbone.NewServer(hbone.ServerConfig{
		SVID:   web,
		Bundle: bundle,
		Handler: hbone.HandlerFunc(func(ctx context.Context, t *hbone.Tunnel) {
			if t.Peer.Path() != "/ns/a/sa/client" {
				t.Reject(fmt.Errorf("%w: %s may not connect", hbone.ErrDenied, t.Peer)) // 401
				return
			}
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", t.Authority.String())
			if err != nil {
				t.Reject(errors.Join(hbone.ErrUpstream, err)) // 503
				return
			}
			s, err := t.Accept() // 200
			if err != nil {
				up.Close()
				return
			}
			hbone.Relay(ctx, s, up)
		}),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0") // ztunnel: :15008 in the pod's namespace
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)

	// The outbound side.
	pool, err := hbone.NewPool(hbone.PoolConfig{Bundle: bundle})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	app := exampleEcho() // the destination workload
	for _, source := range []*x509svid.SVID{client, intruder} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := pool.Dial(ctx, hbone.Request{
			Source:    source,
			Peer:      web.ID,
			Addr:      l.Addr().(*net.TCPAddr).AddrPort(),
			Authority: app,
			Forwarded: netip.MustParseAddrPort("10.1.0.5:40122"),
		})
		cancel()
		switch {
		case errors.Is(err, hbone.ErrNoSVID):
			fmt.Println("no SVID for the source workload: refusing to send plaintext")
		case errors.Is(err, hbone.ErrDenied):
			fmt.Printf("%s: denied by the destination's policy\n", source.ID.Path())
		case err != nil:
			fmt.Println(err)
		default:
			fmt.Fprint(s, "hello")
			s.CloseWrite()
			b, err := io.ReadAll(s)
			s.Close()
			fmt.Printf("%s: %q, %v\n", source.ID.Path(), b, err)
		}
	}
	// Output:
	// /ns/a/sa/client: "hello", <nil>
	// /ns/a/sa/intruder: denied by the destination's policy
}

// exampleAuthority is a trust domain's CA, as SPIRE's: an EC P-256 root.
type exampleAuthority struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func exampleCA(td spiffeid.TrustDomain) (*exampleAuthority, *x509bundle.Bundle) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: td.Name()}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &exampleAuthority{td, cert, key}, x509bundle.FromX509Authorities(td, []*x509.Certificate{cert})
}

// svid issues an X.509-SVID whose only name is the SPIFFE ID.
func (ca *exampleAuthority) svid(path string) *x509svid.SVID {
	id := spiffeid.RequireFromPath(ca.td, path)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		log.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// exampleEcho is a TCP echo server on 127.0.0.1.
func exampleEcho() netip.AddrPort {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}
