package proxykit

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// BenchmarkStackLimiter measures what the per-host limiter costs the
// recommended stack on the happy path (a healthy upstream: no limit is
// enforced), in one run: the full stack as New builds it, and the same
// stack with Config.NoLimiter, against an in-memory upstream.
//
//	go test -run '^$' -bench BenchmarkStackLimiter -benchmem -count 6 ./
func BenchmarkStackLimiter(b *testing.B) {
	u, _ := url.Parse("http://upstream.test")
	up := gatewaytest.InMemory{Body: "ok\n"}
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"full", Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: up}},
		{"full-nolimiter", Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: up, NoLimiter: true}},
	} {
		st, err := New(c.cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			req := httptest.NewRequest("GET", "http://gateway.test/path", nil)
			req.Header.Set("X-Request-Id", "bench-request-1")
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				st.Handler.ServeHTTP(w, req)
				if w.status != 0 && w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{h: http.Header{}}
				req := httptest.NewRequest("GET", "http://gateway.test/path", nil)
				req.Header.Set("X-Request-Id", "bench-request-1")
				for pb.Next() {
					clear(w.h)
					st.Handler.ServeHTTP(w, req)
				}
			})
		})
		st.Close()
	}
}
