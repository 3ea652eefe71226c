package gateway_test

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// discardWriter is a reusable ResponseWriter, so that the recorder's own
// allocations do not blur the comparison.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

func benchProxy(b *testing.B, h http.Handler) {
	req := httptest.NewRequest("GET", "http://gateway.test/path", nil)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

// BenchmarkProxy compares, in one run, a bare ReverseProxy with the same
// proxy using gateway.Transport and gateway.NewErrorHandler(nil), on the happy
// path. The difference is the instrumentation's cost per request.
//
//	go test -run '^$' -bench BenchmarkProxy -benchmem ./gateway/
func BenchmarkProxy(b *testing.B) {
	u, _ := url.Parse("http://upstream.test")
	up := gatewaytest.InMemory{Body: "ok\n"}
	quiet := log.New(io.Discard, "", 0)
	// Both proxies share a BufferPool, so that ReverseProxy's 32 KiB copy
	// buffer per request does not drown the difference in GC noise.
	pool := gateway.NewBufferPool(0, 0)
	b.Run("bare", func(b *testing.B) {
		benchProxy(b, &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
			Transport:  up,
			ErrorLog:   quiet,
			BufferPool: pool,
		})
	})
	b.Run("instrumented", func(b *testing.B) {
		benchProxy(b, &httputil.ReverseProxy{
			Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
			Transport:    &gateway.Transport{Base: up},
			ErrorHandler: gateway.NewErrorHandler(nil),
			ErrorLog:     quiet,
			BufferPool:   pool,
		})
	})
}

// BenchmarkProxyLoopback is BenchmarkProxy against a real upstream on
// loopback through gateway.NewHTTPTransport: closer to production, noisier.
//
//	go test -run '^$' -bench BenchmarkProxyLoopback -benchmem ./gateway/
func BenchmarkProxyLoopback(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	base := gateway.NewHTTPTransport()
	base.TLSClientConfig = &tls.Config{}
	defer base.CloseIdleConnections()
	b.Run("bare", func(b *testing.B) {
		benchProxy(b, &httputil.ReverseProxy{
			Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
			Transport: base,
		})
	})
	b.Run("instrumented", func(b *testing.B) {
		benchProxy(b, &httputil.ReverseProxy{
			Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
			Transport:    &gateway.Transport{Base: base},
			ErrorHandler: gateway.NewErrorHandler(nil),
		})
	})
}
