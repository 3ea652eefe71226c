package telemetry

import (
	"context"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

var (
	get200    = []attribute.KeyValue{attribute.String("http.request.method", "GET"), attribute.Int("http.response.status_code", 200)}
	schemeTCP = attribute.String("url.scheme", "http")
	first     = attribute.String("proxykit.attempt.role", "first")
	retried   = attribute.String("proxykit.attempt.role", "retry")
)

func errType(v string) attribute.KeyValue { return attribute.String("error.type", v) }
func status(c int) attribute.KeyValue     { return attribute.Int("http.response.status_code", c) }

var getMethod = attribute.String("http.request.method", "GET")

func join(parts ...[]attribute.KeyValue) []attribute.KeyValue {
	var out []attribute.KeyValue
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func kv(kvs ...attribute.KeyValue) []attribute.KeyValue { return kvs }

// staticSource is proxykit.upstream.source of a host given in Config.Upstreams.
var staticSource = attribute.String("proxykit.upstream.source", "static")

// TestSuccess: one request through a healthy upstream records exactly the
// request, the attempt and the observed states, with the semantic
// conventions' names, units, buckets and attributes.
func TestSuccess(t *testing.T) {
	r := newRig(t)
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}})
	fr := front(t, st)

	res := get(t, fr.Client(), fr.URL+"/orders/42?x=1")
	require.Equal(t, http.StatusOK, res.StatusCode)
	r.waitServed(t, 1)

	rm := r.collect(t)
	ms := instruments(rm)
	assert.Equal(t, []string{
		"http.client.active_requests",
		"http.client.request.duration",
		"http.server.request.duration",
		"proxykit.retry.budget.denials",
		"proxykit.upstream.hosts",
		"proxykit.upstream.state",
	}, names(ms), "nothing failed, retried or changed state")
	for name, want := range map[string]struct{ unit, kind string }{
		"http.server.request.duration":  {"s", "histogram"},
		"http.client.request.duration":  {"s", "histogram"},
		"http.client.active_requests":   {"{request}", "updowncounter"},
		"proxykit.retry.budget.denials": {"{retry}", "counter"},
		"proxykit.upstream.state":       {"{state}", "gauge"},
		"proxykit.upstream.hosts":       {"{host}", "gauge"},
	} {
		m := ms[name]
		assert.Equal(t, want.unit, m.Unit, name)
		assert.NotEmpty(t, m.Description, name)
		switch d := m.Data.(type) {
		case metricdata.Histogram[float64]:
			assert.Equal(t, "histogram", want.kind, name)
			for _, p := range d.DataPoints {
				assert.Equal(t, durationBuckets, p.Bounds, "%s: the semantic conventions' buckets", name)
				assert.Greater(t, p.Sum, 0.0)
				assert.Less(t, p.Sum, 5.0, "seconds")
			}
		case metricdata.Sum[int64]:
			if d.IsMonotonic {
				assert.Equal(t, "counter", want.kind, name)
			} else {
				assert.Equal(t, "updowncounter", want.kind, name)
			}
		case metricdata.Gauge[int64]:
			assert.Equal(t, "gauge", want.kind, name)
		}
	}

	upAttrs := hostPort(t, up.Addr)
	assert.Equal(t, map[string]int64{enc(join(get200, kv(schemeTCP))...): 1},
		points(t, rm, "http.server.request.duration"))
	assert.Equal(t, map[string]int64{enc(join(get200, kv(first), upAttrs)...): 1},
		points(t, rm, "http.client.request.duration"))
	assert.Equal(t, map[string]int64{enc(upAttrs...): 0}, points(t, rm, "http.client.active_requests"))
	assert.Equal(t, map[string]int64{enc(): 0}, points(t, rm, "proxykit.retry.budget.denials"))
	states := map[string]int64{}
	for _, s := range []string{"serving", "warming", "resting", "trial", "out", "draining", "drained"} {
		v := int64(0)
		if s == "serving" {
			v = 1
		}
		states[enc(join(upAttrs, kv(staticSource, attribute.String("proxykit.upstream.state", s)))...)] = v
	}
	assert.Equal(t, states, points(t, rm, "proxykit.upstream.state"))
	assert.Equal(t, map[string]int64{enc(staticSource): 1}, points(t, rm, "proxykit.upstream.hosts"))
}

