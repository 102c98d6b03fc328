package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/regomesh/regomesh/localmesh"
	"github.com/regomesh/regomesh/localmesh/netbed"
)

// The first byte a client sends picks what the server does with the
// connection.
const (
	// modeEcho: echo every following byte back.
	modeEcho = 'e'
	// modeSink: read and discard until EOF, reporting a sinkResult.
	modeSink = 's'
)

// sinkResult is what the server saw of one modeSink connection. The
// clock is the process's, shared with the client.
type sinkResult struct {
	bytes int64
	last  time.Time
}

// server is the benchmark's application server in one pod.
type server struct {
	l     net.Listener
	sinks chan sinkResult
	wg    sync.WaitGroup
}

func listenServer(p *netbed.Pod) (*server, error) {
	l, err := localmesh.Listen(p, fmt.Sprintf(":%d", appPort))
	if err != nil {
		return nil, fmt.Errorf("bench: listen in %s: %w", p.Name, err)
	}
	s := &server{l: l, sinks: make(chan sinkResult, 16)}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *server) handle(c net.Conn) {
	defer c.Close()
	mode := make([]byte, 1)
	if _, err := io.ReadFull(c, mode); err != nil {
		return
	}
	switch mode[0] {
	case modeEcho:
		echo(c)
	case modeSink:
		s.sinks <- sink(c)
	}
}

// echo copies c back to itself with a small buffer, so that a held-open
// connection costs the application little.
func echo(c net.Conn) {
	buf := make([]byte, 4<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func sink(c net.Conn) sinkResult {
	buf := make([]byte, 256<<10)
	var r sinkResult
	for {
		n, err := c.Read(buf)
		if n > 0 {
			r.bytes += int64(n)
			r.last = time.Now()
		}
		if err != nil {
			return r
		}
	}
}

// Close stops accepting; open connections end with their clients.
func (s *server) Close() error {
	err := s.l.Close()
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
