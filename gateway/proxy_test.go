package gateway_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// capture is middleware that records the Failure and status the proxy
// produced, passing the response through: the seat of an enclosing layer.
type capture struct {
	mu      sync.Mutex
	failure *gateway.Failure
	status  int
	next    http.Handler
}

func (c *capture) Decide(status int, h http.Header, f *gateway.Failure) gateway.Decision {
	if f == nil {
		f = gateway.ClassifyStatus(status, h, "", time.Now())
	}
	c.mu.Lock()
	c.failure, c.status = f, status
	c.mu.Unlock()
	return gateway.Pass
}

func (c *capture) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := gateway.NewInterceptor(w, c)
	c.next.ServeHTTP(i, r)
	if !i.Committed() && i.Failure() != nil { // canceled: nothing written
		c.mu.Lock()
		c.failure = i.Failure()
		c.mu.Unlock()
	}
}

func (c *capture) get() (*gateway.Failure, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failure, c.status
}

type env struct {
	base   *http.Transport
	target string
	ctx    func(context.Context) (context.Context, context.CancelFunc)
}

func newProxy(t *testing.T, e env) (*capture, *httptest.Server) {
	t.Helper()
	u, err := url.Parse(e.target)
	require.NoError(t, err)
	if e.base == nil {
		e.base = gateway.NewHTTPTransport()
	}
	t.Cleanup(e.base.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: e.base},
		ErrorHandler: gateway.NewErrorHandler(slog.New(slog.DiscardHandler)),
	}
	var h http.Handler = rp
	if e.ctx != nil {
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := e.ctx(r.Context())
			defer cancel()
			inner.ServeHTTP(w, r.WithContext(ctx))
		})
	}
	c := &capture{next: h}
	front := httptest.NewServer(c)
	t.Cleanup(front.Close)
	return c, front
}

func boolp(b bool) *bool { return &b }

