package gateway_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// net/http's Transport resends a request that failed on a
// reused keep-alive connection when it deems it replayable, behind any
// retry policy. These tests drive an upstream that reads each request and
// closes the connection (gatewaytest.CloseAfterRequest) after a warm-up
// left keep-alive connections idle in the proxy's pool.

var quietStdLogger = log.New(io.Discard, "", 0)

// staleRig is a proxy in front of one upstream, with a hook that reports
// the proxy's upstream connections going idle.
type staleRig struct {
	up    *gatewaytest.Server
	capt  *capture
	front *httptest.Server
	idle  chan struct{} // one value per connection put in the idle pool
}

// newStaleRig proxies to up through transport(base), base a NewHTTPTransport
// (with tlsCfg, if any). wrap, if set, wraps the ReverseProxy.
func newStaleRig(t *testing.T, up *gatewaytest.Server, tlsCfg *tls.Config,
	transport func(*http.Transport) http.RoundTripper, wrap func(http.Handler) http.Handler) *staleRig {
	t.Helper()
	t.Cleanup(up.Close)
	base := gateway.NewHTTPTransport()
	base.TLSClientConfig = tlsCfg
	t.Cleanup(base.CloseIdleConnections)
	u := mustURL(t, up.URL)
	rig := &staleRig{up: up, idle: make(chan struct{}, 64)}
	var h http.Handler = &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    transport(base),
		ErrorHandler: gateway.NewErrorHandler(quietLogger),
		ErrorLog:     quietStdLogger,
	}
	if wrap != nil {
		h = wrap(h)
	}
	traced := h
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trace := &httptrace.ClientTrace{PutIdleConn: func(err error) {
			if err == nil {
				rig.idle <- struct{}{}
			}
		}}
		traced.ServeHTTP(w, r.WithContext(httptrace.WithClientTrace(r.Context(), trace)))
	})
	rig.capt = &capture{next: h}
	rig.front = httptest.NewServer(rig.capt)
	t.Cleanup(rig.front.Close)
	return rig
}

// warm opens n keep-alive connections to the upstream (n requests held
// until all arrived) and waits until all are idle in the proxy's pool.
func (rig *staleRig) warm(t *testing.T, n int) {
	t.Helper()
	var mu sync.Mutex
	arrived := 0
	all := make(chan struct{})
	rig.up.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if arrived++; arrived == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-time.After(5 * time.Second):
		}
		_, _ = io.WriteString(w, "warm\n")
	})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := rig.front.Client().Get(rig.front.URL + "/warm")
			if assert.NoError(t, err) {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				assert.Equal(t, http.StatusOK, res.StatusCode)
			}
		}()
	}
	wg.Wait()
	for i := range n {
		select {
		case <-rig.idle:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d upstream connections went idle", i, n)
		}
	}
	require.EqualValues(t, n, rig.up.Accepts(), "one connection per warm-up request")
	require.EqualValues(t, n, rig.up.Requests())
}

// send sends one request through the proxy on a new client connection.
func (rig *staleRig) send(t *testing.T, method string, hdr http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, rig.front.URL+"/apply", nil)
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Close = true
	res, err := rig.front.Client().Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

func instrumented(base *http.Transport) http.RoundTripper { return &gateway.Transport{Base: base} }

var replayable = []struct {
	method string
	hdr    http.Header
}{
	{http.MethodGet, nil},
	{http.MethodHead, nil},
	{http.MethodOptions, nil},
	{http.MethodPost, http.Header{"Idempotency-Key": {"k1"}}},
	{http.MethodPatch, http.Header{"X-Idempotency-Key": {"k2"}}},
}

// TestStaleConnectionSentOnce: every request net/http would replay reaches
// a read-then-close upstream exactly once through gateway.Transport (a
// body-less POST with an Idempotency-Key is applied once), and the Failure
// is stale_connection, sent, not a failure of the host.
func TestStaleConnectionSentOnce(t *testing.T) {
	for _, c := range replayable {
		t.Run(c.method, func(t *testing.T) {
			rig := newStaleRig(t, gatewaytest.NewHealthy(nil), nil, instrumented, nil)
			rig.warm(t, 1)
			require.NoError(t, rig.up.SetFault(gatewaytest.CloseAfterRequest))
			res := rig.send(t, c.method, c.hdr)

			assert.EqualValues(t, 2, rig.up.Requests(), "warm-up + exactly one")
			assert.Equal(t, http.StatusBadGateway, res.StatusCode)
			f, _ := rig.capt.get()
			require.NotNil(t, f)
			assert.Equal(t, gateway.ClassStaleConn, f.Class, "%v", f)
			assert.True(t, f.Sent, "the request went out on the stale connection")
			assert.False(t, f.Class.CountsAsFailure())
			assert.Equal(t, rig.up.Addr, f.Upstream)
		})
	}
}

