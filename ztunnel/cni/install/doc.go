// Package install puts regomesh-cni into a node's CNI configuration chain
// and keeps it there: the node agent's DaemonSet runs it
// (cmd/regomesh-cni-install) with the host's CNI directories mounted.
//
// It copies the plugin into the CNI binary directory, appends the
// plugin's entry to the node's primary network configuration (the file
// the container runtime loads: the lexicographically first .conf,
// .conflist or .json), and checks both again every poll, since a network
// plugin that rewrites its configuration drops the entry. A single-plugin
// .conf becomes a .conflist, as a chain must be a list.
//
// At exit it removes what it installed only on uninstall: while the
// DaemonSet stays (a restart, an upgrade), the entry stays, and a pod
// created while no ztunnel answers fails to start rather than run outside
// the mesh. docs/cni.md has the details.
package install
