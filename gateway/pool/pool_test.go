package pool

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

var quietLogger = slog.New(slog.DiscardHandler)

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// newTestPool returns a pool over servers, logging nowhere.
func newTestPool(t testing.TB, servers ...*gatewaytest.Server) *Pool {
	t.Helper()
	targets := make([]*url.URL, len(servers))
	for i, s := range servers {
		targets[i] = mustURL(t, s.URL)
	}
	p, err := New(targets...)
	require.NoError(t, err)
	p.Logger = quietLogger
	return p
}

// poolFront serves a ReverseProxy over p on loopback, attached as the
// package documentation shows, with a fresh tuned transport (under its
// Health's per-host transport, when it has one).
func poolFront(t testing.TB, p *Pool) *httptest.Server {
	t.Helper()
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	var inner http.RoundTripper = &gateway.Transport{Base: base}
	if h, ok := p.Health.(interface {
		Transport(http.RoundTripper) http.RoundTripper
	}); ok {
		inner = h.Transport(inner) // a host-health model's per-host transport
	}
	proxy := &httputil.ReverseProxy{Transport: inner, ErrorHandler: gateway.NewErrorHandler(quietLogger)}
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

func TestNewPoolValidates(t *testing.T) {
	ok := mustURL(t, "http://127.0.0.1:1")
	for name, targets := range map[string][]*url.URL{
		"none":       nil,
		"nil":        {nil},
		"scheme":     {mustURL(t, "ftp://127.0.0.1:1")},
		"relative":   {mustURL(t, "/just/a/path")},
		"no host":    {mustURL(t, "http:///path")},
		"opaque":     {mustURL(t, "http:opaque")},
		"user info":  {mustURL(t, "http://user:secret@127.0.0.1:1")},
		"fragment":   {mustURL(t, "http://127.0.0.1:1/#frag")},
		"empty port": {mustURL(t, "http://127.0.0.1:/")},
		"duplicate":  {ok, mustURL(t, "http://127.0.0.1:1/other")},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := New(targets...)
			assert.Error(t, err)
			assert.Nil(t, p)
			if err != nil {
				assert.NotContains(t, err.Error(), "secret", "errors must not reveal credentials")
			}
		})
	}
	p, err := New(ok, mustURL(t, "https://example.com/prefix?k=v"))
	require.NoError(t, err)
	assert.Len(t, p.Status(), 2)
}

// TestNewPoolOneNamePerHost: one server given twice under different
// spellings is an error naming both, not two hosts with two breakers and
// two limits that retries and hedges treat as different.
func TestNewPoolOneNamePerHost(t *testing.T) {
	for first, second := range map[string]string{
		"http://LOCALHOST:19001":     "http://localhost:19001",
		"http://127.0.0.1:19001":     "http://[::ffff:127.0.0.1]:19001",
		"http://localhost.:19001":    "http://localhost:19001/api",
		"http://localhost:019001":    "http://localhost:19001",
		"http://localhost":           "http://localhost:80",
		"https://[2001:DB8::1]:8443": "https://[2001:db8::1]:8443",
	} {
		others := mustURL(t, "http://127.0.0.1:1")
		p, err := New(mustURL(t, first), others, mustURL(t, second))
		assert.Nil(t, p)
		if assert.Error(t, err, "%s and %s", first, second) {
			assert.Contains(t, err.Error(), fmt.Sprintf("pool: New: target 2: %q is the same host", second))
			assert.Contains(t, err.Error(), fmt.Sprintf("as the target at index 0 (%q)", first))
		}
	}
	p, err := New(mustURL(t, "http://localhost:19001"), mustURL(t, "http://localhost:19002"))
	require.NoError(t, err, "different ports are different hosts")
	assert.Len(t, p.Status(), 2)
}

