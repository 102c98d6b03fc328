// Package childproc starts the long-running children of tests and of the
// local mesh (SPIRE, etcd, kube-apiserver, ztunnel and waypoint processes
// in network namespaces) so that they die with this process, even when it
// is killed before its cleanups run, and keeps a child's output in a log
// file that outlives its restarts.
//
// Every child is forked from one OS thread that lives as long as this
// process. Linux sends the parent-death signal (Pdeathsig) when the
// *thread* that forked a child exits, and Go retires threads that a
// goroutine locked and never unlocked, as network namespace code does
// (localmesh/netbed, ztunnel/capture): a child forked from such a thread
// would be killed mid-run.
package childproc