// TestFaultTable drives every fault of gatewaytest through a real
// ReverseProxy with the instrumented Transport, and checks what the client
// sees and what the enclosing layer learns.
func TestFaultTable(t *testing.T) {
	ca, err := gatewaytest.NewCA()
	require.NoError(t, err)

	type tc struct {
		name     string
		setup    func(t *testing.T) (env, func() int64) // env, upstream request counter
		class    gateway.Class
		status   int
		sent     *bool // nil: timing-dependent, not asserted
		requests int64 // requests the upstream must have read; -1: not asserted
		retry    time.Duration
	}
	server := func(s *gatewaytest.Server, mod func(*http.Transport)) func(t *testing.T) (env, func() int64) {
		return func(t *testing.T) (env, func() int64) {
			t.Cleanup(s.Close)
			tr := gateway.NewHTTPTransport()
			if mod != nil {
				mod(tr)
			}
			return env{base: tr, target: s.URL}, s.Requests
		}
	}
	trustCA := func(tr *http.Transport) { tr.TLSClientConfig = ca.ClientConfig() }
	none := func() int64 { return 0 }

	cases := []tc{
		{name: "refused", setup: server(gatewaytest.NewServer(gatewaytest.Refused), nil),
			class: gateway.ClassRefused, status: 502, sent: boolp(false), requests: 0},
		{name: "dns", setup: func(t *testing.T) (env, func() int64) {
			d := gatewaytest.NewZone()
			t.Cleanup(func() {
				assert.Positive(t, d.Queries(), "the loopback DNS responder must have answered")
				d.Close()
			})
			tr := gateway.NewHTTPTransport()
			tr.DialContext = d.DialContext
			return env{base: tr, target: "http://" + gatewaytest.UnresolvableHost + ":8080"}, none
		}, class: gateway.ClassDNS, status: 502, sent: boolp(false), requests: 0},
		{name: "connect_timeout", setup: func(t *testing.T) (env, func() int64) {
			b := gatewaytest.NewBlackhole()
			t.Cleanup(b.Close)
			tr := gateway.NewHTTPTransport()
			tr.DialContext = (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext
			return env{base: tr, target: b.URL}, none
		}, class: gateway.ClassConnectTimeout, status: 504, sent: boolp(false), requests: 0},
		{name: "tls_handshake_timeout", setup: func(t *testing.T) (env, func() int64) {
			s := gatewaytest.NewServer(gatewaytest.Silent) // accepts, never answers a ClientHello
			t.Cleanup(s.Close)
			tr := gateway.NewHTTPTransport()
			tr.TLSHandshakeTimeout = 200 * time.Millisecond
			return env{base: tr, target: "https://" + s.Addr}, s.Requests
		}, class: gateway.ClassConnectTimeout, status: 504, sent: boolp(false), requests: 0},
		{name: "tls_untrusted", setup: server(gatewaytest.NewTLSUntrusted(gatewaytest.Healthy), nil),
			class: gateway.ClassTLS, status: 502, sent: boolp(false), requests: 0},
		{name: "tls_wrong_host", setup: server(gatewaytest.NewTLSWrongHost(ca, gatewaytest.Healthy), trustCA),
			class: gateway.ClassTLS, status: 502, sent: boolp(false), requests: 0},
		{name: "plain_http_on_tls", setup: server(gatewaytest.NewPlainOnTLS(), nil),
			class: gateway.ClassTLS, status: 502, sent: boolp(false), requests: 0},
		{name: "reset_on_accept", setup: server(gatewaytest.NewServer(gatewaytest.ResetOnAccept), nil),
			class: gateway.ClassReset, status: 502, sent: nil, requests: 0},
		{name: "reset_after_request", setup: server(gatewaytest.NewServer(gatewaytest.ResetAfterRequest), nil),
			class: gateway.ClassReset, status: 502, sent: boolp(true), requests: 1},
		{name: "response_header_timeout", setup: server(gatewaytest.NewServer(gatewaytest.Hang), func(tr *http.Transport) {
			tr.ResponseHeaderTimeout = 200 * time.Millisecond
		}), class: gateway.ClassTimeout, status: 504, sent: boolp(true), requests: 1},
		{name: "per_try_deadline", setup: func(t *testing.T) (env, func() int64) {
			s := gatewaytest.NewServer(gatewaytest.SlowHeaders)
			s.Delay = 5 * time.Second
			t.Cleanup(s.Close)
			return env{target: s.URL, ctx: func(ctx context.Context) (context.Context, context.CancelFunc) {
				return context.WithTimeout(ctx, 200*time.Millisecond)
			}}, s.Requests
		}, class: gateway.ClassTimeout, status: 504, sent: boolp(true), requests: 1},
		{name: "garbage", setup: server(gatewaytest.NewServer(gatewaytest.Garbage), nil),
			class: gateway.ClassMalformed, status: 502, sent: boolp(true), requests: 1},
		{name: "garbage_over_tls", setup: server(mustTLS(t, ca, gatewaytest.Garbage), trustCA),
			class: gateway.ClassMalformed, status: 502, sent: boolp(true), requests: 1},
		{name: "upstream_503_retry_after_seconds", setup: server(gatewaytest.NewStatus(503, "7"), nil),
			class: gateway.ClassUpstreamStatus, status: 503, sent: boolp(true), requests: 1, retry: 7 * time.Second},
		{name: "upstream_502_retry_after_date", setup: server(gatewaytest.NewStatus(502,
			time.Now().Add(90*time.Second).UTC().Format(http.TimeFormat)), nil),
			class: gateway.ClassUpstreamStatus, status: 502, sent: boolp(true), requests: 1, retry: 89 * time.Second},
		{name: "upstream_504", setup: server(gatewaytest.NewStatus(504, ""), nil),
			class: gateway.ClassUpstreamStatus, status: 504, sent: boolp(true), requests: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, requests := c.setup(t)
			capt, front := newProxy(t, e)
			res, err := front.Client().Get(front.URL + "/some/path?q=1")
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			res.Body.Close()

			f, status := capt.get()
			require.NotNil(t, f, "the enclosing layer must learn the failure")
			assert.Equal(t, c.class, f.Class, "class (error: %v)", f.Err)
			assert.Equal(t, c.status, res.StatusCode, "status to the client")
			assert.Equal(t, c.status, status)
			if c.sent != nil {
				assert.Equal(t, *c.sent, f.Sent, "sent flag")
			}
			if c.requests >= 0 {
				assert.Equal(t, c.requests, requests(), "requests the upstream read")
			}
			if c.retry > 0 {
				// A date's delay shrinks while the cases before it run
				// (seconds on a busy machine): 10% of the delay, at least 1.5 s.
				assert.InDelta(t, c.retry.Seconds(), f.RetryAfter.Seconds(), max(1.5, c.retry.Seconds()/10), "Retry-After")
			}
			if c.class != gateway.ClassUpstreamStatus {
				u, _ := url.Parse(e.target)
				assertNoLeak(t, string(body), u.Host, f)
				assert.Contains(t, string(body), c.class.Explanation())
			}
			t.Logf("%s → %d %v", c.name, res.StatusCode, f)
		})
	}
}

