//go:build linux

package hbone

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

// parker waits for idle sockets to become readable without a goroutine
// per socket. A relay direction reading a socket that has had nothing to
// say for a while (parkIdleAfter) registers the socket here and lets its
// goroutine end; the parker starts a new one when data, EOF or an error
// arrives. An idle tunnel then costs no goroutine stack (8 KiB), which is
// most of what a thousand idle tunnels cost.
//
// It is one epoll instance, with each socket registered for one event at
// a time (EPOLLONESHOT), itself waited on through Go's netpoller like any
// socket: one goroutine, parked in the runtime while nothing happens.
type parker struct {
	epfd int
	mu   sync.Mutex
	next uint64
	// parked maps a registration's ID (the epoll event's data) to its
	// pump. IDs are never reused: an event for a socket closed meanwhile
	// finds nothing here and is dropped.
	parked map[uint64]*pump
	// failed: waiting on the epoll instance failed; nothing parks.
	failed bool
}

var (
	parkerOnce sync.Once
	theParker  *parker
	parkerErr  error
)

// sharedParker is the process's parker, started on first use. An error
// (no epoll) is kept: directions then wait on their own goroutines.
func sharedParker() (*parker, error) {
	parkerOnce.Do(func() { theParker, parkerErr = newParker() })
	return theParker, parkerErr
}

func newParker() (*parker, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("hbone: idle socket parker: %w", os.NewSyscallError("epoll_create1", err))
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("hbone: idle socket parker: %w", os.NewSyscallError("fcntl", err))
	}
	// A non-blocking descriptor given to os.NewFile joins the netpoller.
	f := os.NewFile(uintptr(fd), "hbone-parker")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("hbone: idle socket parker: %w", err)
	}
	p := &parker{epfd: fd, parked: make(map[uint64]*pump)}
	go p.run(f, rc)
	return p, nil
}

// park registers pm's socket and reports whether pm is now the parker's:
// its goroutine must then return, and pm.run starts again on a goroutine
// of the parker's once the socket is readable, or when unpark is called.
// When registering fails (the socket was closed meanwhile), park reports
// false and the caller goes on reading, unless a concurrent unpark has
// already restarted pm (true: the caller must return).
func (p *parker) park(pm *pump) bool {
	p.mu.Lock()
	if p.failed {
		p.mu.Unlock()
		return false
	}
	p.next++
	id := p.next
	p.parked[id] = pm
	pm.parkedID = id
	p.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
	var cerr error
	err := pm.rc.Control(func(fd uintptr) {
		// Level-triggered check at registration: a socket already
		// readable fires at once.
		cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if cerr == syscall.ENOENT {
			cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil && cerr == nil {
		return true
	}
	return p.take(id) == nil
}

// take removes registration id and returns its pump, or nil if it has
// already fired or been taken.
func (p *parker) take(id uint64) *pump {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.takeLocked(id)
}

func (p *parker) takeLocked(id uint64) *pump {
	pm := p.parked[id]
	if pm != nil {
		delete(p.parked, id)
		pm.parkedID = 0
	}
	return pm
}

// wake restarts registration id's pump on a goroutine, unless it has
// already fired or been taken.
func (p *parker) wake(id uint64) {
	if pm := p.take(id); pm != nil {
		go pm.run()
	}
}

// unpark restarts pm at once if it is parked, so that it sees its socket
// closed; a pump that is not parked sees it by itself.
func (p *parker) unpark(pm *pump) {
	p.mu.Lock()
	id := pm.parkedID
	p.mu.Unlock()
	p.wake(id) // 0, not parked: no registration has it
}

// run waits for the epoll instance to have events, through the netpoller,
// and restarts each ready socket's pump on a goroutine.
func (p *parker) run(f *os.File, rc syscall.RawConn) {
	defer f.Close()
	events := make([]syscall.EpollEvent, 128)
	for {
		var n int
		var werr error
		err := rc.Read(func(uintptr) bool {
			n, werr = syscall.EpollWait(p.epfd, events, 0)
			return werr != syscall.EINTR && (werr != nil || n > 0)
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			// Not expected while the process lives. Parked sockets
			// would never be read again: restart every pump, which
			// then waits on its own goroutine.
			p.fail()
			return
		}
		for _, ev := range events[:n] {
			p.wake(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
	}
}

// fail stops parking for good and restarts every parked pump.
func (p *parker) fail() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed = true
	for id := range p.parked {
		go p.takeLocked(id).run()
	}
}
