package kubeharness

import "github.com/regomesh/regomesh/internal/childproc"

// PIDs returns the process IDs of etcd and kube-apiserver, for the test
// that checks that they are gone after Close.
func (c *Cluster) PIDs() []int {
	var pids []int
	for _, p := range []*childproc.Process{c.etcd, c.apiserver} {
		if p != nil {
			pids = append(pids, p.Pid())
		}
	}
	return pids
}