func mustTLS(t *testing.T, ca *gatewaytest.CA, f gatewaytest.Fault) *gatewaytest.Server {
	cfg, err := ca.ServerConfig("127.0.0.1")
	require.NoError(t, err)
	cfg.NextProtos = []string{"http/1.1"} // garbage is an HTTP/1 fault
	return gatewaytest.NewTLSServer(f, cfg)
}

// assertNoLeak checks that a client-facing body carries neither the
// upstream's address nor the error text.
func assertNoLeak(t *testing.T, body, upstreamHost string, f *gateway.Failure) {
	t.Helper()
	assert.NotContains(t, body, upstreamHost)
	if _, port, ok := strings.Cut(upstreamHost, ":"); ok {
		assert.NotContains(t, body, port)
	}
	if f.Err != nil {
		assert.NotContains(t, body, f.Err.Error())
	}
	for _, s := range []string{"dial ", "tcp ", "127.0.0.1", "x509", "tls:", "connection refused",
		"reset by peer", "EOF", "context", "i/o timeout", "lookup", "proxykit.invalid", "malformed"} {
		assert.NotContains(t, body, s)
	}
}

// TestCloseMidBody: a response that breaks after its header is the client's
// problem to see, as an aborted body; no layer may turn it into a page.
func TestCloseMidBody(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.CloseMidBody)
	defer s.Close()
	capt, front := newProxy(t, env{target: s.URL})
	res, err := front.Client().Get(front.URL)
	require.NoError(t, err)
	defer res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	n, err := io.Copy(io.Discard, res.Body)
	assert.Error(t, err, "the client must see the body break")
	assert.Less(t, n, int64(1<<20))
	f, status := capt.get()
	assert.Nil(t, f)
	assert.Equal(t, http.StatusOK, status)
}

// TestCanceledClient: a client that goes away gets nothing written, is
// classified canceled, and is logged at debug level only.
func TestCanceledClient(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.Hang)
	defer s.Close()
	u, _ := url.Parse(s.URL)
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
	w := &strictWriter{header: http.Header{}}
	go func() {
		for s.Requests() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	func() {
		defer func() {
			assert.Equal(t, http.ErrAbortHandler, recover(), "the connection is aborted, not finished with an implicit 200")
		}()
		rp.ServeHTTP(w, req)
	}()
	assert.Zero(t, w.status, "nothing may be written to a client that left")
	assert.Zero(t, w.n)
	line := logs.String()
	assert.Contains(t, line, `"level":"DEBUG"`)
	assert.Contains(t, line, `"class":"canceled"`)
	assert.Contains(t, line, `"status":499`)
	assert.Equal(t, 1, strings.Count(line, "\n"), "one line")
}

type strictWriter struct {
	header http.Header
	status int
	n      int
}

func (w *strictWriter) Header() http.Header { return w.header }
func (w *strictWriter) WriteHeader(c int)   { w.status = c }
func (w *strictWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	w.n += len(p)
	return len(p), nil
}

// TestHalfClosedClientGetsNo200: net/http cancels a request's context when
// an HTTP/1 client half-closes its connection, though the client may still
// read. Such a client must not receive an empty 200 for a request that
// failed: the connection is aborted instead.
func TestHalfClosedClientGetsNo200(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.Hang)
	defer s.Close()
	u, _ := url.Parse(s.URL)
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	front := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(slog.New(slog.DiscardHandler)),
	})
	defer front.Close()
	c, err := net.Dial("tcp", front.Listener.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return s.Requests() == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, c.(*net.TCPConn).CloseWrite()) // half-close: still reading
	got, _ := io.ReadAll(c)
	assert.NotContains(t, string(got), "200 OK", "a failed request must not read as success")
	assert.Empty(t, got, "the connection is aborted without a response")
}
