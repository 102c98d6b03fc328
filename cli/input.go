package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/regomesh/regomesh/policy"
	"github.com/regomesh/regomesh/ztunnel/state"
)

// inputFlags describe the input document: a file, or flags for the
// common case.
type inputFlags struct {
	file      string
	layer     string
	from      string
	fromIP    string
	to        string
	toIP      string
	workloads string
	port      int
	method    string
	path      string
	host      string
	headers   []string
	jwtClaims string
	maxBytes  int64
}

func (f *inputFlags) register(flags *pflag.FlagSet) {
	flags.StringVarP(&f.file, "input", "i", "", "input document (JSON or YAML, as docs/policy-input.md describes); - reads stdin")
	flags.Int64Var(&f.maxBytes, "max-input-bytes", defaultMaxInputBytes, "refuse an --input or --jwt-claims file larger than this many bytes")
	flags.StringVar(&f.layer, "layer", "", "l4 (ztunnel) or l7 (waypoint); default l7 when a request flag is given, else l4")
	flags.StringVar(&f.from, "from", "", "source SPIFFE ID (spiffe://td/ns/NS/sa/SA); absent means a plaintext peer")
	flags.StringVar(&f.fromIP, "from-ip", "", "source IP address")
	flags.StringVar(&f.to, "to", "", "destination NAMESPACE/WORKLOAD (labels, IP and service account from --workloads)")
	flags.StringVar(&f.toIP, "to-ip", "", "destination IP (default: the workload's first IP from --workloads)")
	flags.StringVar(&f.workloads, "workloads", "", "local-config YAML that ztunnel reads, to resolve --to")
	flags.IntVar(&f.port, "port", 0, "destination port")
	flags.StringVar(&f.method, "method", "", "HTTP method (l7)")
	flags.StringVar(&f.path, "path", "", "HTTP path with query (l7)")
	flags.StringVar(&f.host, "host", "", "HTTP host (l7)")
	flags.StringArrayVar(&f.headers, "header", nil, "HTTP header NAME=VALUE (l7, repeatable)")
	flags.StringVar(&f.jwtClaims, "jwt-claims", "", "JSON file of validated JWT claims: iss/sub become request.auth.principal, aud the audiences, azp the presenter (l7)")
}

// read returns the input document from the file or the flags.
func (f *inputFlags) read(stdin io.Reader) (policy.Input, error) {
	if f.file != "" {
		if f.usesFlags() {
			return policy.Input{}, fmt.Errorf("--input and the input flags (--from, --to, ...) exclude each other")
		}
		return readInputFile(f.file, stdin, f.limit())
	}
	if !f.usesFlags() {
		return policy.Input{}, fmt.Errorf("no input: pass --input FILE (or -), or describe it with --from/--to/--port/...")
	}
	in, err := f.build()
	if err != nil {
		return policy.Input{}, err
	}
	return in, in.Prepare()
}

// limit is --max-input-bytes, its default when unset (a zero-value
// inputFlags, as tests build them).
func (f *inputFlags) limit() int64 {
	if f.maxBytes <= 0 {
		return defaultMaxInputBytes
	}
	return f.maxBytes
}

func (f *inputFlags) usesFlags() bool {
	return f.layer != "" || f.from != "" || f.fromIP != "" || f.to != "" || f.toIP != "" || f.port != 0 || f.l7Flags()
}

func (f *inputFlags) l7Flags() bool {
	return f.method != "" || f.path != "" || f.host != "" || len(f.headers) > 0 || f.jwtClaims != ""
}

// readInputFile reads an input document (JSON or YAML) of at most limit
// bytes from path, or stdin for "-". Objects may not repeat a key, at any
// depth, and a truncated JSON document is reported as such.
func readInputFile(path string, stdin io.Reader, limit int64) (policy.Input, error) {
	raw, err := readLimitedFile(path, stdin, limit)
	if err != nil {
		return policy.Input{}, fmt.Errorf("input: %w", err)
	}
	js, err := inputJSON(raw)
	if err != nil {
		return policy.Input{}, fmt.Errorf("input %s: %w", path, err)
	}
	in, err := policy.DecodeInput(js)
	if err != nil {
		return policy.Input{}, fmt.Errorf("input %s: %w", path, err)
	}
	return in, nil
}

func (f *inputFlags) build() (policy.Input, error) {
	in, err := f.connection()
	if err != nil {
		return in, err
	}
	in.Layer = policy.Layer(f.layer)
	if in.Layer == "" {
		in.Layer = policy.L4
		if f.l7Flags() {
			in.Layer = policy.L7
		}
	}
	if in.Layer == policy.L7 {
		req, err := f.request()
		if err != nil {
			return in, err
		}
		in.Request = req
	} else if f.l7Flags() {
		return in, fmt.Errorf("--method, --path, --host, --header and --jwt-claims need --layer l7")
	}
	return in, nil
}