// TestFailureClasses: each failure class reachable on loopback, one
// attempt (no retry), records exactly one server point and one attempt
// point with error.type = the class, and the upstream's address.
func TestFailureClasses(t *testing.T) {
	type setup struct {
		target string              // the upstream URL
		base   http.RoundTripper   // nil: gateway.NewHTTPTransport
		before func(fr string)     // traffic before the failing request
		send   func(fr string) int // the failing request; returns the status the client saw (0: none)
	}
	type tc struct {
		name         string
		setup        func(t *testing.T) setup
		class        gateway.Class
		serverStatus int // 0: absent
		clientStatus int // 0: no response from the upstream
		warmups      int // successful requests before the failing one
	}
	server := func(s *gatewaytest.Server, mod func(*http.Transport)) func(t *testing.T) setup {
		return func(t *testing.T) setup {
			t.Cleanup(s.Close)
			tr := gateway.NewHTTPTransport()
			if mod != nil {
				mod(tr)
			}
			return setup{target: s.URL, base: tr}
		}
	}
	cases := []tc{
		{name: "refused", setup: server(gatewaytest.NewServer(gatewaytest.Refused), nil),
			class: gateway.ClassRefused, serverStatus: 502},
		{name: "dns", setup: func(t *testing.T) setup {
			d := gatewaytest.NewZone()
			t.Cleanup(d.Close)
			tr := gateway.NewHTTPTransport()
			tr.DialContext = d.DialContext
			return setup{target: "http://" + gatewaytest.UnresolvableHost + ":8080", base: tr}
		}, class: gateway.ClassDNS, serverStatus: 502},
		{name: "connect_timeout", setup: func(t *testing.T) setup {
			if runtime.GOOS != "linux" {
				t.Skip("gatewaytest.Blackhole needs Linux")
			}
			b := gatewaytest.NewBlackhole()
			t.Cleanup(b.Close)
			tr := gateway.NewHTTPTransport()
			tr.DialContext = (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext
			return setup{target: b.URL, base: tr}
		}, class: gateway.ClassConnectTimeout, serverStatus: 504},
		{name: "tls", setup: server(gatewaytest.NewTLSUntrusted(gatewaytest.Healthy), nil),
			class: gateway.ClassTLS, serverStatus: 502},
		{name: "reset", setup: server(gatewaytest.NewServer(gatewaytest.ResetAfterRequest), nil),
			class: gateway.ClassReset, serverStatus: 502},
		{name: "malformed", setup: server(gatewaytest.NewServer(gatewaytest.Garbage), nil),
			class: gateway.ClassMalformed, serverStatus: 502},
		{name: "timeout", setup: server(gatewaytest.NewServer(gatewaytest.Hang), func(tr *http.Transport) {
			tr.ResponseHeaderTimeout = 200 * time.Millisecond
		}), class: gateway.ClassTimeout, serverStatus: 504},
		{name: "upstream_status", setup: server(gatewaytest.NewStatus(503, ""), nil),
			class: gateway.ClassUpstreamStatus, serverStatus: 503, clientStatus: 503},
		{name: "stale_connection", setup: func(t *testing.T) setup {
			s := gatewaytest.NewHealthy(nil)
			t.Cleanup(s.Close)
			return setup{target: s.URL, before: func(fr string) {
				// A first request leaves an idle keep-alive connection;
				// then the upstream closes each request's connection
				// without answering, and net/http's resend is stopped.
				c := &http.Client{Timeout: 10 * time.Second}
				defer c.CloseIdleConnections()
				require.Equal(t, 200, get(t, c, fr+"/").StatusCode)
				require.NoError(t, s.SetFault(gatewaytest.CloseAfterRequest))
			}}
		}, class: gateway.ClassStaleConn, serverStatus: 502, warmups: 1},
		{name: "canceled", setup: func(t *testing.T) setup {
			s := gatewaytest.NewServer(gatewaytest.Hang)
			t.Cleanup(s.Close)
			return setup{target: s.URL, send: func(fr string) int {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", fr+"/", nil)
				c := &http.Client{}
				defer c.CloseIdleConnections()
				_, err := c.Do(req)
				require.Error(t, err)
				return 0
			}}
		}, class: gateway.ClassCanceled, serverStatus: 499},
		{name: "client_body", setup: func(t *testing.T) setup {
			s := gatewaytest.NewHealthy(nil)
			t.Cleanup(s.Close)
			return setup{target: s.URL, send: func(fr string) int {
				u := mustURL(t, fr)
				res := rawExchange(t, u.Host, "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n")
				return res.StatusCode
			}}
		}, class: gateway.ClassClientBody, serverStatus: 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.setup(t)
			r := newRig(t)
			st := r.stack(t, proxykit.Config{
				Upstreams: []*url.URL{mustURL(t, s.target)},
				Transport: s.base,
				Retry:     retry.Options{Attempts: 1},
			})
			fr := front(t, st)
			if s.before != nil {
				s.before(fr.URL)
			}
			got := 0
			if s.send != nil {
				got = s.send(fr.URL)
			} else {
				got = get(t, fr.Client(), fr.URL+"/x").StatusCode
			}
			if c.serverStatus != 499 {
				assert.Equal(t, c.serverStatus, got, "status to the client")
			}
			r.waitServed(t, int64(c.warmups)+1)
			rm := r.collect(t)

			method := "GET"
			if c.class == gateway.ClassClientBody {
				method = "POST"
			}
			m := attribute.String("http.request.method", method)
			wantServer := map[string]int64{enc(m, schemeTCP, status(c.serverStatus), errType(c.class.String())): 1}
			upAttrs := hostPort(t, mustURL(t, s.target).Host)
			client := join(kv(m, first, errType(c.class.String())), upAttrs)
			if c.clientStatus != 0 {
				client = append(client, status(c.clientStatus))
			}
			wantClient := map[string]int64{enc(client...): 1}
			if c.warmups > 0 {
				wantServer[enc(join(get200, kv(schemeTCP))...)] = int64(c.warmups)
				wantClient[enc(join(get200, kv(first), upAttrs)...)] = int64(c.warmups)
			}
			assert.Equal(t, wantServer, points(t, rm, "http.server.request.duration"))
			assert.Equal(t, wantClient, points(t, rm, "http.client.request.duration"))
			assert.Nil(t, points(t, rm, "proxykit.retries"), "no retry")
			assert.Nil(t, points(t, rm, "proxykit.requests.without_upstream"))
		})
	}
}

