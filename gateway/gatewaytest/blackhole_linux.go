package gatewaytest

import (
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Blackhole is a loopback address where TCP connection attempts hang: a
// socket listens with a full accept queue and never accepts, so the kernel
// drops further SYNs, exactly as an overloaded or firewalled host does.
// Dials to it end in a connect timeout. Linux only.
type Blackhole struct {
	// Addr is "127.0.0.1:PORT".
	Addr string
	// URL is "http://" + Addr.
	URL string

	res     *reservation
	fillers []net.Conn
}

// NewBlackhole creates a Blackhole. It panics if the accept queue cannot be
// filled (the kernel accepted more than it should).
func NewBlackhole() *Blackhole {
	r, err := reserve(0)
	if err != nil {
		panic("gatewaytest: " + err.Error())
	}
	if err := syscall.Listen(r.fd, 0); err != nil {
		r.close()
		panic("gatewaytest: " + os.NewSyscallError("listen", err).Error())
	}
	b := &Blackhole{res: r, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))}
	b.URL = "http://" + b.Addr
	// Fill the accept queue until a dial hangs.
	for i := 0; i < 64; i++ {
		c, err := net.DialTimeout("tcp", b.Addr, 100*time.Millisecond)
		if err != nil {
			return b // queue full: the next SYN is dropped
		}
		b.fillers = append(b.fillers, c)
	}
	b.Close()
	panic("gatewaytest: could not fill the accept queue")
}

// Close releases the port and the queued connections.
func (b *Blackhole) Close() {
	for _, c := range b.fillers {
		_ = c.Close()
	}
	b.fillers = nil
	b.res.close()
}
