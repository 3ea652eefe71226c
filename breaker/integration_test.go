package breaker_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
)

// TestRetryPoolFailover: the recommended stack — retry outside a
// ReverseProxy whose pool skips tried hosts and hosts with an open breaker —
// over [healthy, refused, healthy]. Every GET succeeds; once the refused
// host's breaker trips, that host gets no request until its open period
// ends, and after it, probes bring it back.
//
// The pool is round robin with passive health off, so that the refused
// host is picked every third request and its breaker trips promptly
// (peak EWMA and resting would avoid it on their own: that is tested in
// package pool).
func TestRetryPoolFailover(t *testing.T) {
	a, r, c := gatewaytest.NewHealthy(nil), gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(nil)
	t.Cleanup(a.Close)
	t.Cleanup(r.Close)
	t.Cleanup(c.Close)
	const open = time.Second
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet, Timeout: open,
		Health: breaker.HostHealth{RestAfter: -1}}) // the breakers alone
	require.NoError(t, err)
	t.Cleanup(hosts.Close)
	var targets []*url.URL
	for _, s := range []*gatewaytest.Server{a, r, c} {
		u, err := url.Parse(s.URL)
		require.NoError(t, err)
		targets = append(targets, u)
	}
	p, err := pool.New(targets...)
	require.NoError(t, err)
	p.Policy, p.Logger = pool.RoundRobin, quiet
	p.Health = hosts
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{
		Transport:    hosts.Transport(&gateway.Transport{Base: base}),
		ErrorHandler: gateway.NewErrorHandler(quiet),
	}
	require.NoError(t, p.Attach(proxy))
	rt, err := retry.New(retry.Options{Logger: quiet})
	require.NoError(t, err)
	front := httptest.NewServer(rt.Wrap(proxy))
	t.Cleanup(front.Close)
	cl := front.Client()
	t.Cleanup(cl.CloseIdleConnections)

	stateOf := func(host string) breaker.Status {
		for _, s := range hosts.States() {
			if s.Key == host {
				return s
			}
		}
		return breaker.Status{}
	}
	ok := func() {
		t.Helper()
		res := get(t, cl, front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode, "every GET must succeed")
	}

	// The refused host fails every third request; retry goes elsewhere.
	for i := 0; stateOf(r.Addr).State != breaker.StateOpen; i++ {
		require.Less(t, i, 100, "the refused host's breaker must trip")
		ok()
	}
	st := stateOf(r.Addr)

	require.Zero(t, r.Requests())
	require.Equal(t, "refused", st.LastClass)

	// The host comes back; a probe (a TCP connect, which disproves a
	// refusal) ends the open period long before it would end, and the
	// half-open requests close the breaker.
	require.NoError(t, r.SetFault(gatewaytest.Healthy))
	back := time.Now()
	require.Eventually(t, func() bool {
		ok()
		return stateOf(r.Addr).State == breaker.StateClosed
	}, open/2, 2*time.Millisecond, "probed back well within the open period")
	t.Logf("closed %v after the host's return (open period %v)", time.Since(back), open)
	assert.Positive(t, r.Requests(), "the recovered host serves again")
	for range 9 {
		ok()
	}
	// 3 half-open successes, then a share that ramps up (slow start).
	assert.GreaterOrEqual(t, r.Requests(), int64(3), "back in rotation")
}
