package pool

import (
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// The recording Health of the tests of the run-time set and of DNS
// discovery.

// recordingHealth is a Health that allows every host and records what a
// pool tells it: the hosts it watches (known until forgotten) and those
// it warms (warming until forgotten). breaker.Hosts does the same for
// real; the stack's tests run it (package proxykit).
type recordingHealth struct {
	mu      sync.Mutex
	watched map[string]bool
	warm    map[string]bool
}

var (
	_ Watcher    = (*recordingHealth)(nil)
	_ Warmer     = (*recordingHealth)(nil)
	_ Forgetter  = (*recordingHealth)(nil)
	_ HostStater = (*recordingHealth)(nil)
)

func (h *recordingHealth) Allows(string) bool           { return true }
func (h *recordingHealth) OpenFor(string) time.Duration { return 0 }

func (h *recordingHealth) Watch(u *url.URL) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.watched[gateway.UpstreamName(u)] = true
}

func (h *recordingHealth) Warm(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.warm[host] = true
}

func (h *recordingHealth) Forget(host string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.watched, host)
	delete(h.warm, host)
	return true
}

func (h *recordingHealth) HostState(host string) State {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.warm[host] {
		return StateWarming
	}
	return StateServing
}

// known returns the hosts watched and not forgotten.
func (h *recordingHealth) known() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var hs []string
	for k := range h.watched {
		hs = append(hs, k)
	}
	return hs
}

// withHealth makes a recordingHealth the pool's Health.
func withHealth(t testing.TB, p *Pool) *recordingHealth {
	t.Helper()
	h := &recordingHealth{watched: map[string]bool{}, warm: map[string]bool{}}
	p.Health = h
	return h
}
