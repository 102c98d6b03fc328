//go:build !linux

package hbone

import "errors"

// parker is Linux-only (epoll): elsewhere every relay direction waits on
// its own goroutine.
type parker struct{}

func sharedParker() (*parker, error) {
	return nil, errors.New("hbone: parking idle sockets needs Linux")
}

func (*parker) park(*pump) bool { return false }
func (*parker) unpark(*pump)    {}
