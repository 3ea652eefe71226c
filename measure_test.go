package proxykit

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

// TestMeasureStall measures the stall shapes: three healthy upstreams, each
// of which stalls a random share of its responses (2% by 300 ms; 5% by
// 100 ms, where a delay learned from the stalls themselves would stop
// hedging), and 8 clients sending GETs; for a bare ReverseProxy (round
// robin), the stack without hedging and the stack with it (its default),
// then the same without stalls (the happy path). Each shape gets fresh
// upstreams and gateways, warmed up under that shape (connections, the
// adaptive hedge delay), as a service whose hosts always stall would be.
// A last row is a fresh gateway measured from its first request, warm-up
// included. It prints p50, p99, p99.9, upstream requests per client request
// and throughput. Without hedging the 8 clients spend most of their time
// waiting out stalls, so few requests are in flight at once: the p50 of
// the fast ones is lower, and requests/s shows why. Not a check: it runs
// only when asked, and takes about a minute.
//
//	PROXYKIT_MEASURE=1 go test -run TestMeasureStall -v -count=1 .
//
// PROXYKIT_MEASURE_N sets the requests per row (default 10000).
func TestMeasureStall(t *testing.T) {
	if os.Getenv("PROXYKIT_MEASURE") == "" {
		t.Skip("set PROXYKIT_MEASURE=1 to measure")
	}
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("PROXYKIT_MEASURE_N")); err == nil && v > 0 {
		n = v
	}
	out := "\n| scenario | gateway | p50 | p99 | p99.9 | upstream requests per request | requests/s |\n|---|---|---|---|---|---|---|\n"
	for _, sc := range []struct {
		name  string
		ratio float64
		delay time.Duration
	}{{"2% stalls of 300 ms", 0.02, 300 * time.Millisecond}, {"5% stalls of 100 ms", 0.05, 100 * time.Millisecond}, {"no stalls", 0, 0}} {
		out += measureStallShape(t, sc.name, sc.ratio, sc.delay, n)
	}
	t.Log(out)
}

// measureStallShape measures one stall shape on fresh upstreams and
// gateways, and returns its table rows.
func measureStallShape(t *testing.T, name string, ratio float64, delay time.Duration, n int) string {
	const clients = 8
	var ups []*gatewaytest.Server
	var targets []*url.URL
	for range 3 {
		s := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "ok\n")
		}))
		s.Delay = delay
		defer s.Close()
		require.NoError(t, s.SetFlaky(gatewaytest.SlowHeaders, ratio))
		ups = append(ups, s)
		targets = append(targets, mustParse(s.URL))
	}
	upstreamRequests := func() (n int64) {
		for _, s := range ups {
			n += s.Requests()
		}
		return n
	}

	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	var rr atomic.Uint64
	bare := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(targets[(rr.Add(1)-1)%uint64(len(targets))])
		},
		Transport: base,
	}
	off, err := New(Config{Upstreams: targets, Logger: quiet, Retry: retry.Options{Hedges: -1}})
	require.NoError(t, err)
	defer off.Close()
	on, err := New(Config{Upstreams: targets, Logger: quiet})
	require.NoError(t, err)
	defer on.Close()
	// cold is measured from its first request: its warm-up (no hedge
	// until the delay is known) is in its row.
	cold, err := New(Config{Upstreams: targets, Logger: quiet})
	require.NoError(t, err)
	defer cold.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * clients}}
	defer client.CloseIdleConnections()
	run := func(h http.Handler, requests int) (lat []time.Duration, perRequest, rps float64) {
		front := httptest.NewServer(h)
		defer front.Close()
		before := upstreamRequests()
		began := time.Now()
		lat = make([]time.Duration, 0, requests)
		var mu sync.Mutex
		var next atomic.Int64
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := make([]time.Duration, 0, requests/clients+1)
				for next.Add(1) <= int64(requests) {
					start := time.Now()
					res, err := client.Get(front.URL + "/x")
					if err != nil {
						t.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						t.Errorf("status %d", res.StatusCode)
					}
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return lat, float64(upstreamRequests()-before) / float64(requests), float64(requests) / time.Since(began).Seconds()
	}
	q := func(lat []time.Duration, p float64) string {
		slices.Sort(lat)
		return fmt.Sprintf("%.2f ms", float64(lat[min(len(lat)-1, int(p*float64(len(lat))))])/1e6)
	}

	// Warm up every gateway under the shape: connections, and the
	// adaptive hedge delay, which needs 50 samples (every successful
	// attempt while warming up) and is recomputed every 10 ms until
	// known, by a request.
	for _, h := range []http.Handler{bare, off, on} {
		run(h, 1000)
	}
	for i := 0; i < 20 && on.Retry.Stats().HedgeDelay == 0; i++ {
		time.Sleep(100 * time.Millisecond)
		run(on, 200)
	}
	require.NotZero(t, on.Retry.Stats().HedgeDelay, "warmed up")

	var out string
	for _, r := range []struct {
		name string
		h    http.Handler
	}{{"bare httputil.ReverseProxy", bare}, {"proxykit, hedging off", off}, {"proxykit, hedging on", on},
		{"proxykit, hedging on, from cold (warm-up included)", cold}} {
		before := on.Retry.Stats()
		lat, per, rps := run(r.h, n)
		out += fmt.Sprintf("| %s | %s | %s | %s | %s | %.3f | %.0f |\n", name, r.name, q(lat, 0.5), q(lat, 0.99), q(lat, 0.999), per, rps)
		if r.h == http.Handler(on) {
			after := on.Retry.Stats()
			out += fmt.Sprintf("|  | (hedges sent %d, won %d, denied %d; delay %v) | | | | | |\n",
				after.Hedges-before.Hedges, after.HedgesWon-before.HedgesWon, after.HedgesDenied-before.HedgesDenied, after.HedgeDelay)
		}
	}
	return out
}
