package harness

import "syscall"

// sysProcAttr makes SPIRE die with the test process, even when it is
// killed before its cleanups run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
