package meshbed

import (
	"runtime"

	"github.com/vishvananda/netns"
)

// enter runs fn on this goroutine's thread switched into h. The thread is
// never unlocked, so it dies with the goroutine and no other goroutine
// runs in the pod's namespace.
func enter(h netns.NsHandle, errc chan<- error, fn func() error) {
	runtime.LockOSThread()
	if err := netns.Set(h); err != nil {
		errc <- err
		return
	}
	errc <- fn()
}
