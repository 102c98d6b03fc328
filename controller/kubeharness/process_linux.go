package kubeharness

import "syscall"

// sysProcAttr makes etcd and kube-apiserver die with the test process,
// even when it is killed before its cleanups run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
