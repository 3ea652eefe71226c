package proxykit

import (
	"bytes"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
)

// discardWriter is a reusable ResponseWriter, so that a recorder's own
// allocations do not blur the comparison.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// Like net/http's own ResponseWriter, it takes connection deadlines (which
// ClientBodyTimeout sets on every request with a body).
func (w *discardWriter) SetReadDeadline(time.Time) error  { return nil }
func (w *discardWriter) SetWriteDeadline(time.Time) error { return nil }

var quiet = slog.New(slog.DiscardHandler)

// layers builds the stack one layer at a time over an in-memory upstream.
func layers(b *testing.B, up http.RoundTripper) []struct {
	name string
	h    http.Handler
} {
	u, _ := url.Parse("http://upstream.test")
	bufs := gateway.NewBufferPool(0, 0)
	errLog := log.New(io.Discard, "", 0)
	proxy := func(rt http.RoundTripper, eh func(http.ResponseWriter, *http.Request, error)) http.Handler {
		return &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, Transport: rt,
			ErrorHandler: eh, ErrorLog: errLog, BufferPool: bufs,
		}
	}
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	rt, err := retry.New(retry.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	rtHedge, err := retry.New(retry.Options{Logger: quiet, Hedges: 1})
	if err != nil {
		b.Fatal(err)
	}
	pages, err := errorpage.New(errorpage.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	eh := gateway.NewErrorHandler(quiet)
	instrumented := &gateway.Transport{Base: up}
	withBreaker := proxy(hosts.Transport(instrumented), eh)
	withRetry := rt.Wrap(withBreaker)
	full, err := New(Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: up, Retry: retry.Options{Hedges: -1}})
	if err != nil {
		b.Fatal(err)
	}
	fullHedge, err := New(Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: up, Retry: retry.Options{Hedges: 1}})
	if err != nil {
		b.Fatal(err)
	}
	// The same stack over a discovery upstream: one address, resolved
	// by a loopback DNS server and re-resolved every 100 ms while the
	// benchmark runs.
	zone := gatewaytest.NewZone()
	b.Cleanup(zone.Close)
	zone.SetAddrs("upstream.test", netip.MustParseAddr("127.0.0.1"))
	fullDiscovery, err := New(Config{Upstreams: []*url.URL{{Scheme: "dns+http", Host: "upstream.test:80"}}, Logger: quiet, Transport: up,
		Retry: retry.Options{Hedges: -1}, Discovery: pool.DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(fullDiscovery.Close)
	return []struct {
		name string
		h    http.Handler
	}{
		{"bare", proxy(up, nil)},
		{"+transport", proxy(instrumented, eh)},
		{"+breaker", withBreaker},
		{"+retry", withRetry},
		{"+retry+hedge", rtHedge.Wrap(withBreaker)},
		{"+errorpage", pages.Wrap(withRetry)},
		{"full", full.Handler},
		{"full+hedge", fullHedge.Handler},
		{"full+discovery", fullDiscovery.Handler},
	}
}

// BenchmarkStack measures the recommended stack layer by layer, in one run,
// against an in-memory upstream: the cost each layer adds per request on the
// happy path. full+discovery is full over a dns+http upstream (one
// address, re-resolved every 100 ms during the run). The +hedge variants have hedging on (adaptive delay: warmed up
// after the first 100 requests, no hedge ever due), the others off: the
// happy-path cost of hedging is the difference.
//
//	go test -run '^$' -bench BenchmarkStack -benchmem ./
func BenchmarkStack(b *testing.B) {
	up := gatewaytest.InMemory{Body: "ok\n"}
	body := bytes.Repeat([]byte("x"), 4<<10)
	for _, method := range []string{"GET", "POST-4KiB"} {
		for _, l := range layers(b, up) {
			b.Run(method+"/"+l.name, func(b *testing.B) {
				w := &discardWriter{h: http.Header{}}
				rd := bytes.NewReader(body)
				req := httptest.NewRequest("GET", "http://gateway.test/path", nil)
				if method != "GET" {
					req = httptest.NewRequest("POST", "http://gateway.test/path", rd)
				}
				req.Header.Set("X-Request-Id", "bench-request-1") // kept, not minted
				b.ReportAllocs()
				for b.Loop() {
					clear(w.h)
					if method != "GET" {
						rd.Reset(body)
						req.Body = io.NopCloser(rd)
						req.ContentLength = int64(len(body))
					}
					l.h.ServeHTTP(w, req)
					if w.status != 0 && w.status != http.StatusOK {
						b.Fatalf("status %d", w.status)
					}
				}
			})
		}
	}
}

// refusing is an upstream that fails every request as refused, without a
// network.
type refusing struct{}

func (refusing) RoundTrip(req *http.Request) (*http.Response, error) {
	return nil, gateway.ClassifyError(errors.New("connect: connection refused (simulated)"), req.URL.Host, false)
}

// BenchmarkOpenFastFail measures how fast a request is answered once the
// upstream's breaker is open: through the per-host breaker alone, and
// through the full stack (pool: no upstream left; errorpage: problem+json).
//
//	go test -run '^$' -bench BenchmarkOpenFastFail -benchmem ./
func BenchmarkOpenFastFail(b *testing.B) {
	u, _ := url.Parse("http://upstream.test")
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	breakerOnly := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    hosts.Transport(&gateway.Transport{Base: refusing{}}),
		ErrorHandler: gateway.NewErrorHandler(quiet),
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	full, err := New(Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: refusing{}, Retry: retry.Options{Attempts: 1}})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		h    http.Handler
		open func() bool
	}{
		// Breakers are keyed by the canonical name, upstream.test:80.
		{"breaker", breakerOnly, func() bool { return !hosts.Allows(gateway.UpstreamName(u)) }},
		{"full", full.Handler, func() bool { return !full.Hosts.Allows(gateway.UpstreamName(u)) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			req := httptest.NewRequest("GET", "http://gateway.test/", nil)
			req.Header.Set("Accept", "application/json")
			for i := 0; i < 100 && !c.open(); i++ { // trip it
				clear(w.h)
				c.h.ServeHTTP(w, req)
			}
			if !c.open() {
				b.Fatal("breaker did not open")
			}
			b.ReportAllocs()
			b.ResetTimer()
			// While every host is out, a trial request passes through
			// now and then (the breaker's half-open probe, the pool's
			// bounded pass-through) and is refused: it is counted, not
			// an error. Every other answer is the fast 503.
			var fast, trials int
			for b.Loop() {
				clear(w.h)
				c.h.ServeHTTP(w, req)
				if w.status == http.StatusServiceUnavailable {
					fast++
				} else {
					trials++
				}
			}
			if fast == 0 || trials > fast/10 {
				b.Fatalf("%d fast 503s and %d trials: the breaker is not holding the host out", fast, trials)
			}
			b.ReportMetric(float64(trials), "trials")
		})
	}
}

// BenchmarkStackLoopback compares a bare ReverseProxy with the full stack
// over a real upstream on loopback, requests in parallel: the cost of the
// stack including what it makes net/http do (trace hooks, context lookups).
//
//	go test -run '^$' -bench BenchmarkStackLoopback -benchmem ./
func BenchmarkStackLoopback(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	tr := gateway.NewHTTPTransport()
	defer tr.CloseIdleConnections()
	bare := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, Transport: tr,
		BufferPool: gateway.NewBufferPool(0, 0), ErrorLog: log.New(io.Discard, "", 0),
	}
	full, err := New(Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: tr})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"bare", bare}, {"full", full.Handler}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{h: http.Header{}}
				req := httptest.NewRequest("GET", "http://gateway.test/path", nil)
				for pb.Next() {
					clear(w.h)
					c.h.ServeHTTP(w, req)
				}
			})
		})
	}
}
