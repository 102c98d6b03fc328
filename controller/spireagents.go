package controller

import (
	"fmt"
	"regexp"
	"strings"
	"text/template"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/regomesh/regomesh/spire"
)

// NodeAgents says which SPIRE agent a node's workload entries are parented
// to: the agent of the node, so that only that node's agent (and, through
// it, the node's ztunnel) can issue the workload's SVIDs there.
//
// By default a node is named by a node alias: an entry of SPIFFE ID
// spiffe://<td>/regomesh/node/<cluster>/<node>, parented to the SPIRE
// server, with the k8s_psat selectors every agent attested on that node
// has (k8s_psat:cluster:<cluster>, k8s_psat:agent_node_name:<node>); the
// server maps each such agent to the alias, whatever its own ID (which
// for k8s_psat holds the node's UID, not its name). With AgentID set, the
// template names the agent's own SPIFFE ID instead, and no alias is made.
type NodeAgents struct {
	// Cluster is the cluster's name in the SPIRE server's k8s_psat
	// configuration (its clusters map), which the aliases' selectors and
	// the mesh's entry IDs carry: one SPIRE server can serve several
	// clusters without one controller touching another's entries.
	Cluster string
	// AgentID, if set, is a text/template of the agent's SPIFFE ID, given
	// {{.TrustDomain}}, {{.Cluster}} and {{.Node}}: for agents whose ID
	// derives from the node's name (x509pop with the node's name as CN,
	// say: "spiffe://{{.TrustDomain}}/spire/agent/x509pop/{{.Node}}").
	AgentID *template.Template
}

// clusterName is what a cluster name may be: it goes into SPIFFE IDs and
// entry IDs.
var clusterName = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// ParseAgentIDTemplate parses an AgentID template and checks it makes a
// SPIFFE ID of trust domain td.
func ParseAgentIDTemplate(text string, td spiffeid.TrustDomain) (*template.Template, error) {
	tmpl, err := template.New("agent-id").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("controller: SPIRE agent ID template: %w", err)
	}
	a := NodeAgents{Cluster: "cluster", AgentID: tmpl}
	if _, err := a.parent(td, "node-1"); err != nil {
		return nil, err
	}
	return tmpl, nil
}

// Validate checks the cluster name.
func (a NodeAgents) Validate() error {
	if !clusterName.MatchString(a.Cluster) {
		return fmt.Errorf("controller: SPIRE cluster name %q: want lowercase letters, digits, '-' and '.', as in the SPIRE server's k8s_psat clusters", a.Cluster)
	}
	return nil
}

// parent is the SPIFFE ID a workload entry on node is parented to.
func (a NodeAgents) parent(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	if a.AgentID == nil {
		return a.aliasID(td, node)
	}
	var b strings.Builder
	data := struct{ TrustDomain, Cluster, Node string }{td.Name(), a.Cluster, node}
	if err := a.AgentID.Execute(&b, data); err != nil {
		return spiffeid.ID{}, fmt.Errorf("controller: SPIRE agent ID template: %w", err)
	}
	id, err := spiffeid.FromString(strings.TrimSpace(b.String()))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("controller: SPIRE agent ID template made %q for node %s: %w", b.String(), node, err)
	}
	if id.TrustDomain() != td {
		return spiffeid.ID{}, fmt.Errorf("controller: SPIRE agent ID template made %s for node %s, outside trust domain %s", id, node, td)
	}
	return id, nil
}

func (a NodeAgents) aliasID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "regomesh", "node", a.Cluster, node)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("controller: node %q: %w", node, err)
	}
	return id, nil
}

// alias is the node alias entry of node, or false when agents are named
// by AgentID.
func (a NodeAgents) alias(td spiffeid.TrustDomain, node string) (spire.Registration, bool, error) {
	if a.AgentID != nil {
		return spire.Registration{}, false, nil
	}
	id, err := a.aliasID(td, node)
	if err != nil {
		return spire.Registration{}, false, err
	}
	server, err := spiffeid.FromSegments(td, "spire", "server")
	if err != nil {
		return spire.Registration{}, false, err
	}
	return spire.Registration{ID: id, Parent: server, Selectors: []spire.Selector{
		{Type: "k8s_psat", Value: "cluster:" + a.Cluster},
		{Type: "k8s_psat", Value: "agent_node_name:" + node},
	}}, true, nil
}
