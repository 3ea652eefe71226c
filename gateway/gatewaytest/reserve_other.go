//go:build !linux

package gatewaytest

import (
	"net"
	"strconv"
)

// reservation approximates a refused port where bound-but-not-listening
// sockets are not available: the port is free, so another socket could
// take it.
type reservation struct{ port int }

func reserve(port int) (*reservation, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return &reservation{port: p}, nil
}

func (r *reservation) listen() (net.Listener, error) {
	return net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)))
}

func (r *reservation) close() {}