// TestPoolRewriteIsSetURL: the outbound request is routed exactly as
// ProxyRequest.SetURL routes it: path prefix joined, queries merged, Host
// header from the target, no X-Forwarded-For added.
func TestPoolRewriteIsSetURL(t *testing.T) {
	type seen struct{ uri, host, xff string }
	ch := make(chan seen, 1)
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ch <- seen{r.RequestURI, r.Host, r.Header.Get("X-Forwarded-For")}
	}))
	defer up.Close()
	u, err := url.Parse(up.URL + "/api?k=v")
	require.NoError(t, err)
	pool, err := New(u)
	require.NoError(t, err)
	front := poolFront(t, pool)
	res, _ := get(t, front.Client(), front.URL+"/v1/items?page=2")
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, seen{"/api/v1/items?k=v&page=2", up.Addr, ""}, <-ch)
}

// TestPoolRoundRobin: healthy hosts take turns, exactly.
func TestPoolRoundRobin(t *testing.T) {
	a, b, c := gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil)
	defer closeAll(a, b, c)
	pool := newTestPool(t, a, b, c)
	pool.Policy = RoundRobin
	front := poolFront(t, pool)
	var order []string
	for range 30 {
		res, _ := get(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode)
		order = append(order, res.Header.Get("X-Upstream"))
	}
	assert.Equal(t, []string{a.Addr, b.Addr, c.Addr}, order[:3])
	for _, s := range []*gatewaytest.Server{a, b, c} {
		assert.EqualValues(t, 10, s.Requests(), s.Addr)
	}
}

// rewrite runs pool.Rewrite on a request with context ctx (which may carry
// a Trail) and returns the outbound URL.
func rewrite(pool *Pool, ctx context.Context) *url.URL {
	in := httptest.NewRequest("GET", "http://front.test/x", nil).WithContext(ctx)
	pr := &httputil.ProxyRequest{In: in, Out: in.Clone(in.Context())}
	pool.Rewrite(pr)
	return pr.Out.URL
}

// TestPoolSkipsTriedAndUnhealthy: both policies skip hosts the request
// tried and hosts the Healthy predicate excludes; tried hosts are a last
// resort, unhealthy ones never.
func TestPoolSkipsTriedAndUnhealthy(t *testing.T) {
	hosts := []string{"127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"}
	targets := make([]*url.URL, len(hosts))
	for i, h := range hosts {
		targets[i] = mustURL(t, "http://"+h)
	}
	for _, policy := range []Policy{PeakEWMA, RoundRobin} {
		t.Run(policy.String(), func(t *testing.T) {
			pool, err := New(targets...)
			require.NoError(t, err)
			pool.Policy = policy
			var unhealthy sync.Map
			pool.Health = healthFuncs{allows: func(h string) bool { _, bad := unhealthy.Load(h); return !bad }}

			for range 50 {
				ctx, trail := gateway.WithTrail(context.Background())
				trail.Add(hosts[0])
				got := rewrite(pool, ctx).Host
				assert.NotEqual(t, hosts[0], got, "a tried host is skipped")
				assert.Equal(t, got, trail.Last(), "the pick is added to the trail")
			}
			unhealthy.Store(hosts[1], true)
			for range 50 {
				ctx, trail := gateway.WithTrail(context.Background())
				trail.Add(hosts[0])
				assert.Equal(t, hosts[2], rewrite(pool, ctx).Host, "only the untried healthy host is left")
			}
			ctx, all := gateway.WithTrail(context.Background())
			for _, h := range hosts {
				all.Add(h)
			}
			got := rewrite(pool, ctx).Host
			assert.Contains(t, []string{hosts[0], hosts[2]}, got, "every host tried: a tried healthy host is the last resort")

			for _, h := range hosts {
				unhealthy.Store(h, true)
			}
			out := rewrite(pool, context.Background())
			assert.Empty(t, out.Host, "no healthy host: the request is marked, not routed")
			assert.NotEqual(t, "http", out.Scheme)
		})
	}
}