// connection describes the connection the flags name. With --to and
// --workloads it is built by the mesh's own builder
// (state.Snapshot.InboundInput), from the same local config ztunnel reads,
// so the dry-run decides exactly as ztunnel does.
func (f *inputFlags) connection() (policy.Input, error) {
	in := policy.Input{
		Source:      policy.Source{Principal: f.from, IP: f.fromIP},
		Connection:  policy.Connection{MTLS: f.from != ""},
		Destination: policy.Destination{IP: f.toIP, Port: f.port},
	}
	if f.to == "" {
		return in, nil
	}
	ns, name, ok := strings.Cut(f.to, "/")
	if !ok || ns == "" || name == "" {
		return in, fmt.Errorf("--to %q: want NAMESPACE/WORKLOAD", f.to)
	}
	in.Destination.Namespace, in.Destination.Workload = ns, name
	if f.workloads == "" {
		return in, nil
	}
	snap, err := state.LoadFile(f.workloads, state.Options{})
	if err != nil {
		return in, err
	}
	w, ok := snap.Workload(ns, name)
	if !ok {
		return in, fmt.Errorf("--to %s: no such workload in %s", f.to, f.workloads)
	}
	dst, err := f.destinationAddr(w)
	if err != nil {
		return in, err
	}
	peer := state.Peer{Principal: f.from}
	if f.fromIP != "" {
		ip, err := netip.ParseAddr(f.fromIP)
		if err != nil {
			return in, fmt.Errorf("--from-ip %q: not an IP address", f.fromIP)
		}
		peer.Addr = netip.AddrPortFrom(ip, 0)
	}
	built, _, err := snap.InboundInput(peer, dst)
	return built, err
}

// destinationAddr is --to-ip (which must be one of w's addresses), or w's
// first address, with --port.
func (f *inputFlags) destinationAddr(w *state.Workload) (netip.AddrPort, error) {
	if f.port < 0 || f.port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("--port %d: not a port number", f.port)
	}
	if f.toIP == "" {
		if len(w.IPs) == 0 {
			return netip.AddrPort{}, fmt.Errorf("--to %s: the workload has no address in %s: pass --to-ip", f.to, f.workloads)
		}
		return netip.AddrPortFrom(w.IPs[0], uint16(f.port)), nil
	}
	ip, err := netip.ParseAddr(f.toIP)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--to-ip %q: not an IP address", f.toIP)
	}
	if !slices.Contains(w.IPs, ip.Unmap()) {
		return netip.AddrPort{}, fmt.Errorf("--to-ip %s is not an address of %s in %s", f.toIP, f.to, f.workloads)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(f.port)), nil
}

func (f *inputFlags) request() (*policy.Request, error) {
	r := &policy.Request{Method: f.method, Path: f.path, Host: f.host, Protocol: "HTTP/1.1"}
	for _, h := range f.headers {
		name, value, ok := strings.Cut(h, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--header %q: want NAME=VALUE", h)
		}
		if r.Headers == nil {
			r.Headers = map[string]string{}
		}
		r.Headers[strings.ToLower(name)] = value
	}
	if f.jwtClaims != "" {
		auth, err := readClaims(f.jwtClaims, f.limit())
		if err != nil {
			return nil, err
		}
		r.Auth = auth
	}
	return r, nil
}

// readClaims builds request.auth from a JWT's validated claims as Istio
// does: principal "<iss>/<sub>", audiences from aud (string or list),
// presenter from azp.
func readClaims(path string, limit int64) (*policy.Auth, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--jwt-claims: %w", err)
	}
	defer f.Close()
	raw, err := readLimited(f, path, limit)
	if err != nil {
		return nil, fmt.Errorf("--jwt-claims: %w", err)
	}
	if err := checkJSON(raw, "claims", true); err != nil {
		return nil, fmt.Errorf("--jwt-claims %s: %w", path, err)
	}
	var claims map[string]any
	if err := json.Unmarshal(raw, &claims); err != nil {
		return nil, fmt.Errorf("--jwt-claims %s: %w", path, err)
	}
	auth := &policy.Auth{Claims: claims}
	iss, _ := claims["iss"].(string)
	sub, _ := claims["sub"].(string)
	if iss != "" || sub != "" {
		auth.Principal = iss + "/" + sub
	}
	auth.Presenter, _ = claims["azp"].(string)
	switch aud := claims["aud"].(type) {
	case string:
		auth.Audiences = []string{aud}
	case []any:
		for _, a := range aud {
			if s, ok := a.(string); ok {
				auth.Audiences = append(auth.Audiences, s)
			}
		}
	}
	return auth, nil
}
