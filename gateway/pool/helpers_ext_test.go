package pool_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

// The helpers of the tests of the run-time set and of DNS discovery.

var quietLogger = slog.New(slog.DiscardHandler)

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// newTestPool returns a pool over servers, logging nowhere.
func newTestPool(t testing.TB, servers ...*gatewaytest.Server) *pool.Pool {
	t.Helper()
	targets := make([]*url.URL, len(servers))
	for i, s := range servers {
		targets[i] = mustURL(t, s.URL)
	}
	p, err := pool.New(targets...)
	require.NoError(t, err)
	p.Logger = quietLogger
	return p
}

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
	_ pool.Watcher    = (*recordingHealth)(nil)
	_ pool.Warmer     = (*recordingHealth)(nil)
	_ pool.Forgetter  = (*recordingHealth)(nil)
	_ pool.HostStater = (*recordingHealth)(nil)
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

func (h *recordingHealth) HostState(host string) pool.State {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.warm[host] {
		return pool.StateWarming
	}
	return pool.StateServing
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
func withHealth(t testing.TB, p *pool.Pool) *recordingHealth {
	t.Helper()
	h := &recordingHealth{watched: map[string]bool{}, warm: map[string]bool{}}
	p.Health = h
	return h
}

// poolFront serves a ReverseProxy over p on loopback, with a fresh tuned
// transport.
func poolFront(t testing.TB, p *pool.Pool) *httptest.Server {
	t.Helper()
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{Transport: &gateway.Transport{Base: base}, ErrorHandler: gateway.NewErrorHandler(quietLogger)}
	require.NoError(t, p.Attach(proxy))
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	t.Cleanup(front.Client().CloseIdleConnections)
	return front
}

func get(t testing.TB, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	res, err := c.Get(u)
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	res.Body.Close()
	return res, string(body)
}

func closeAll(servers ...*gatewaytest.Server) {
	for _, s := range servers {
		s.Close()
	}
}
