package admission_test

import (
	"net/http"
	"testing"

	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// BenchmarkTransport measures the limiter's own cost per request on a
// healthy host (no limit enforced): a RoundTrip through Limiter.Transport
// over an in-memory upstream, beside the same RoundTrip without it, in one
// run.
//
//	go test -run '^$' -bench BenchmarkTransport -benchmem ./admission
func BenchmarkTransport(b *testing.B) {
	lim, err := admission.New(admission.Settings{Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	up := gatewaytest.InMemory{Body: "ok\n"}
	for _, c := range []struct {
		name string
		rt   http.RoundTripper
	}{{"bare", up}, {"limiter", lim.Transport(up)}} {
		b.Run(c.name, func(b *testing.B) {
			req, _ := http.NewRequest("GET", "http://upstream.test/", nil)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := c.rt.RoundTrip(req)
					if err != nil {
						b.Fatal(err)
					}
					res.Body.Close()
				}
			})
		})
	}
}
