package state

import (
	"fmt"
	"net/netip"
	"slices"
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
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", w.TrustDomain, w.Namespace, w.ServiceAccount)
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

// ServiceByVIP returns the service answering on vip.
func (s *Snapshot) ServiceByVIP(vip netip.Addr) (*Service, bool) {
	svc, ok := s.byVIP[vip.Unmap()]
	return svc, ok
}

// Endpoints lists the workloads a service selects, in a stable order.
func (s *Snapshot) Endpoints(svc *Service) []*Workload {
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
