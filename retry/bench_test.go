package retry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// okTransport answers every request in-process with 200 "ok", after reading
// the request body: the upstream without the network, so that what is
// measured is the proxy and the middleware.
type okTransport struct{}

func (okTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
	}
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"text/plain"}},
		Body:          io.NopCloser(strings.NewReader("ok")),
		ContentLength: 2,
		Request:       r,
	}, nil
}

// sink is a reusable ResponseWriter.
type sink struct {
	h      http.Header
	status int
}

func (s *sink) Header() http.Header         { return s.h }
func (s *sink) Write(p []byte) (int, error) { return len(p), nil }
func (s *sink) WriteHeader(code int)        { s.status = code }
func (s *sink) reset()                      { clear(s.h); s.status = 0 }

// variant is one side of a comparison.
type variant struct {
	name string
	h    http.Handler
}

func variants(bare, wrapped http.Handler) []variant {
	return []variant{{"bare", bare}, {"retry", wrapped}}
}

// inProcess returns the bare proxy and the retry-wrapped one over
// okTransport, with the gateway Transport and ErrorHandler in both.
func inProcess(tb testing.TB) (bare, wrapped http.Handler) {
	target, _ := url.Parse("http://upstream.test")
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:    &gateway.Transport{Base: okTransport{}},
		ErrorHandler: gateway.NewErrorHandler(discard),
		BufferPool:   &bufferPool{},
	}
	rt, err := New(Options{Logger: discard})
	require.NoError(tb, err)
	return proxy, rt.Wrap(proxy)
}

// bufferPool is a httputil.BufferPool, so that the proxy's 32 KiB copy
// buffer is not allocated per request and its GC noise does not drown the
// difference being measured.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

// benchRequest is an inbound request like the server's: its context can be
// canceled.
func benchRequest(tb testing.TB, method string, body []byte) (*http.Request, *bytes.Reader, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var br *bytes.Reader
	r := httptest.NewRequest(method, "http://front.test/path?q=1", nil).WithContext(ctx)
	if body != nil {
		br = bytes.NewReader(body)
		r.Body = io.NopCloser(br)
		r.ContentLength = int64(len(body))
	}
	return r, br, cancel
}

func serveOnce(h http.Handler, w *sink, r *http.Request, br *bytes.Reader, body []byte) {
	w.reset()
	if br != nil {
		br.Reset(body)
	}
	h.ServeHTTP(w, r)
}

// quietAllocs is testing.AllocsPerRun where nothing else can inflate the
// count: not under the race detector (which makes sync.Pool drop a share
// of what is put back), and with the garbage collector off (a collection
// empties the pools). BenchmarkHappyPath reports the same figures.
func quietAllocs(t *testing.T, runs int, f func()) float64 {
	t.Helper()
	if raceEnabled {
		t.Skip("allocation counts are inflated by the race detector; BenchmarkHappyPath reports them")
	}
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	return testing.AllocsPerRun(runs, f)
}

// TestHappyPathAllocs: the middleware adds at most two allocations per
// request on the happy path without a body (the trail context and the
// request copy carrying it), and one more with a body (the attempt's
// reader).
func TestHappyPathAllocs(t *testing.T) {
	bare, wrapped := inProcess(t)
	body := bytes.Repeat([]byte("x"), 1024)
	for _, c := range []struct {
		method string
		body   []byte
		extra  float64
	}{
		{http.MethodGet, nil, 2},
		{http.MethodPost, body, 3}, // not kept: a POST is retried only unread
		{http.MethodPut, body, 3},  // kept for replay, in a recycled buffer
	} {
		r, br, cancel := benchRequest(t, c.method, c.body)
		w := &sink{h: http.Header{}}
		measure := func(h http.Handler) float64 {
			return quietAllocs(t, 200, func() { serveOnce(h, w, r, br, c.body) })
		}
		b, m := measure(bare), measure(wrapped)
		cancel()
		require.Equal(t, http.StatusOK, w.status)
		assert.LessOrEqual(t, m-b, c.extra, "%s: bare %.1f, with retry %.1f allocs/request", c.method, b, m)
		t.Logf("%s: bare %.1f, with retry %.1f allocs/request", c.method, b, m)
	}
}

