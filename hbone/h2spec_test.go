package hbone

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"html"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/internal/testgo"
)

// h2specDiffers are the h2spec cases HBONE may fail, each for the reason
// docs/h2spec.md gives: mostly, HBONE serves CONNECT only (RFC 9113 8.5),
// so it answers every other request 400 at once, ending the stream the
// case meant to go on using.
var h2specDiffers = []string{
	"generic/2/2", "generic/2/3", "http2/4.2/3",
	"http2/5.1/5", "http2/5.1/6", "http2/5.1/8", "http2/5.1/11", "http2/5.1.2/1",
	"http2/6.1/2", "http2/6.9.1/3", "http2/8.1/1",
	"http2/8.1.2.1/3", "http2/8.1.2.2/1", "http2/8.1.2.2/2",
	"http2/8.1.2.3/1", "http2/8.1.2.3/2", "http2/8.1.2.3/3", "http2/8.1.2.3/4",
	"http2/8.1.2.6/1", "http2/8.1.2.6/2",
}

// TestH2Spec runs h2spec, an HTTP/2 conformance suite someone else wrote,
// against a Server. h2spec presents no client certificate, so this Server
// takes clients without one, as a fixed identity; everything past TLS is
// the Server's own. Every case passes except those in h2specDiffers.
// `make tools` builds h2spec into bin/; H2SPEC names another binary.
// h2specSections cover h2spec's whole suite between them. http2/8 is cut
// finer, as most of its cases differ on purpose and wait out the timeout;
// "http2/8.1/1" is 8.1's one case of its own, without the subsections.
var h2specSections = []string{
	"generic", "hpack", "http2/3", "http2/4", "http2/5", "http2/6", "http2/7",
	"http2/8.1/1", "http2/8.1.2/1", "http2/8.1.2.1", "http2/8.1.2.2", "http2/8.1.2.3", "http2/8.1.2.6", "http2/8.2",
}

// h2specCases is the size of h2spec's suite at the version tools/h2spec/go.mod pins.
const h2specCases = 145

func TestH2Spec(t *testing.T) {
	bin := os.Getenv("H2SPEC")
	if bin == "" {
		bin = filepath.Join("..", "bin", "h2spec")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no h2spec at %s (make tools builds it; H2SPEC=path names another): %v", bin, err)
	}
	m := newMesh(t)
	srv, err := NewServer(ServerConfig{
		SVID: m.serverSVID, Bundle: m.bundle, Logger: slog.New(slog.DiscardHandler),
		Handler: HandlerFunc(func(ctx context.Context, tun *Tunnel) { tun.Reject(ErrDenied) }),
	})
	if err != nil {
		t.Fatal(err)
	}
	anonymous := spiffeid.RequireFromString("spiffe://td.test/h2spec")
	srv.tls = srv.tls.Clone()
	srv.tls.ClientAuth, srv.tls.VerifyPeerCertificate = tls.NoClientCert, nil
	srv.peerOf = func(tls.ConnectionState) (spiffeid.ID, error) { return anonymous, nil }
	l := listenLoopback(t, "127.0.0.1:0")
	t.Cleanup(func() { srv.Close() })
	testgo.Go(t, func(ctx context.Context) {
		defer context.AfterFunc(ctx, func() { srv.Close() })()
		srv.Serve(l)
	})

	// Cases that expect no answer wait out h2spec's 2s timeout, so one run
	// of the whole suite mostly sleeps: run its sections side by side, each
	// its own h2spec process with its own report.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	outs := make([][]byte, len(h2specSections))
	var wg sync.WaitGroup
	for i, section := range h2specSections {
		wg.Go(func() {
			report := filepath.Join(dir, strconv.Itoa(i)+".xml")
			cmd := exec.CommandContext(ctx, bin, "-t", "-k", "-h", "127.0.0.1", "-p", port, "-o", "2", "-j", report, section)
			outs[i], _ = cmd.CombinedOutput() // h2spec exits 1 when a case fails
		})
	}
	wg.Wait()
	var cases []junitCase
	for i, section := range h2specSections {
		t.Logf("h2spec %s:\n%s", section, outs[i])
		cases = append(cases, readJUnit(t, filepath.Join(dir, strconv.Itoa(i)+".xml"))...)
	}
	if len(cases) != h2specCases {
		t.Fatalf("h2spec ran %d cases, want its whole suite (%d)", len(cases), h2specCases)
	}
	passed := 0
	for _, c := range cases {
		switch differs := slices.Contains(h2specDiffers, c.id()); {
		case c.ok() && differs:
			passed++ // some of them race HBONE's immediate 400, and pass at times
		case !c.ok() && !differs:
			t.Errorf("h2spec %s %s: %s", c.id(), c.Name, c.message())
		case c.ok():
			passed++
		}
	}
	t.Logf("h2spec: %d of %d cases pass; %d differ on purpose (docs/h2spec.md)", passed, len(cases), len(h2specDiffers))
}

// junitCase is one h2spec case in its JUnit report.
type junitCase struct {
	ID      string `xml:"-"`
	Name    string `xml:"classname,attr"`
	Failure *struct {
		Content string `xml:",innerxml"`
	} `xml:"failure"`
	Error *struct {
		Content string `xml:",innerxml"`
	} `xml:"error"`
}

func (c junitCase) ok() bool { return c.Failure == nil && c.Error == nil }

// id is the case's section and number, as h2spec names them on its
// command line: "http2/5.1/1".
func (c junitCase) id() string { return c.ID }

func (c junitCase) message() string {
	switch {
	case c.Failure != nil:
		return strings.Join(strings.Fields(html.UnescapeString(c.Failure.Content)), " ")
	case c.Error != nil:
		return strings.Join(strings.Fields(html.UnescapeString(c.Error.Content)), " ")
	}
	return ""
}

func readJUnit(t *testing.T, path string) []junitCase {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("h2spec wrote no report: %v", err)
	}
	var report struct {
		Suites []struct {
			Package string      `xml:"package,attr"`
			Cases   []junitCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &report); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	var cases []junitCase
	for _, s := range report.Suites {
		for i, c := range s.Cases {
			c.ID = s.Package + "/" + strconv.Itoa(i+1)
			cases = append(cases, c)
		}
	}
	return cases
}
