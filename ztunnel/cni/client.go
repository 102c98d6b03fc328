package cni

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// DefaultSocket is where ztunnel listens for pod events.
const DefaultSocket = "/var/run/regomesh/ztunnel.sock"

// Client talks to ztunnel's socket; one request per connection.
type Client struct {
	// Socket is ztunnel's unix socket; DefaultSocket when empty.
	Socket string
	// Timeout bounds each request; 10s when zero.
	Timeout time.Duration
}

// Add asks ztunnel to enrol the pod.
func (c *Client) Add(ctx context.Context, p Pod) error {
	_, err := c.do(ctx, Request{Op: OpAdd, Pod: &p})
	return err
}

// Delete asks ztunnel to release the pod.
func (c *Client) Delete(ctx context.Context, uid string) error {
	_, err := c.do(ctx, Request{Op: OpDelete, UID: uid})
	return err
}

// Snapshot lists the pods ztunnel has enrolled.
func (c *Client) Snapshot(ctx context.Context) ([]Pod, error) {
	r, err := c.do(ctx, Request{Op: OpSnapshot})
	return r.Pods, err
}

func (c *Client) do(ctx context.Context, req Request) (Reply, error) {
	socket, timeout := c.Socket, c.Timeout
	if socket == "" {
		socket = DefaultSocket
	}
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Reply{}, fmt.Errorf("cni: ztunnel at %s: %w (is ztunnel running on this node?)", socket, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Reply{}, fmt.Errorf("cni: send %s: %w", req.Op, err)
	}
	var reply Reply
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	if !sc.Scan() {
		return Reply{}, fmt.Errorf("cni: no reply to %s: %w", req.Op, errors.Join(sc.Err(), errors.New("connection closed")))
	}
	if err := json.Unmarshal(sc.Bytes(), &reply); err != nil {
		return Reply{}, fmt.Errorf("cni: reply to %s: %w", req.Op, err)
	}
	if !reply.OK {
		return reply, fmt.Errorf("cni: ztunnel refused %s: %s", req.Op, reply.Error)
	}
	return reply, nil
}
