// Package cni is the small protocol between the node's CNI plugin
// (regomesh-cni) and ztunnel, as Istio's CNI agent talks to its ztunnel:
// JSON requests and replies, one per line, over a unix socket. A pod is
// added when it starts (ztunnel captures its traffic from then on, no
// restart), deleted when it stops, and a snapshot lists what ztunnel has
// enrolled.
package cni

import "fmt"

// Pod is what the CNI plugin knows of a pod as it starts.
type Pod struct {
	UID       string `json:"uid"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// ServiceAccount may be empty: ztunnel then takes it from its state.
	ServiceAccount string `json:"service_account,omitempty"`
	// Netns is the path of the pod's network namespace.
	Netns string `json:"netns"`
	// IPs are the pod's addresses, as the CNI result gave them.
	IPs []string `json:"ips,omitempty"`
}

// Validate refuses pods ztunnel cannot enrol.
func (p Pod) Validate() error {
	switch {
	case p.UID == "":
		return fmt.Errorf("cni: pod uid is required")
	case p.Name == "" || p.Namespace == "":
		return fmt.Errorf("cni: pod %s: name and namespace are required", p.UID)
	case p.Netns == "":
		return fmt.Errorf("cni: pod %s/%s: netns path is required", p.Namespace, p.Name)
	}
	return nil
}

// Operations.
const (
	OpAdd      = "add"
	OpDelete   = "delete"
	OpSnapshot = "snapshot"
)

// Request is one line the plugin sends.
type Request struct {
	Op  string `json:"op"`
	Pod *Pod   `json:"pod,omitempty"` // add
	UID string `json:"uid,omitempty"` // delete
}

// Reply is ztunnel's answer to one request.
type Reply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Pods  []Pod  `json:"pods,omitempty"` // snapshot
}
