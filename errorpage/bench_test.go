package errorpage_test

import (
	"net/http"
	"testing"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
)

// sink is a ResponseWriter that keeps nothing but the body size.
type sink struct {
	header http.Header
	n      int
}

func (s *sink) Header() http.Header         { return s.header }
func (s *sink) WriteHeader(int)             {}
func (s *sink) Write(p []byte) (int, error) { s.n += len(p); return len(p), nil }

// BenchmarkRender renders one failure in each format, in process: what a
// failed request costs on top of the proxy. It reports the body size.
//
//	go test -run '^$' -bench Render -benchmem ./errorpage/
func BenchmarkRender(b *testing.B) {
	h := newHandler(b, errorpage.Options{Brand: demoBrand()})
	f := failure(gateway.ClassRefused)
	for _, c := range []struct{ name, accept string }{
		{"html", acceptChrome}, {"json", acceptAxios}, {"text", "text/plain"},
	} {
		b.Run(c.name, func(b *testing.B) {
			r, _ := http.NewRequest("GET", "http://example.com/orders/42", nil)
			r.Header.Set("Accept", c.accept)
			r.Header.Set("X-Request-ID", "01JQ5Z7W3X8K2M9N4P6R0T1V2Y")
			w := &sink{header: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.header)
				w.n = 0
				h.Write(w, r, f)
			}
			b.ReportMetric(float64(w.n), "bytes/page")
		})
	}
}

var okBody = []byte("ok")

// BenchmarkWrapPass is the cost of errorpage on a request that succeeds.
func BenchmarkWrapPass(b *testing.B) {
	h := newHandler(b, errorpage.Options{})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(okBody)
	})
	wrapped := h.Wrap(ok)
	r, _ := http.NewRequest("GET", "http://example.com/", nil)
	w := &sink{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		wrapped.ServeHTTP(w, r)
	}
}

func BenchmarkNegotiate(b *testing.B) {
	h := http.Header{"Accept": {acceptChrome}}
	b.ReportAllocs()
	for b.Loop() {
		errorpage.Negotiate(h)
	}
}
