package waypoint

import (
	"net"
	"sync"
)

// connListener is a net.Listener whose connections are tunnels handed to
// it (push): the one net/http server of the waypoint serves every
// HTTP/1.1 tunnel through it, so its Shutdown drains them all.
type connListener struct {
	conns  chan net.Conn
	mu     sync.Mutex
	closed chan struct{}
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to the server; it fails once the listener is closed.
func (l *connListener) push(c net.Conn) error {
	select {
	case l.conns <- c:
		return nil
	case <-l.closed:
		return net.ErrClosed
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}

func (l *connListener) Addr() net.Addr { return tunnelAddr{} }

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "hbone" }
func (tunnelAddr) String() string  { return "hbone" }
