package main

// The healthy scenarios: traffic that merely looks unusual, on upstreams
// that keep pace with it. A protection that acts on anything but evidence
// of the host's own queueing becomes the outage here; a bare proxy serves
// all of it.

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// healthySpec is one healthy scenario of open-loop GET streams: stream 0
// is /api (answered 200 after the upstream's delay), stream 1 a cheap
// route (/missing, answered 404 at once: a health checker's, or an
// attacker's).
type healthySpec struct {
	name      string
	upstreams int
	api, miss float64       // requests a second
	delay     time.Duration // of /api
	slower    time.Duration // if set, /api's delay from slowAt on
	slowAt    time.Duration
	length    time.Duration
	check     func(f healthyFigures) string
}

// healthyFigures: served is the share of requests answered with their
// route's own status (200, or 404 for the cheap route), in percent;
// apiServed the same for /api alone; apiShed counts /api requests answered
// 503 overloaded.
type healthyFigures struct {
	served, apiServed float64
	apiShed           int
}

var healthySpecs = []healthySpec{
	{name: "healthy-mix1", upstreams: 1, api: 250, miss: 2, delay: 10 * time.Millisecond, length: 10 * time.Second,
		check: func(f healthyFigures) string {
			return join(want(f.served >= 99.9, "≥ 99.9% served"), want(f.apiShed == 0, "0 overloaded"))
		}},
	{name: "healthy-mix3", upstreams: 3, api: 450, miss: 2, delay: 10 * time.Millisecond, length: 10 * time.Second,
		check: func(f healthyFigures) string { return want(f.served >= 99.9, "≥ 99.9% served") }},
	{name: "healthy-slower3", upstreams: 3, api: 120, delay: time.Millisecond, slower: 250 * time.Millisecond,
		slowAt: 3 * time.Second, length: 10 * time.Second,
		check: func(f healthyFigures) string { return want(f.served >= 99.9, "≥ 99.9% served") }},
	{name: "healthy-attacker", upstreams: 1, api: 250, miss: 8, delay: 10 * time.Millisecond, length: 12 * time.Second,
		check: func(f healthyFigures) string { return want(f.apiShed == 0, "0 healthy requests shed") }},
}

// healthyNames are the healthy scenarios (-scenario healthy runs them).
var healthyNames = map[string]bool{"healthy-quiet": true}

func init() {
	for _, sp := range healthySpecs {
		healthyNames[sp.name] = true
	}
}

// healthyJobs returns the healthy scenarios, each through the bare proxy
// and proxykit with its defaults.
func healthyJobs(seed uint64) []job {
	var out []job
	for _, sp := range healthySpecs {
		out = append(out, job{name: sp.name, length: sp.length,
			one: func(ctx context.Context, stack string) (loadgen.Row, error) { return runHealthy(ctx, stack, sp, seed) },
			check: func(kit, _ loadgen.Row) string {
				if kit.Figures == nil {
					return ""
				}
				return sp.check(healthyFigures{served: kit.Figures.ServedAfter, apiServed: kit.Figures.Others,
					apiShed: kit.Failures["overloaded"]})
			}})
	}
	return append(out, job{name: "healthy-quiet", length: quietOverload + quietGap + quietAfter,
		one: runQuiet,
		check: func(kit, _ loadgen.Row) string {
			if kit.Figures == nil {
				return ""
			}
			return want(kit.Figures.ServedAfter == 100, "100% served after the quiet")
		}})
}

// healthyUpstream answers /api after delay (read at each request) and
// anything else with a 404 at once.
func healthyUpstream(delay *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api" {
			http.NotFound(w, r)
			return
		}
		t := time.NewTimer(time.Duration(delay.Load()))
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		_, _ = io.WriteString(w, "ok\n")
	})
}

// serveStack serves a stack on a loopback listener and returns its base
// URL and a stop function.
func serveStack(stack string, targets []*url.URL) (string, func(), error) {
	var handler http.Handler
	var cleanup func()
	switch stack {
	case "bare":
		var rr atomic.Uint64
		tr := gateway.NewHTTPTransport()
		handler = &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(targets[rr.Add(1)%uint64(len(targets))]) },
			Transport:  tr,
			ErrorLog:   log.New(io.Discard, "", 0),
			BufferPool: gateway.NewBufferPool(0, 0),
		}
		cleanup = tr.CloseIdleConnections
	default:
		st, err := proxykit.New(proxykit.Config{Upstreams: targets, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return "", nil, err
		}
		handler, cleanup = st.Handler, st.Close
	}
	front, stop, err := serveOn(handler)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return front, func() { stop(); cleanup() }, nil
}