// TestPoolNoUpstream: with every host unhealthy the client gets a fast
// no_upstream 503 with Retry-After, and no host is dialed.
func TestPoolNoUpstream(t *testing.T) {
	a, b := gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil)
	defer closeAll(a, b)
	pool := newTestPool(t, a, b)
	hf := &healthFuncs{allows: func(string) bool { return false }}
	pool.Health = hf
	front := poolFront(t, pool)

	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assertRetryAfterIn(t, res.Header.Get("Retry-After"), 1, 3, "default when no host says how long, spread")
	assert.Contains(t, body, gateway.ClassNoUpstream.Explanation())

	hf.openFor = func(h string) time.Duration {
		if h == b.Addr {
			return 6500 * time.Millisecond
		}
		return 0
	}
	res, _ = get(t, front.Client(), front.URL)
	assertRetryAfterIn(t, res.Header.Get("Retry-After"), 7, 14, "the shortest known wait, rounded up, spread")
	assert.Zero(t, a.Accepts()+b.Accepts(), "no upstream may be dialed")
}

// assertRetryAfterIn asserts a Retry-After of whole seconds in [lo, hi].
func assertRetryAfterIn(t *testing.T, v string, lo, hi int, msg string) {
	t.Helper()
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "Retry-After %q", v)
	assert.True(t, n >= lo && n <= hi, "%s: Retry-After %d not in [%d, %d]", msg, n, lo, hi)
}

// TestPoolNoUpstreamFailure: the pool's Transport answers a marked request
// with a classified Failure naming the last host tried.
func TestPoolNoUpstreamFailure(t *testing.T) {
	pool, err := New(mustURL(t, "http://127.0.0.1:1001"))
	require.NoError(t, err)
	pool.Health = healthFuncs{allows: func(string) bool { return false }}
	in := httptest.NewRequest("POST", "http://front.test/", strings.NewReader("body"))
	ctx, trail := gateway.WithTrail(in.Context())
	trail.Add("127.0.0.1:1001")
	in = in.WithContext(ctx)
	pr := &httputil.ProxyRequest{In: in, Out: in.Clone(in.Context())}
	pool.Rewrite(pr)
	_, err = pool.Transport(failingTransport{t}).RoundTrip(pr.Out)
	f := requireFailure(t, err)
	assert.Equal(t, gateway.ClassNoUpstream, f.Class)
	assert.Equal(t, http.StatusServiceUnavailable, f.StatusCode())
	assert.False(t, f.Sent)
	assert.Equal(t, "127.0.0.1:1001", f.Upstream)
	assert.Equal(t, time.Second, f.RetryAfter)
}

type failingTransport struct{ t testing.TB }

func (f failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	f.t.Error("the inner transport must not be called")
	return nil, io.EOF
}

// TestPoolIgnoresCanceledAndOpen: a client that went away and an open
// breaker below the pool count for nothing.
func TestPoolIgnoresCanceledAndOpen(t *testing.T) {
	hang := gatewaytest.NewServer(gatewaytest.Hang)
	defer hang.Close()
	pool := newTestPool(t, hang)
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	rt := pool.Transport(&gateway.Transport{Base: base})

	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("GET", hang.URL, nil).WithContext(ctx)
	req.RequestURI = ""
	go func() {
		for hang.Requests() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, err := rt.RoundTrip(req)
	assert.Equal(t, gateway.ClassCanceled, requireFailure(t, err).Class)

	open := pool.Transport(roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return nil, gateway.NewFailure(gateway.ClassOpen, r.URL.Host, nil)
	}))
	req = httptest.NewRequest("GET", hang.URL, nil)
	req.RequestURI = ""
	_, err = open.RoundTrip(req)
	assert.Equal(t, gateway.ClassOpen, requireFailure(t, err).Class)

	st := pool.Status()[0]
	assert.Equal(t, StateServing, st.State)
	assert.Zero(t, st.Failures)
	assert.Zero(t, st.InFlight)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A Pool is both the ReverseProxy's Rewrite, which picks a host, and a
