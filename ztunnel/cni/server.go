package cni

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/regomesh/regomesh/internal/accept"
)

// Handler is ztunnel's side: it enrols and releases pods.
type Handler interface {
	// AddPod starts capturing the pod's traffic; adding a pod already
	// enrolled refreshes it.
	AddPod(ctx context.Context, p Pod) error
	// RemovePod stops capturing and releases the pod's identity; removing
	// an unknown pod is not an error (CNI DEL must be idempotent).
	RemovePod(ctx context.Context, uid string) error
	// Pods lists the enrolled pods.
	Pods() []Pod
}

// Serve answers requests on l (from Listen) until ctx is done or l fails.
// Only root may speak on it (checkPeer). Each
// connection may carry many requests; each is answered before the next is
// read.
func Serve(ctx context.Context, l net.Listener, h Handler, log *slog.Logger) error {
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { l.Close(); close(closed) })
	defer stop()
	var backoff accept.Backoff
	for {
		c, err := l.Accept()
		if err != nil {
			if backoff.Retry(ctx, err) {
				log.Warn("accept failed, retrying", "error", err, "after", backoff.Delay())
				continue
			}
			if ctx.Err() != nil {
				<-closed // l is closed (its socket file removed) when Serve returns
				return nil
			}
			return fmt.Errorf("cni: accept: %w", err)
		}
		backoff.Reset()
		go serveConn(ctx, c, h, log)
	}
}

func serveConn(ctx context.Context, c net.Conn, h Handler, log *slog.Logger) {
	defer c.Close()
	if err := checkPeer(c); err != nil {
		log.Warn("refused a client of the CNI socket", "error", err)
		json.NewEncoder(c).Encode(failed(err))
		return
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		var req Request
		reply := Reply{OK: true}
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			reply = failed(fmt.Errorf("cni: bad request: %w", err))
		} else if err := handle(ctx, h, req, &reply); err != nil {
			reply = failed(err)
			log.Warn("pod request failed", "op", req.Op, "error", err)
		}
		if err := enc.Encode(reply); err != nil {
			return
		}
	}
}

func handle(ctx context.Context, h Handler, req Request, reply *Reply) error {
	switch req.Op {
	case OpAdd:
		if req.Pod == nil {
			return errors.New("cni: add without a pod")
		}
		if err := req.Pod.Validate(); err != nil {
			return err
		}
		return h.AddPod(ctx, *req.Pod)
	case OpDelete:
		if req.UID == "" {
			return errors.New("cni: delete without a pod uid")
		}
		return h.RemovePod(ctx, req.UID)
	case OpSnapshot:
		reply.Pods = h.Pods()
		if reply.Pods == nil {
			reply.Pods = []Pod{}
		}
		return nil
	}
	return fmt.Errorf("cni: unknown op %q (add, delete, snapshot)", req.Op)
}

func failed(err error) Reply { return Reply{Error: err.Error()} }