// TestRetry: an attempt refused by one upstream and retried on the other
// records both attempts by role and the retry by class and upstream.
func TestRetry(t *testing.T) {
	r := newRig(t)
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	var userRetries atomic.Int64
	st := r.stack(t, proxykit.Config{
		Upstreams: []*url.URL{mustURL(t, dead.URL), mustURL(t, ok.URL)},
		Policy:    1, // pool.RoundRobin: the dead upstream first
		Retry: retry.Options{OnRetry: func(int, *gateway.Failure, time.Duration) {
			userRetries.Add(1)
		}},
	})
	fr := front(t, st)
	require.Equal(t, 200, get(t, fr.Client(), fr.URL+"/").StatusCode)
	r.waitServed(t, 1)

	rm := r.collect(t)
	deadAttrs, okAttrs := hostPort(t, dead.Addr), hostPort(t, ok.Addr)
	assert.Equal(t, map[string]int64{enc(join(get200, kv(schemeTCP))...): 1},
		points(t, rm, "http.server.request.duration"), "the client saw one success")
	assert.Equal(t, map[string]int64{
		enc(join(kv(getMethod, first, errType("refused")), deadAttrs)...): 1,
		enc(join(get200, kv(retried), okAttrs)...):                        1,
	}, points(t, rm, "http.client.request.duration"))
	assert.Equal(t, map[string]int64{enc(join(kv(errType("refused")), deadAttrs)...): 1},
		points(t, rm, "proxykit.retries"))
	assert.EqualValues(t, 1, userRetries.Load(), "the user's OnRetry still runs")
}

