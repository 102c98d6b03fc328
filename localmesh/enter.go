package localmesh

import (
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetns runs fn on a thread inside the network namespace at path (a
// pod's or a node's). The thread is retired afterwards.
func inNetns(path string, fn func() error) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer h.Close()
	errc := make(chan error, 1)
	go enter(h, errc, fn)
	return <-errc
}

// enter runs fn on this goroutine's thread switched into h. The thread is
// never unlocked, so it dies with the goroutine and no other goroutine
// runs in the namespace.
func enter(h netns.NsHandle, errc chan<- error, fn func() error) {
	runtime.LockOSThread()
	if err := netns.Set(h); err != nil {
		errc <- err
		return
	}
	errc <- fn()
}