// runHealthy runs one healthy scenario through one stack.
func runHealthy(ctx context.Context, stack string, sp healthySpec, seed uint64) (loadgen.Row, error) {
	var delay atomic.Int64
	delay.Store(int64(sp.delay))
	var ledger loadgen.Ledger
	targets := make([]*url.URL, sp.upstreams)
	for i := range targets {
		up := gatewaytest.NewHealthy(healthyUpstream(&delay))
		up.OnRequest = ledger.Observe
		defer up.Close()
		targets[i], _ = url.Parse(up.URL)
	}
	base, stop, err := serveStack(stack, targets)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()
	if sp.slower > 0 {
		t := time.AfterFunc(sp.slowAt, func() { delay.Store(int64(sp.slower)) })
		defer t.Stop()
	}
	streams := []loadgen.Stream{{Path: "/api", Rate: sp.api}}
	if sp.miss > 0 {
		streams = append(streams, loadgen.Stream{Path: "/missing", Rate: sp.miss})
	}
	res := loadgen.RunOpen(ctx, base, loadgen.OpenOptions{Streams: streams, Duration: sp.length,
		Timeout: 10 * time.Second, Poisson: true, Seed: seed})
	fig := loadgen.NoFigures()
	fig.ServedAfter = healthyServed(res.Samples, nil)
	fig.Others = healthyServed(res.Samples, func(s loadgen.Sample) bool { return s.Stream == 0 })
	row := loadgen.Row{Scenario: sp.name, Stack: stack, Result: res.Result(), Upstream: ledger.Total(), Figures: fig}
	// The cheap route's 404 is its answer, not a failure.
	if n := row.Failures["404"]; n > 0 {
		row.Succeeded += n
		delete(row.Failures, "404")
	}
	return row, nil
}

// healthyServed is the share, in percent, of the samples keep accepts
// (nil: all) answered with their route's own status.
func healthyServed(samples []loadgen.Sample, keep func(loadgen.Sample) bool) float64 {
	var served, total int
	for _, s := range samples {
		if keep != nil && !keep(s) {
			continue
		}
		total++
		if (s.Stream == 0 && s.Status == 200) || (s.Stream == 1 && s.Status == 404 && s.Class == "404") {
			served++
		}
	}
	if total == 0 {
		return 0
	}
	return 100 * float64(served) / float64(total)
}

// The quiet scenario: an upstream of capacity 8 (8 workers × 10 ms) is
// overloaded (1,200 GET/s open-loop), then gets no request for quietGap,
// then a burst of 30 and 6 closed-loop clients: traffic below capacity.
const (
	quietOverload = 2 * time.Second
	quietGap      = 12 * time.Second
	quietAfter    = 3 * time.Second
)

// runQuiet runs the quiet scenario through one stack; its row counts the
// requests after the quiet.
func runQuiet(ctx context.Context, stack string) (loadgen.Row, error) {
	var ledger loadgen.Ledger
	up := gatewaytest.NewHealthy(capacityHandler(8, 10*time.Millisecond))
	up.OnRequest = ledger.Observe
	defer up.Close()
	target, _ := url.Parse(up.URL)
	base, stop, err := serveStack(stack, []*url.URL{target})
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()
	loadgen.RunOpen(ctx, base, loadgen.OpenOptions{Streams: []loadgen.Stream{{Path: "/", Rate: 1200}},
		Duration: quietOverload, Timeout: 2 * time.Second})
	select {
	case <-time.After(quietGap):
	case <-ctx.Done():
		return loadgen.Row{}, ctx.Err()
	}
	before := ledger.Total()
	// A burst of 30 at once (1 ms), then 6 clients one request after
	// another.
	burst := loadgen.RunOpen(ctx, base, loadgen.OpenOptions{Streams: []loadgen.Stream{{Path: "/", Rate: 30_000}},
		Duration: time.Millisecond, Timeout: 10 * time.Second}).Result()
	clients := loadgen.Run(ctx, base+"/", loadgen.Options{Concurrency: 6, Duration: quietAfter})
	res := mergeResults(burst, clients)
	fig := loadgen.NoFigures()
	fig.ServedAfter = res.SuccessRate()
	return loadgen.Row{Scenario: "healthy-quiet", Stack: stack, Result: res,
		Upstream: ledger.Total() - before, Figures: fig}, nil
}

// mergeResults adds b's counts and latencies to a's.
func mergeResults(a, b loadgen.Result) loadgen.Result {
	out := loadgen.Result{Requests: a.Requests + b.Requests, Succeeded: a.Succeeded + b.Succeeded,
		Elapsed: a.Elapsed + b.Elapsed, ByStatus: map[int]int{}, Failures: map[string]int{}}
	for _, r := range []loadgen.Result{a, b} {
		for k, v := range r.ByStatus {
			out.ByStatus[k] += v
		}
		for k, v := range r.Failures {
			out.Failures[k] += v
		}
		out.Latencies = append(out.Latencies, r.Latencies...)
	}
	slices.Sort(out.Latencies)
	return out
}
