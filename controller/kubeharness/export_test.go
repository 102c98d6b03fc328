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

// SetPickPorts replaces how the harness picks ports until the returned
// function restores it. Tests that call it must not run in parallel.
func SetPickPorts(pick func(n int) ([]int, error)) (restore func()) {
	saved := pickPorts
	pickPorts = pick
	return func() { pickPorts = saved }
}

// FreePorts is freePorts.
var FreePorts = freePorts
