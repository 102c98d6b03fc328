package spire

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Selector is a SPIRE selector, such as k8s:ns:demo (type "k8s", value
// "ns:demo").
type Selector struct {
	Type  string
	Value string
}

// String returns the selector as SPIRE prints it: type:value.
func (s Selector) String() string { return s.Type + ":" + s.Value }

// KubernetesSelectors are the selectors of a Kubernetes service account's
// pods: k8s:ns:<ns> and k8s:sa:<sa>.
func KubernetesSelectors(namespace, serviceAccount string) []Selector {
	return []Selector{
		{Type: "k8s", Value: "ns:" + namespace},
		{Type: "k8s", Value: "sa:" + serviceAccount},
	}
}

// KubernetesID is the mesh's SPIFFE ID of a service account:
// spiffe://<td>/ns/<ns>/sa/<sa>.
func KubernetesID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if namespace == "" || serviceAccount == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: namespace %q and service account %q must both be set",
			ErrInvalidWorkload, namespace, serviceAccount)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: namespace %q, service account %q: %w",
			ErrInvalidWorkload, namespace, serviceAccount, err)
	}
	return id, nil
}

// Workload is a local workload identity whose SVID a Store fetches from the
// node's SPIRE agent. Exactly one of Selectors and PID names it to the agent.
type Workload struct {
	// ID is the SPIFFE ID the workload is expected to have. The agent may
	// return several SVIDs for the selectors (one per matching entry); the
	// store keeps the one with this ID.
	ID spiffeid.ID
	// Selectors describe the workload to the agent, which trusts them
	// because the caller is an authorized delegate; for a pod,
	// KubernetesSelectors.
	Selectors []Selector
	// PID is a process of the workload, which the agent attests itself with
	// its workload attestors. The caller must make sure the PID is not
	// recycled while the workload is added: Remove the workload when its
	// process ends (a reconnect re-attests the PID).
	PID int
}

// KubernetesWorkload is the workload of a service account's pods, named by
// selectors k8s:ns:<ns> and k8s:sa:<sa>, with the mesh's SPIFFE ID.
func KubernetesWorkload(td spiffeid.TrustDomain, namespace, serviceAccount string) (Workload, error) {
	id, err := KubernetesID(td, namespace, serviceAccount)
	if err != nil {
		return Workload{}, err
	}
	return Workload{ID: id, Selectors: KubernetesSelectors(namespace, serviceAccount)}, nil
}

// ProcessWorkload is the workload that process pid belongs to, expected to
// have SPIFFE ID id.
func ProcessWorkload(id spiffeid.ID, pid int) Workload {
	return Workload{ID: id, PID: pid}
}

// validate checks what the agent would refuse, and a missing ID.
func (w Workload) validate() error {
	switch {
	case w.ID.IsZero():
		return fmt.Errorf("%w: no SPIFFE ID", ErrInvalidWorkload)
	case len(w.Selectors) == 0 && w.PID <= 0:
		return fmt.Errorf("%w: %s: set selectors or a PID", ErrInvalidWorkload, w.ID)
	case len(w.Selectors) > 0 && w.PID != 0:
		return fmt.Errorf("%w: %s: set selectors or a PID, not both", ErrInvalidWorkload, w.ID)
	}
	return validateSelectors(w.Selectors)
}

func validateSelectors(selectors []Selector) error {
	for _, s := range selectors {
		if s.Type == "" || s.Value == "" {
			return fmt.Errorf("%w: selector %q: type and value must be set", ErrInvalidWorkload, s)
		}
	}
	return nil
}

// describe names the workload in messages: its selectors or its PID.
func (w Workload) describe() string {
	if w.PID != 0 {
		return fmt.Sprintf("PID %d", w.PID)
	}
	return "selectors " + formatSelectors(w.Selectors)
}

func formatSelectors(selectors []Selector) string {
	s := make([]string, len(selectors))
	for i, sel := range selectors {
		s[i] = sel.String()
	}
	slices.Sort(s)
	return "[" + strings.Join(s, " ") + "]"
}
