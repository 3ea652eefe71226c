package retry

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestRouteBreakerOpenNotRetried: an open breaker's fast-fail, with the route
// breaker (breaker.New) inside retry, as its docs place it. Once it is
// open, its fast-fail (an open Failure without an upstream) reaches the
// client on the first attempt: no backoff, no second attempt that would
// meet the same open breaker. The backoff is made 1 s (drawn at its
// maximum) so that a retry would show in the time taken.
func TestRouteBreakerOpenNotRetried(t *testing.T) {
	refused := gatewaytest.NewServer(gatewaytest.Refused)
	closeLater(t, refused)
	cb, err := breaker.New(breaker.Settings{ConsecutiveFailures: 1, Timeout: time.Minute, Logger: discard})
	require.NoError(t, err)
	counted := &countingRT{}
	proxy := cb.Wrap(newProxyVia(t, ordered(t, refused), func(next http.RoundTripper) http.RoundTripper {
		counted.next = next
		return counted
	}))
	var rec retries
	rt := mustNew(t, Options{OnRetry: rec.hook, BaseDelay: time.Second, MaxDelay: time.Second})
	rt.backoff.int64n = func(n int64) int64 { return n - 1 }
	o := &outer{next: rt.Wrap(proxy)}

	// Open it: one refused request, straight to the breaker, trips it.
	w := httptest.NewRecorder()
	proxy.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://front.test/", nil))
	require.Equal(t, http.StatusBadGateway, w.Code)
	require.Equal(t, int64(1), counted.n.Load())

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		start := time.Now()
		w = serveInProcess(o, httptest.NewRequest(method, "http://front.test/", strings.NewReader("x")))
		took := time.Since(start)
		assert.Equal(t, http.StatusServiceUnavailable, w.Code, method)
		assert.NotEmpty(t, w.Header().Get("Retry-After"), method)
		f := o.requireFailure(t, gateway.ClassOpen, 1)
		assert.Empty(t, f.Upstream, "the route breaker names no upstream")
		assert.Less(t, took, 500*time.Millisecond, "%s: a fast-fail waited for a retry", method)
	}
	assert.Empty(t, rec.get(), "no open of the route breaker was retried")
	assert.Equal(t, int64(1), counted.n.Load(), "the open breaker kept every later request from the transport")
}

// TestHostBreakerOpenRetried: the open of a per-host breaker (breaker.Hosts,
// in the transport) names its host, and is retried: the balancer picks
// another host, and the request succeeds.
func TestHostBreakerOpenRetried(t *testing.T) {
	refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(nil)
	closeLater(t, refused, healthy)
	hosts, err := breaker.PerHost(breaker.Settings{ConsecutiveFailures: 1, Timeout: time.Minute, Logger: discard})
	require.NoError(t, err)
	t.Cleanup(hosts.Close)
	var rec retries
	proxy := newProxyVia(t, ordered(t, refused, healthy), hosts.Transport)
	front := serve(t, mustNew(t, Options{OnRetry: rec.hook}).Wrap(proxy))

	// The first request trips the refusing host's breaker; the second
	// meets it open on its first pick (this balancer does not skip open
	// hosts) and is retried on the healthy one.
	for range 2 {
		res := do(t, front, newRequest(t, t.Context(), http.MethodPost, front.URL, strings.NewReader("x")))
		assert.Equal(t, http.StatusOK, res.status)
	}
	require.Equal(t, []gateway.Class{gateway.ClassRefused, gateway.ClassOpen}, rec.classes())
	assert.Equal(t, refused.Addr, rec.get()[1].failure.Upstream)
	assert.Equal(t, int64(2), healthy.Requests())
}
