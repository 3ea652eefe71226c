package telemetry

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit"
)

// TestCardinalityBounded: 10,000 requests with distinct paths, queries,
// Host headers and made-up methods leave the series count where a handful
// of requests put it: no attribute value comes from the request beyond the
// method's closed list, and upstreams the routing takes from requests are
// capped at MaxUpstreams.
func TestCardinalityBounded(t *testing.T) {
	const n = 10_000
	t.Run("pool", func(t *testing.T) {
		r := newRig(t)
		st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, "http://upstream.test")}, Transport: inMemory})
		series := drive(t, r, st, n)
		// server: GET, POST, _OTHER; client: the same three.
		assert.Equal(t, 3, series["http.server.request.duration"])
		assert.Equal(t, 3, series["http.client.request.duration"])
	})
	t.Run("routing_by_host", func(t *testing.T) {
		// No pool: the proxy routes to whatever host the client names, the
		// worst case for server.address.
		r := newRig(t, func(o *Options, _ *rig) { o.MaxUpstreams = 8 })
		st := r.stack(t, proxykit.Config{
			Transport: inMemory,
			Proxy: &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(&url.URL{Scheme: "http", Host: pr.In.Host})
			}},
		})
		series := drive(t, r, st, n)
		assert.Equal(t, 3, series["http.server.request.duration"])
		assert.LessOrEqual(t, series["http.client.request.duration"], 3*(8+1), "8 upstreams and _OTHER, by method")
		addrs := map[string]bool{}
		for set := range points(t, r.collect(t), "http.client.request.duration") {
			for _, kv := range strings.Split(set, ",") {
				if strings.HasPrefix(kv, "server.address=") {
					addrs[kv] = true
				}
			}
		}
		assert.Len(t, addrs, 8+1, "8 upstreams, then _OTHER")
		assert.True(t, addrs["server.address=_OTHER"])
		assert.LessOrEqual(t, len(mapOrNil(r.tel.ups.byURL[0].Load())), 2*8, "the URL cache is bounded too")
	})
}

// drive sends n requests, each with its own path, query and Host, a third
// of them with a made-up method, and returns the series per metric after
// checking that no attribute value came from a request.
func drive(t *testing.T, r *rig, st *proxykit.Stack, n int) map[string]int {
	t.Helper()
	w := &discardWriter{h: http.Header{}}
	for i := range n {
		method := []string{"GET", "POST", fmt.Sprintf("M%dX", i)}[i%3]
		req := httptest.NewRequest(method, fmt.Sprintf("http://h%d.test/p/%d?q=%d", i, i, i), nil)
		req.Header.Set("X-Request-Id", fmt.Sprintf("id-%d", i))
		clear(w.h)
		w.status = 0
		st.ServeHTTP(w, req)
		require.Contains(t, []int{0, 200}, w.status)
	}
	rm := r.collect(t)
	series := map[string]int{}
	for name := range instruments(rm) {
		for set := range points(t, rm, name) {
			series[name]++
			for _, kv := range strings.Split(set, ",") {
				assert.NotRegexp(t, `/p/|q=|id-|M\d+X`, kv, "%s: a value from a request: %s", name, kv)
			}
		}
	}
	t.Logf("series after %d requests: %v", n, series)
	return series
}