// TestHedgeHappyPathAllocs: hedging on (every GET arms its timer) adds at
// most one allocation per request over retry alone (the attempts'
// cancelable context), and starts no goroutine. The hedge delay is fixed
// and long, so that a request the busy machine slowed down is not hedged
// (a hedge allocates, and is not the happy path this counts).
func TestHedgeHappyPathAllocs(t *testing.T) {
	target, _ := url.Parse("http://upstream.test")
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:    &gateway.Transport{Base: okTransport{}},
		ErrorHandler: gateway.NewErrorHandler(discard),
		BufferPool:   &bufferPool{},
	}
	rt, err := New(Options{Logger: discard})
	require.NoError(t, err)
	hedged, err := New(Options{Logger: discard, Hedges: 1, HedgeDelay: time.Hour})
	require.NoError(t, err)
	plain, hedging := rt.Wrap(proxy), hedged.Wrap(proxy)
	r, _, cancel := benchRequest(t, http.MethodGet, nil)
	defer cancel()
	w := &sink{h: http.Header{}}
	measure := func(h http.Handler) float64 {
		return quietAllocs(t, 500, func() { serveOnce(h, w, r, nil, nil) })
	}
	before := runtime.NumGoroutine()
	p, h := measure(plain), measure(hedging)
	require.Zero(t, hedged.Stats().Hedges, "no hedge was sent: the happy path")
	assert.LessOrEqual(t, h-p, 1.0, "retry %.1f, with hedging %.1f allocs/request", p, h)
	assert.LessOrEqual(t, runtime.NumGoroutine(), before, "no goroutine per request")
	t.Logf("retry %.1f, with hedging %.1f allocs/request", p, h)
}

// BenchmarkHappyPath compares, in the same run, the bare ReverseProxy with
// the retry-wrapped one on the happy path (the first attempt succeeds),
// in-process: no network, so the difference is the middleware's cost.
// Figures on a shared, loaded machine are indicative.
//
//	go test -run '^$' -bench HappyPath -benchmem -count 5 ./retry/
func BenchmarkHappyPath(b *testing.B) {
	bare, wrapped := inProcess(b)
	body := bytes.Repeat([]byte("x"), 1024)
	for _, c := range []struct {
		name   string
		method string
		body   []byte
	}{
		{"GET", http.MethodGet, nil},
		{"PUT-1KiB", http.MethodPut, body},
	} {
		for _, v := range variants(bare, wrapped) {
			b.Run(c.name+"/"+v.name, func(b *testing.B) {
				r, br, cancel := benchRequest(b, c.method, c.body)
				defer cancel()
				w := &sink{h: http.Header{}}
				b.ReportAllocs()
				for b.Loop() {
					serveOnce(v.h, w, r, br, c.body)
				}
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			})
		}
	}
}

// BenchmarkOverhead isolates the middleware: the wrapped handler only
// answers 200 "ok", so the difference between the two is what retry adds
// per request on the happy path.
//
//	go test -run '^$' -bench Overhead -benchmem -count 5 ./retry/
func BenchmarkOverhead(b *testing.B) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "ok")
	})
	rt, err := New(Options{Logger: discard})
	require.NoError(b, err)
	hedging := warmHedging(b, ok)
	for _, v := range append(variants(ok, rt.Wrap(ok)), variant{"retry+hedge", hedging}) {
		b.Run(v.name, func(b *testing.B) {
			r, _, cancel := benchRequest(b, http.MethodGet, nil)
			defer cancel()
			w := &sink{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				serveOnce(v.h, w, r, nil, nil)
			}
		})
	}
}

// warmHedging returns h wrapped by a Retry with hedging on (adaptive
// delay), warmed up: its delay is known, so every GET arms the hedge
// timer; none is ever due.
func warmHedging(tb testing.TB, h http.Handler) http.Handler {
	rt, err := New(Options{Logger: discard, Hedges: 1})
	require.NoError(tb, err)
	wrapped := rt.Wrap(h)
	r, _, cancel := benchRequest(tb, http.MethodGet, nil)
	defer cancel()
	w := &sink{h: http.Header{}}
	for range 2 * latSampling * hedgeWarmup {
		serveOnce(wrapped, w, r, nil, nil)
	}
	time.Sleep(latRefresh)
	serveOnce(wrapped, w, r, nil, nil)
	require.NotZero(tb, rt.Stats().HedgeDelay)
	return wrapped
}

// BenchmarkLoopback is the same comparison through real sockets: client →
// front server → proxy → loopback upstream. The network dominates; the
// figures show the middleware is lost in it.
func BenchmarkLoopback(b *testing.B) {
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	target, _ := url.Parse(up.URL)
	transport := gateway.NewHTTPTransport()
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:    &gateway.Transport{Base: transport},
		ErrorHandler: gateway.NewErrorHandler(discard),
	}
	rt, err := New(Options{Logger: discard})
	require.NoError(b, err)
	for _, v := range variants(proxy, rt.Wrap(proxy)) {
		b.Run(v.name, func(b *testing.B) {
			front := httptest.NewServer(v.h)
			defer front.Close()
			client := front.Client()
			b.ReportAllocs()
			for b.Loop() {
				res, err := client.Get(front.URL)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
}