// TestStaleConnectionBareNetHTTPResends is the control: without
// gateway.Transport, net/http itself sends each of these requests again on
// a new connection, so the upstream applies it twice. If this fails, Go
// changed its resend rules: revisit Transport's resend handling.
func TestStaleConnectionBareNetHTTPResends(t *testing.T) {
	for _, c := range replayable {
		t.Run(c.method, func(t *testing.T) {
			bare := func(base *http.Transport) http.RoundTripper { return base }
			rig := newStaleRig(t, gatewaytest.NewHealthy(nil), nil, bare, nil)
			rig.warm(t, 1)
			require.NoError(t, rig.up.SetFault(gatewaytest.CloseAfterRequest))
			rig.send(t, c.method, c.hdr)
			assert.EqualValues(t, 3, rig.up.Requests(), "warm-up + the request + net/http's resend")
		})
	}
}

// TestStaleConnectionManyIdle: with several idle connections, net/http
// tries the request on each (a GET went out 9 times for one client
// request); through gateway.Transport it goes out once.
func TestStaleConnectionManyIdle(t *testing.T) {
	const idle = 4
	rig := newStaleRig(t, gatewaytest.NewHealthy(nil), nil, instrumented, nil)
	rig.warm(t, idle)
	require.NoError(t, rig.up.SetFault(gatewaytest.CloseAfterRequest))
	rig.send(t, http.MethodGet, nil)
	assert.EqualValues(t, idle+1, rig.up.Requests(), "warm-up + exactly one")
	f, _ := rig.capt.get()
	require.NotNil(t, f)
	assert.Equal(t, gateway.ClassStaleConn, f.Class)
}

// TestStaleConnectionOverTLS: the same over HTTP/1.1 on TLS, where the
// connection net/http hands over is a *tls.Conn.
func TestStaleConnectionOverTLS(t *testing.T) {
	ca, err := gatewaytest.NewCA()
	require.NoError(t, err)
	up := mustTLS(t, ca, gatewaytest.Healthy)
	rig := newStaleRig(t, up, ca.ClientConfig(), instrumented, nil)
	rig.warm(t, 2)
	require.NoError(t, rig.up.SetFault(gatewaytest.CloseAfterRequest))
	rig.send(t, http.MethodPost, http.Header{"Idempotency-Key": {"k1"}})
	assert.EqualValues(t, 3, rig.up.Requests(), "warm-up + exactly one")
	f, _ := rig.capt.get()
	require.NotNil(t, f)
	assert.Equal(t, gateway.ClassStaleConn, f.Class, "%v", f)
	assert.True(t, f.Sent)
}

// attempts is a minimal retry layer: up to n attempts, a new one for any
// failure, all sharing one Trail, as the retry package runs them.
type attempts struct {
	n     int
	next  http.Handler
	mu    sync.Mutex
	trail int // the trail's length after the request
}

type discardFailures struct{ last bool }

func (d *discardFailures) Decide(_ int, _ http.Header, f *gateway.Failure) gateway.Decision {
	if f != nil && !d.last {
		return gateway.Discard
	}
	return gateway.Pass
}

func (a *attempts) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, trail := gateway.WithTrail(r.Context())
	r = r.WithContext(ctx)
	var ic gateway.Interceptor
	for i := 1; i <= a.n; i++ {
		ic.Reset(w, &discardFailures{last: i == a.n})
		a.next.ServeHTTP(&ic, r)
		if !ic.Discarded() {
			break
		}
		ic.Rollback()
	}
	a.mu.Lock()
	a.trail = trail.Len()
	a.mu.Unlock()
}

// TestStaleConnectionOncePerAttempt: behind a retry layer making three
// attempts, a GET reaches a read-then-close upstream three times, once per
// attempt, and the Trail (which Transport keeps without a pool) counts
// three.
func TestStaleConnectionOncePerAttempt(t *testing.T) {
	a := &attempts{n: 3}
	rig := newStaleRig(t, gatewaytest.NewHealthy(nil), nil, instrumented, func(h http.Handler) http.Handler {
		a.next = h
		return a
	})
	rig.warm(t, 2)
	require.NoError(t, rig.up.SetFault(gatewaytest.CloseAfterRequest))
	res := rig.send(t, http.MethodGet, nil)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	assert.EqualValues(t, 2+3, rig.up.Requests(), "warm-up + one per attempt")
	a.mu.Lock()
	defer a.mu.Unlock()
	assert.Equal(t, 3, a.trail)
}

// TestResendsCountedWithForeignBase: a Base that is not an *http.Transport
// cannot have its resends stopped; each is counted and recorded in the
// Trail instead, so the attempt count in logs includes it.
func TestResendsCountedWithForeignBase(t *testing.T) {
	var gt *gateway.Transport
	foreign := func(base *http.Transport) http.RoundTripper {
		gt = &gateway.Transport{Base: roundTripFunc(base.RoundTrip)}
		return gt
	}
	a := &attempts{n: 1}
	rig := newStaleRig(t, gatewaytest.NewHealthy(nil), nil, foreign, func(h http.Handler) http.Handler {
		a.next = h
		return a
	})
	rig.warm(t, 1)
	require.NoError(t, rig.up.SetFault(gatewaytest.CloseAfterRequest))
	rig.send(t, http.MethodGet, nil)
	assert.EqualValues(t, 3, rig.up.Requests(), "net/http resent it: not preventable here")
	assert.EqualValues(t, 1, gt.Resends())
	a.mu.Lock()
	defer a.mu.Unlock()
	assert.Equal(t, 2, a.trail, "the resend is on the trail")
}

