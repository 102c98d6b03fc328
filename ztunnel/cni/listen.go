package cni

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Listen opens ztunnel's socket at path, readable and writable by its
// owner only (0600): whoever can write to it enrols and releases pods. The
// socket is bound under a temporary name and renamed into place once its
// mode is set, so no other user ever finds it open. A socket left by an
// earlier run is replaced.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("cni: socket directory: %w", err)
	}
	tmp := path + ".new"
	os.Remove(tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("cni: listen %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // the bound name moves: socketListener removes the final one
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("cni: socket mode: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("cni: socket %s: %w", path, err)
	}
	return &socketListener{UnixListener: l, path: path}, nil
}

// socketListener removes its socket file when it closes.
type socketListener struct {
	*net.UnixListener
	path string
}

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// ErrPeerNotRoot is the refusal of a client that is neither root nor
// ztunnel's own user.
var ErrPeerNotRoot = errors.New("cni: only root (uid 0) or ztunnel's own user may enrol or release pods")

// checkPeer admits root and ztunnel's own user only: the container runtime
// runs the CNI plugin as root, and a process of ztunnel's user could
// control ztunnel anyway (ptrace, signals); nobody else has a reason to
// speak on this socket. The socket's mode already keeps others out; this
// holds if the mode is ever loosened or the socket handed to another user.
func checkPeer(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("cni: a %T is not a unix socket: no peer credentials", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("cni: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("cni: peer credentials: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("cni: peer credentials: %w", cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: peer pid %d runs as uid %d", ErrPeerNotRoot, cred.Pid, cred.Uid)
	}
	return nil
}
