//go:build !linux

package gatewaytest

// Blackhole is a loopback address where TCP connection attempts hang. It
// needs Linux (a socket whose accept queue can be filled); elsewhere
// NewBlackhole panics.
type Blackhole struct {
	Addr string
	URL  string
}

// NewBlackhole panics: the fault needs Linux.
func NewBlackhole() *Blackhole { panic("gatewaytest: Blackhole needs Linux") }

// Close does nothing.
func (b *Blackhole) Close() {}
