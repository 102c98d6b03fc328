package state

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Protocol says how a workload's traffic is carried.
type Protocol string

const (
	// HBONE: the workload is in the mesh; its ztunnel terminates tunnels.
	HBONE Protocol = "HBONE"
	// None: the workload is outside the mesh; traffic to it is plaintext
	// (passed through when policy allows).
	None Protocol = "NONE"
)

// Workload is one pod.
type Workload struct {
	// UID identifies the workload; "<namespace>/<name>" when not given.
	UID            string            `json:"uid"`
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"service_account"`
	IPs            []netip.Addr      `json:"ips"`
	Node           string            `json:"node"`
	Labels         map[string]string `json:"labels"`
	Protocol       Protocol          `json:"protocol"`
	// Waypoint is "<namespace>/<name>" of the waypoint serving this
	// workload, or empty.
	Waypoint string `json:"waypoint"`
	// TrustDomain of the workload's identity.
	TrustDomain string `json:"trust_domain"`
}

// Identity is the workload's SPIFFE ID.
func (w *Workload) Identity() string {
	parts := w.identityParts()
	return strings.Join(parts[:], "")
}

// identityParts are the pieces Identity joins.
func (w *Workload) identityParts() [6]string {
	return [...]string{"spiffe://", w.TrustDomain, "/ns/", w.Namespace, "/sa/", w.ServiceAccount}
}

// HasIdentity reports whether id is w's Identity, without formatting it:
// a proxy asks of every endpoint it may pick.
func (w *Workload) HasIdentity(id string) bool {
	rest := id
	for _, part := range w.identityParts() {
		var ok bool
		if rest, ok = strings.CutPrefix(rest, part); !ok {
			return false
		}
	}
	return rest == ""
}

// Service is a Kubernetes service: virtual IPs load-balanced over the
// workloads its selector picks in its namespace.
type Service struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Hostname is "<name>.<namespace>.svc.<cluster domain>" unless given.
	Hostname string            `json:"hostname"`
	VIPs     []netip.Addr      `json:"vips"`
	Ports    []ServicePort     `json:"ports"`
	Selector map[string]string `json:"selector"`
	Waypoint string            `json:"waypoint"`
}

// ServicePort maps a service port to the workloads' port.
type ServicePort struct {
	Port       int `yaml:"port" json:"port"`
	TargetPort int `yaml:"targetPort" json:"targetPort"`
	// Name is the Kubernetes port name. As in Istio, a name of the form
	// <protocol>[-<suffix>] ("http", "grpc-api", "tcp-db") declares the
	// port's protocol when AppProtocol does not.
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// AppProtocol is the Kubernetes appProtocol ("http", "http2", "grpc",
	// "kubernetes.io/h2c", "tcp", ...); it wins over Name.
	AppProtocol string `yaml:"appProtocol,omitempty" json:"appProtocol,omitempty"`
}

// PortProtocol is what a service port carries, as a waypoint needs to
// know it: HTTP it parses and decides per request, TCP it relays with L4
// policy only, and an undeclared port it sniffs.
type PortProtocol string

const (
	// PortUnknown: nothing declared; a waypoint sniffs the first bytes.
	PortUnknown PortProtocol = ""
	// PortHTTP is HTTP/1.1 (or HTTP/2 with prior knowledge, which a
	// waypoint accepts on any HTTP port).
	PortHTTP PortProtocol = "HTTP"
	// PortHTTP2 is HTTP/2 without TLS (h2c, prior knowledge).
	PortHTTP2 PortProtocol = "HTTP2"
	// PortGRPC is gRPC: HTTP/2 with prior knowledge.
	PortGRPC PortProtocol = "GRPC"
	// PortTCP is opaque: TLS, databases, anything not HTTP in the clear.
	PortTCP PortProtocol = "TCP"
)

// Protocol is the port's declared protocol, read as Istio reads it: the
// appProtocol if it names one Istio knows, else the port name's prefix
// before the first "-" (the whole name for "grpc-web"), else PortUnknown.
func (p ServicePort) Protocol() PortProtocol {
	if proto := parsePortProtocol(p.AppProtocol); proto != PortUnknown {
		return proto
	}
	if proto := parsePortProtocol(p.Name); proto != PortUnknown {
		return proto
	}
	prefix, _, _ := strings.Cut(p.Name, "-")
	return parsePortProtocol(prefix)
}

// parsePortProtocol maps Istio's protocol names (case-insensitive) to what
// a waypoint does with them. Protocols Istio treats as opaque TCP (tls,
// https, mongo, mysql, redis, ...) are PortTCP.
func parsePortProtocol(name string) PortProtocol {
	switch strings.ToLower(name) {
	case "http", "http_proxy", "grpc-web":
		return PortHTTP
	case "http2", "h2c", "kubernetes.io/h2c":
		return PortHTTP2
	case "grpc":
		return PortGRPC
	case "tcp", "tls", "https", "mongo", "mysql", "redis", "udp":
		return PortTCP
	}
	return PortUnknown
}

// Port returns the service's port numbered port.
func (svc *Service) Port(port uint16) (ServicePort, bool) {
	for _, p := range svc.Ports {
		if p.Port == int(port) {
			return p, true
		}
	}
	return ServicePort{}, false
}

// Snapshot is the whole state at one moment; it is never modified once
// built, so readers need no lock.
type Snapshot struct {
	Workloads []*Workload
	Services  []*Service
	byIP      map[netip.Addr]*Workload
	byName    map[string]*Workload
	byVIP     map[netip.Addr]*Service
	// waypoints are the SPIFFE IDs of the workloads that some workload or
	// service names as its waypoint.
	waypoints map[string]bool
	// endpoints memoises Endpoints: *Service -> []*Workload, found on
	// first use, for as long as the snapshot lives.
	endpoints sync.Map
}

// NewSnapshot indexes workloads and services, refusing duplicates.
func NewSnapshot(workloads []*Workload, services []*Service) (*Snapshot, error) {
	s := &Snapshot{
		Workloads: workloads, Services: services,
		byIP: map[netip.Addr]*Workload{}, byName: map[string]*Workload{}, byVIP: map[netip.Addr]*Service{},
	}
	for _, w := range workloads {
		if err := s.addWorkload(w); err != nil {
			return nil, err
		}
	}
	for _, svc := range services {
		for _, vip := range svc.VIPs {
			if other, dup := s.byVIP[vip]; dup {
				return nil, fmt.Errorf("state: service %s/%s: vip %s already belongs to %s/%s", svc.Namespace, svc.Name, vip, other.Namespace, other.Name)
			}
			s.byVIP[vip] = svc
		}
	}
	s.waypoints = map[string]bool{}
	for _, w := range workloads {
		s.addWaypoint(w.Waypoint)
	}
	for _, svc := range services {
		s.addWaypoint(svc.Waypoint)
	}
	return s, nil
}

func (s *Snapshot) addWaypoint(ref string) {
	if wp, ok := s.byName[ref]; ok {
		s.waypoints[wp.Identity()] = true
	}
}

// IsWaypoint reports whether id is the SPIFFE ID of a waypoint: a workload
// that a workload or service in this state names as its waypoint. Only a
// waypoint's Forwarded header is believed.
func (s *Snapshot) IsWaypoint(id string) bool { return s.waypoints[id] }

func (s *Snapshot) addWorkload(w *Workload) error {
	key := w.Namespace + "/" + w.Name
	if _, dup := s.byName[key]; dup {
		return fmt.Errorf("state: workload %s appears twice", key)
	}
	s.byName[key] = w
	for _, ip := range w.IPs {
		if other, dup := s.byIP[ip]; dup {
			return fmt.Errorf("state: workload %s: ip %s already belongs to %s/%s", key, ip, other.Namespace, other.Name)
		}
		s.byIP[ip] = w
	}
	return nil
}

// WorkloadByIP returns the workload owning ip.
func (s *Snapshot) WorkloadByIP(ip netip.Addr) (*Workload, bool) {
	w, ok := s.byIP[ip.Unmap()]
	return w, ok
}

// Workload returns the workload namespace/name.
func (s *Snapshot) Workload(namespace, name string) (*Workload, bool) {
	w, ok := s.byName[namespace+"/"+name]
	return w, ok
}

// Waypoint returns the workload a waypoint reference names
// ("<namespace>/<name>", as Workload.Waypoint and Service.Waypoint hold).
func (s *Snapshot) Waypoint(ref string) (*Workload, bool) {
	w, ok := s.byName[ref]
	return w, ok
}

// ServiceByVIP returns the service answering on vip.
func (s *Snapshot) ServiceByVIP(vip netip.Addr) (*Service, bool) {
	svc, ok := s.byVIP[vip.Unmap()]
	return svc, ok
}

// Endpoints lists the workloads a service selects, in a stable order.
//
// The list is found once per snapshot and service, on first use, and
// shared: callers must not change it. A proxy asks for it on every
// connection (ztunnel) or request (a waypoint), and finding it walks every
// workload.
func (s *Snapshot) Endpoints(svc *Service) []*Workload {
	if eps, ok := s.endpoints.Load(svc); ok {
		return eps.([]*Workload)
	}
	eps, _ := s.endpoints.LoadOrStore(svc, s.findEndpoints(svc))
	return eps.([]*Workload)
}

func (s *Snapshot) findEndpoints(svc *Service) []*Workload {
	var out []*Workload
	for _, w := range s.Workloads {
		if w.Namespace == svc.Namespace && len(svc.Selector) > 0 && selects(svc.Selector, w.Labels) {
			out = append(out, w)
		}
	}
	slices.SortFunc(out, func(a, b *Workload) int { return compareStrings(a.UID, b.UID) })
	return out
}

// ServicesOf lists the services selecting w.
func (s *Snapshot) ServicesOf(w *Workload) []*Service {
	var out []*Service
	for _, svc := range s.Services {
		if svc.Namespace == w.Namespace && len(svc.Selector) > 0 && selects(svc.Selector, w.Labels) {
			out = append(out, svc)
		}
	}
	return out
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