// wrapper of its Transport, which watches each host's latency and failures.
func ExamplePool() {
	var servers []*gatewaytest.Server
	var targets []*url.URL
	for _, name := range []string{"blue", "green"} {
		s := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s served %s\n", name, r.URL.Path)
		}))
		defer s.Close()
		u, _ := url.Parse(s.URL + "/app")
		servers, targets = append(servers, s), append(targets, u)
	}

	pool, err := New(targets...)
	if err != nil {
		panic(err)
	}
	pool.Policy = RoundRobin
	// With package breaker: pool.Health = hosts
	// and pool.Transport(hosts.Transport(&gateway.Transport{})).
	transport := &gateway.Transport{}
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Rewrite:      pool.Rewrite,
		Transport:    pool.Transport(transport),
		ErrorHandler: gateway.NewErrorHandler(nil),
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	for range 3 {
		res, err := http.Get(front.URL + "/hello")
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		fmt.Print(string(body))
	}
	fmt.Println(len(servers), "upstreams,", pool.Status()[0].Requests+pool.Status()[1].Requests, "requests")
	// Output:
	// blue served /app/hello
	// green served /app/hello
	// blue served /app/hello
	// 2 upstreams, 3 requests
}

// BenchmarkPoolRewrite compares, in one run, ProxyRequest.SetURL to a fixed
// target with the pool's Rewrite over three targets (each policy, with a
// Healthy predicate and a Trail), and the pool's Transport wrapper with a
// bare RoundTripper.
//
//	go test -run '^$' -bench BenchmarkPool -benchmem ./gateway/
func BenchmarkPoolRewrite(b *testing.B) {
	targets := []*url.URL{mustURL(b, "http://10.0.0.1:8080"), mustURL(b, "http://10.0.0.2:8080"), mustURL(b, "http://10.0.0.3:8080")}
	in := httptest.NewRequest("GET", "http://front.test/path?q=1", nil)
	run := func(b *testing.B, rewrite func(*httputil.ProxyRequest)) {
		out := in.Clone(in.Context())
		pr := &httputil.ProxyRequest{In: in.Clone(in.Context()), Out: out}
		b.ReportAllocs()
		for b.Loop() {
			ctx, _ := gateway.WithTrail(context.Background()) // one allocation, in every variant
			*pr.In = *in.WithContext(ctx)
			rewrite(pr)
		}
	}
	b.Run("bare_SetURL", func(b *testing.B) {
		run(b, func(pr *httputil.ProxyRequest) { pr.SetURL(targets[0]) })
	})
	for _, policy := range []Policy{RoundRobin, PeakEWMA} {
		b.Run(policy.String(), func(b *testing.B) {
			pool, err := New(targets...)
			require.NoError(b, err)
			pool.Policy = policy
			pool.Health = healthFuncs{allows: func(string) bool { return true }}
			run(b, pool.Rewrite)
		})
	}
}

func BenchmarkPoolTransport(b *testing.B) {
	u := mustURL(b, "http://10.0.0.1:8080")
	up := gatewaytest.InMemory{Body: "ok\n"}
	req := httptest.NewRequest("GET", u.String()+"/path", nil)
	req.RequestURI = ""
	run := func(b *testing.B, rt http.RoundTripper) {
		b.ReportAllocs()
		for b.Loop() {
			res, err := rt.RoundTrip(req)
			if err != nil {
				b.Fatal(err)
			}
			res.Body.Close()
		}
	}
	b.Run("bare", func(b *testing.B) { run(b, up) })
	b.Run("pool", func(b *testing.B) {
		pool, err := New(u)
		require.NoError(b, err)
		run(b, pool.Transport(up))
	})
}

// healthFuncs is a Health made of functions; a nil one allows everything
// and knows no wait.
type healthFuncs struct {
	allows  func(string) bool
	openFor func(string) time.Duration
}

func (h healthFuncs) Allows(host string) bool { return h.allows == nil || h.allows(host) }

func (h healthFuncs) OpenFor(host string) time.Duration {
	if h.openFor == nil {
		return 0
	}
	return h.openFor(host)
}

func requireFailure(t *testing.T, err error) *gateway.Failure {
	t.Helper()
	f, ok := err.(*gateway.Failure)
	require.True(t, ok, "want *gateway.Failure, got %T %v", err, err)
	return f
}
