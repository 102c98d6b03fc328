package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/regomesh/regomesh/hbone"
	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/localmesh/netbed"
)

// Ports of the plain pair, beside the haproxy pair's.
const (
	plainLocalPort = 19001
	plainPeerPort  = 8444
)

// plainPair is the floor under any two proxies: the same two hops as the
// haproxy pair and the ztunnels (client pod -> proxy -> proxy in the
// server pod -> server), relayed by the copy loop ztunnel uses
// (hbone.Relay), with no TLS, no HTTP/2 and no policy. What regomesh adds
// above it is the price of the tunnel itself; what it costs over direct
// is the price of two user-space hops on this machine.
type plainPair struct {
	listeners []net.Listener
	wg        sync.WaitGroup
	ctx       context.Context
	cancel    context.CancelFunc
}

func startPlainPair(b *bed) (*plainPair, error) {
	p := &plainPair{}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	client, server := b.pod("plain-client"), b.pod("plain-server")
	peer := net.JoinHostPort(server.IP.String(), fmt.Sprint(plainPeerPort))
	hops := []struct {
		pod          *netbed.Pod
		listen, next string
	}{
		{server, peer, fmt.Sprintf("127.0.0.1:%d", appPort)},
		{client, p.Addr(), peer},
	}
	for _, h := range hops {
		l, err := localmesh.Listen(h.pod, h.listen)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("bench: plain pair: listen on %s in %s: %w", h.listen, h.pod.Name, err)
		}
		p.listeners = append(p.listeners, l)
		p.wg.Add(1)
		go p.serve(l, h.pod, h.next)
	}
	return p, nil
}

// Addr is where a client in the plain client pod connects.
func (p *plainPair) Addr() string { return fmt.Sprintf("127.0.0.1:%d", plainLocalPort) }

func (p *plainPair) serve(l net.Listener, pod *netbed.Pod, next string) {
	defer p.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			up, err := localmesh.Dial(pod, next, 5*time.Second)
			if err != nil {
				c.Close()
				return
			}
			hbone.Relay(p.ctx, c, up)
		}()
	}
}

// Close stops both proxies and every connection they carry.
func (p *plainPair) Close() error {
	p.cancel()
	var errs []error
	for _, l := range p.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	p.wg.Wait()
	return errors.Join(errs...)
}