// TestBudgetDenial: with the retry budget spent, the refused retry is
// counted in proxykit.retry.budget.denials.
func TestBudgetDenial(t *testing.T) {
	r := newRig(t)
	up := gatewaytest.NewStatus(503, "")
	defer up.Close()
	st := r.stack(t, proxykit.Config{
		Upstreams: []*url.URL{mustURL(t, up.URL)},
		// One retry from the floor's single token, then nothing.
		Retry: retry.Options{BudgetRatio: 1e-9, BudgetMinPerSecond: 1e-3, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond},
	})
	fr := front(t, st)
	require.Equal(t, 503, get(t, fr.Client(), fr.URL+"/").StatusCode)
	r.waitServed(t, 1)

	rm := r.collect(t)
	upAttrs := hostPort(t, up.Addr)
	assert.Equal(t, map[string]int64{enc(): 1}, points(t, rm, "proxykit.retry.budget.denials"))
	assert.Equal(t, map[string]int64{enc(join(kv(errType("upstream_status")), upAttrs)...): 1},
		points(t, rm, "proxykit.retries"))
	assert.Equal(t, map[string]int64{
		enc(join(kv(getMethod, status(503), first, errType("upstream_status")), upAttrs)...):   1,
		enc(join(kv(getMethod, status(503), retried, errType("upstream_status")), upAttrs)...): 1,
	}, points(t, rm, "http.client.request.duration"))
	assert.Equal(t, map[string]int64{enc(getMethod, schemeTCP, status(503), errType("upstream_status")): 1},
		points(t, rm, "http.server.request.duration"))
}

// untilStatus sends GETs to url until one gets want (at most 100), and
// returns how many did not. The breakers' open periods are short while a
// whole pool is out (they probe it back), so an out host may take a
// request again between two of ours: the tests count, not assume.
func untilStatus(t *testing.T, c *http.Client, url string, want int) int {
	t.Helper()
	for i := range 100 {
		if get(t, c, url).StatusCode == want {
			return i
		}
	}
	t.Fatalf("no %d in 100 requests", want)
	return 0
}

// TestBreakerTransitionAndNoUpstream: a host whose breaker trips is
// counted in the transitions and shown out; a request with no upstream
// left is answered without one, and is no attempt.
func TestBreakerTransitionAndNoUpstream(t *testing.T) {
	r := newRig(t)
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	var userTransitions atomic.Int64
	st := r.stack(t, proxykit.Config{
		Upstreams: []*url.URL{mustURL(t, dead.URL)},
		Retry:     retry.Options{Attempts: 1},
		Breaker: breaker.Settings{ConsecutiveFailures: 1, Timeout: time.Minute, OnStateChange: func(string, string, breaker.State, breaker.State) {
			userTransitions.Add(1)
		}},
	})
	fr := front(t, st)
	refused := untilStatus(t, fr.Client(), fr.URL+"/", 503)
	require.Positive(t, refused, "the first request reaches the host")
	r.waitServed(t, int64(refused)+1)

	rm := r.collect(t)
	deadAttrs := hostPort(t, dead.Addr)
	transitions := points(t, rm, "proxykit.breaker.transitions")
	assert.Positive(t, transitions[enc(join(kv(attribute.String("proxykit.breaker.state", "open"),
		attribute.String("proxykit.breaker.previous_state", "closed")), deadAttrs)...)], "closed → open: %v", transitions)
	var total int64
	for _, n := range transitions {
		total += n
	}
	assert.LessOrEqual(t, total, userTransitions.Load(), "the user's OnStateChange still runs, after ours")
	assert.Equal(t, map[string]int64{
		enc(getMethod, schemeTCP, status(502), errType("refused")):     int64(refused),
		enc(getMethod, schemeTCP, status(503), errType("no_upstream")): 1,
	}, points(t, rm, "http.server.request.duration"))
	assert.Equal(t, map[string]int64{enc(join(kv(getMethod, first, errType("refused")), deadAttrs)...): int64(refused)},
		points(t, rm, "http.client.request.duration"), "no attempt without an upstream")
	assert.Equal(t, map[string]int64{enc(errType("no_upstream")): 1},
		points(t, rm, "proxykit.requests.without_upstream"))
	state := nonZero(points(t, rm, "proxykit.upstream.state"))
	require.Len(t, state, 1, "one state at a time: %v", state)
	assert.Contains(t, []string{
		enc(join(deadAttrs, kv(staticSource, attribute.String("proxykit.upstream.state", "out")))...),
		enc(join(deadAttrs, kv(staticSource, attribute.String("proxykit.upstream.state", "half_open")))...),
	}, slices.Collect(maps.Keys(state))[0])
}

