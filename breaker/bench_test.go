package breaker_test

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"testing"

	"github.com/sony/gobreaker/v2"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// cannedTransport answers every request with status and no body, without
// a network: the breaker's own cost dominates.
type cannedTransport struct{ status int }

func (c cannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: c.status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: http.NoBody, Request: req}, nil
}

func benchHandler(b *testing.B, h http.Handler, req *http.Request) {
	w := &headerWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

func benchRoundTrip(b *testing.B, rt http.RoundTripper, req *http.Request) {
	b.ReportAllocs()
	for b.Loop() {
		res, _ := rt.RoundTrip(req)
		if res != nil {
			res.Body.Close()
		}
	}
}

func mustBreaker(b *testing.B, s breaker.Settings) *breaker.Breaker {
	s.Logger = quiet
	br, err := breaker.New(s)
	if err != nil {
		b.Fatal(err)
	}
	return br
}

func mustHosts(b *testing.B) *breaker.Hosts {
	h, err := breaker.PerHost(breaker.Settings{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkClosed is the cost of a closed breaker per request, against the
// bare handler or RoundTripper in the same run (targets: ≤ 1 alloc,
// ≤ 200 ns; the alloc is gobreaker's TwoStep Allow closure).
//
//	go test -run '^$' -bench 'Closed|Open' -benchmem ./breaker/
func BenchmarkClosed(b *testing.B) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	req := httptest.NewRequest("GET", "http://10.0.0.1:8080/path", nil)
	req.Header.Set("X-Tenant", "acme")
	b.Run("gobreaker_alone", func(b *testing.B) {
		// The floor: gobreaker's Allow and done, with two time.Now calls
		// and the closure Allow returns (the one allocation).
		cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
			Interval: breaker.DefaultInterval, BucketPeriod: breaker.DefaultBucketPeriod})
		b.ReportAllocs()
		for b.Loop() {
			done, _ := cb.Allow()
			done(nil)
		}
	})
	b.Run("handler/bare", func(b *testing.B) { benchHandler(b, ok, req) })
	b.Run("handler/breaker", func(b *testing.B) {
		benchHandler(b, mustBreaker(b, breaker.Settings{}).Wrap(ok), req)
	})
	b.Run("handler/keyed", func(b *testing.B) {
		benchHandler(b, mustBreaker(b, breaker.Settings{Key: byTenant}).Wrap(ok), req)
	})
	b.Run("handler/keyed_flood", func(b *testing.B) {
		// A new key on every request, at the cap: a window's ration of
		// evictions, then the overflow path.
		h := mustBreaker(b, breaker.Settings{Key: byTenant}).Wrap(ok)
		keys := make([][]string, 1<<16)
		for i := range keys {
			keys[i] = []string{"junk-" + strconv.Itoa(i)}
		}
		r := req.Clone(req.Context())
		w := &headerWriter{h: http.Header{}}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			r.Header["X-Tenant"] = keys[i%len(keys)]
			i++
			clear(w.h)
			h.ServeHTTP(w, r)
		}
	})

	out := httptest.NewRequest("GET", "http://10.0.0.1:8080/path", nil)
	out.RequestURI = ""
	b.Run("transport/bare", func(b *testing.B) { benchRoundTrip(b, cannedTransport{200}, out) })
	b.Run("transport/breaker", func(b *testing.B) {
		benchRoundTrip(b, mustHosts(b).Transport(cannedTransport{200}), out)
	})
	b.Run("transport/breaker_parallel", func(b *testing.B) {
		rt := mustHosts(b).Transport(cannedTransport{200})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			req := out.Clone(out.Context())
			for pb.Next() {
				res, _ := rt.RoundTrip(req)
				res.Body.Close()
			}
		})
	})
	b.Run("allows", func(b *testing.B) {
		hosts := mustHosts(b)
		res, _ := hosts.Transport(cannedTransport{200}).RoundTrip(out) // create the breaker
		res.Body.Close()
		b.ReportAllocs()
		for b.Loop() {
			if !hosts.Allows("10.0.0.1:8080") {
				b.Fatal("closed breaker must allow")
			}
		}
	})
}

// BenchmarkOpen is the fast-fail of an open breaker per request (target
// ≤ 20 µs): at each seat, and through a whole ReverseProxy, next to the
// proxy's happy path with an in-memory upstream.
func BenchmarkOpen(b *testing.B) {
	fail := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	req := httptest.NewRequest("GET", "http://10.0.0.1:8080/path", nil)
	trip := func(h http.Handler) http.Handler {
		for range 5 {
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
		return h
	}
	b.Run("handler", func(b *testing.B) {
		benchHandler(b, trip(mustBreaker(b, breaker.Settings{}).Wrap(fail)), req)
	})

	out := httptest.NewRequest("GET", "http://10.0.0.1:8080/path", nil)
	out.RequestURI = ""
	openRT := func(b *testing.B) http.RoundTripper {
		rt := mustHosts(b).Transport(cannedTransport{502})
		for range 5 {
			res, _ := rt.RoundTrip(out)
			res.Body.Close()
		}
		return rt
	}
	b.Run("transport", func(b *testing.B) { benchRoundTrip(b, openRT(b), out) })

	u, _ := url.Parse("http://10.0.0.1:8080")
	quietLog := log.New(io.Discard, "", 0)
	proxy := func(rewrite func(*httputil.ProxyRequest), rt http.RoundTripper) http.Handler {
		return &httputil.ReverseProxy{Rewrite: rewrite, Transport: rt,
			ErrorHandler: gateway.NewErrorHandler(quiet), ErrorLog: quietLog,
			BufferPool: gateway.NewBufferPool(0, 0)}
	}
	b.Run("proxy/bare_ok", func(b *testing.B) {
		benchHandler(b, proxy(func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, cannedTransport{200}), req)
	})
	b.Run("proxy/open", func(b *testing.B) {
		benchHandler(b, proxy(func(pr *httputil.ProxyRequest) { pr.SetURL(u) }, openRT(b)), req)
	})
	b.Run("proxy/pool_no_upstream", func(b *testing.B) {
		hosts := mustHosts(b)
		p, err := pool.New(u)
		if err != nil {
			b.Fatal(err)
		}
		p.Health, p.Logger = hosts, quiet
		rt := p.Transport(hosts.Transport(cannedTransport{502}))
		h := proxy(p.Rewrite, rt)
		for range 5 {
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
		benchHandler(b, h, req)
	})
}