// TestHTTP2KeepAliveUnaffected: over HTTP/2, sequential requests share one
// connection through gateway.Transport and nothing counts as a resend.
func TestHTTP2KeepAliveUnaffected(t *testing.T) {
	ca, err := gatewaytest.NewCA()
	require.NoError(t, err)
	cfg, err := ca.ServerConfig("127.0.0.1")
	require.NoError(t, err)
	up := gatewaytest.NewTLSServer(gatewaytest.Healthy, cfg)
	defer up.Close()
	base := gateway.NewHTTPTransport()
	base.TLSClientConfig = ca.ClientConfig()
	defer base.CloseIdleConnections()
	gt := &gateway.Transport{Base: base}
	c := &http.Client{Transport: gt}
	for range 3 {
		res, err := c.Get(up.URL)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		assert.Equal(t, 2, res.ProtoMajor)
	}
	assert.EqualValues(t, 1, up.Accepts())
	assert.Zero(t, gt.Resends())
}

// TestTransportRecordsUpstreamOnTrail: without a pool,
// Transport records where each request went, so an enclosing layer can name
// the upstream of a failure it classifies from the status alone; after a
// balancer's pick for the same upstream it adds nothing.
func TestTransportRecordsUpstreamOnTrail(t *testing.T) {
	gt := &gateway.Transport{Base: gatewaytest.InMemory{Body: "ok"}}
	ctx, trail := gateway.WithTrail(context.Background())
	roundTrip := func(url string) {
		req := httptest.NewRequest(http.MethodGet, url, nil).WithContext(ctx)
		res, err := gt.RoundTrip(req)
		require.NoError(t, err)
		res.Body.Close()
	}
	roundTrip("http://svc/a")
	assert.Equal(t, 1, trail.Len())
	assert.Equal(t, "svc:80", trail.Last(), "the canonical name")
	roundTrip("http://svc/a")
	assert.Equal(t, 2, trail.Len(), "a second attempt to the same host is a second entry")
	trail.Add("other:8080") // a balancer's pick
	roundTrip("http://other:8080/a")
	assert.Equal(t, 3, trail.Len(), "no double entry after the balancer's pick")
	assert.Equal(t, "other:8080", trail.Last())
}

// TestWithTrailSharesOuterTrail: an inner layer's WithTrail returns the
// Trail an outer layer put in the context, so both see one record.
func TestWithTrailSharesOuterTrail(t *testing.T) {
	outerCtx, outer := gateway.WithTrail(context.Background())
	ctx, inner := gateway.WithTrail(outerCtx)
	inner.Add("a:1")
	assert.Same(t, outer, inner)
	assert.Equal(t, outerCtx, ctx, "no new context for the same request")
	assert.Equal(t, "a:1", outer.Last())
}

// TestStaleConnectionIdleHandoverRace: once the resend is canceled,
// net/http may still hand the request an idle connection (its wait for a
// connection selects between the two at random) and start writing before
// it notices the cancellation. Transport makes that connection refuse the
// write. Repeated, so that both outcomes of the race occur (the handover
// wins in about half the rounds on loopback); the upstream must see
// exactly one request each time.
func TestStaleConnectionIdleHandoverRace(t *testing.T) {
	const rounds, idle = 30, 3
	var closing atomic.Bool
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if closing.Load() {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				_ = c.Close() // read, then closed without an answer
			}
			return
		}
		time.Sleep(2 * time.Millisecond) // let the warm-up requests overlap
	}))
	defer up.Close()
	for round := range rounds {
		closing.Store(false)
		base := gateway.NewHTTPTransport()
		gt := &gateway.Transport{Base: base}
		var wg sync.WaitGroup
		for range idle {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := gt.RoundTrip(httptest.NewRequest(http.MethodGet, up.URL, nil))
				if assert.NoError(t, err) {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}()
		}
		wg.Wait()
		before := up.Requests()
		closing.Store(true)
		_, err := gt.RoundTrip(httptest.NewRequest(http.MethodGet, up.URL, nil))
		var f *gateway.Failure
		require.ErrorAs(t, err, &f)
		assert.Equal(t, before+1, up.Requests(), "round %d: sent once", round)
		if f.Class != gateway.ClassStaleConn {
			// The warm-up connections were not all idle yet: a fresh one
			// (never resent by net/http) failed instead.
			assert.Equal(t, gateway.ClassReset, f.Class, "round %d: %v", round, f)
		}
		base.CloseIdleConnections()
	}
}