// TestBreakerOpenAttempt: without a pool, an attempt a breaker refuses
// reaches the telemetry transport as class open: recorded as an attempt
// of that upstream and as a request answered without one.
func TestBreakerOpenAttempt(t *testing.T) {
	r := newRig(t)
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	target := mustURL(t, dead.URL)
	st := r.stack(t, proxykit.Config{
		Proxy:   &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }},
		Retry:   retry.Options{Attempts: 1},
		Breaker: breaker.Settings{ConsecutiveFailures: 1, Timeout: time.Minute},
	})
	fr := front(t, st)
	refused := untilStatus(t, fr.Client(), fr.URL+"/", 503)
	require.Positive(t, refused)
	r.waitServed(t, int64(refused)+1)

	rm := r.collect(t)
	deadAttrs := hostPort(t, dead.Addr)
	assert.Equal(t, map[string]int64{
		enc(join(kv(getMethod, first, errType("refused")), deadAttrs)...): int64(refused),
		enc(join(kv(getMethod, first, errType("open")), deadAttrs)...):    1,
	}, points(t, rm, "http.client.request.duration"))
	assert.Equal(t, map[string]int64{enc(errType("open")): 1}, points(t, rm, "proxykit.requests.without_upstream"))
	state := nonZero(points(t, rm, "proxykit.upstream.state"))
	assert.Len(t, state, 1, "the breakers' hosts, without a pool: %v", state)
}

// TestHedgeRole: an attempt whose context marks a hedge is recorded with
// role hedge (the marker is the retry layer's to set; see the package
// documentation).
func TestHedgeRole(t *testing.T) {
	r := newRig(t)
	type hedgeKey struct{}
	r.tel.hedged = func(ctx context.Context) bool { return ctx.Value(hedgeKey{}) != nil }
	rt := r.tel.Transport(inMemory)
	for _, hedge := range []bool{false, true} {
		ctx := context.Background()
		if hedge {
			ctx = context.WithValue(ctx, hedgeKey{}, true)
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc.test/", nil)
		res, err := rt.RoundTrip(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	svc := kv(attribute.String("server.address", "svc.test"), attribute.Int("server.port", 80))
	assert.Equal(t, map[string]int64{
		enc(join(get200, kv(first), svc)...):                                              1,
		enc(join(get200, kv(attribute.String("proxykit.attempt.role", "hedge")), svc)...): 1,
	}, points(t, r.collect(t), "http.client.request.duration"))
}

// TestApplyKeepsUserHooks: Apply runs the user's hooks after its own.
func TestApplyKeepsUserHooks(t *testing.T) {
	r := newRig(t)
	var requests atomic.Int64
	st := r.stack(t, proxykit.Config{
		Upstreams: []*url.URL{mustURL(t, "http://upstream.test")},
		Transport: inMemory,
		OnRequest: func(*http.Request, int, *gateway.Failure, time.Duration) { requests.Add(1) },
	})
	rec := &discardWriter{h: http.Header{}}
	req, _ := http.NewRequest("GET", "http://gateway.test/", nil)
	st.ServeHTTP(rec, req)
	assert.EqualValues(t, 1, requests.Load())
	r.waitServed(t, 1)
}

// TestOmitServerDuration leaves http.server.request.duration to otelhttp.
func TestOmitServerDuration(t *testing.T) {
	r := newRig(t, func(o *Options, _ *rig) { o.OmitServerDuration = true })
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, "http://upstream.test")}, Transport: inMemory})
	req, _ := http.NewRequest("GET", "http://gateway.test/", nil)
	st.ServeHTTP(&discardWriter{h: http.Header{}}, req)
	ms := instruments(r.collect(t))
	assert.NotContains(t, ms, "http.server.request.duration")
	assert.Contains(t, ms, "http.client.request.duration")
}

// TestServerErrorTypeForOwn5xx: an upstream's own 500 passes through;
// error.type is its code, as the semantic conventions say for a 5xx.
func TestServerErrorTypeForOwn5xx(t *testing.T) {
	r := newRig(t)
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer up.Close()
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}})
	fr := front(t, st)
	assert.Equal(t, 500, get(t, fr.Client(), fr.URL+"/").StatusCode)
	r.waitServed(t, 1)
	rm := r.collect(t)
	assert.Equal(t, map[string]int64{enc(getMethod, schemeTCP, status(500), errType("500")): 1},
		points(t, rm, "http.server.request.duration"), "a 5xx without a class: its code")
	assert.Equal(t, map[string]int64{enc(join(kv(getMethod, status(500), first, errType("500")), hostPort(t, up.Addr))...): 1},
		points(t, rm, "http.client.request.duration"))
}
