package main

// The overload scenario: one upstream of fixed capacity,
// offered more than it can serve, open-loop. A gateway that passes the
// whole excess into the upstream's queue lets latency climb to the
// timeout for everyone; one that holds the host to what it can serve
// keeps goodput near capacity and answers the excess at once.

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

// overloadSpec shapes the overload scenario.
type overloadSpec struct {
	rate     float64       // offered GET/s, open-loop, evenly spaced
	length   time.Duration // of the schedule
	workers  int           // the upstream's capacity: workers × service
	service  time.Duration
	tryLimit time.Duration // per-try timeout (bare: response-header timeout)
	within   time.Duration // a 200 counts as goodput within this
}

// defaultOverload: 8 workers × 10 ms = 800 requests/s,
// offered 1,200 GET/s for 4 s, per-try timeout 1 s, goodput = 200 within
// 250 ms.
var defaultOverload = overloadSpec{rate: 1200, length: 4 * time.Second, workers: 8,
	service: 10 * time.Millisecond, tryLimit: time.Second, within: 250 * time.Millisecond}

// overloadStacks: the bare proxy; proxykit with its defaults; and proxykit
// with retries off, which answers a shed request at once where the
// default retry layer today retries it onto the same (only) host after a
// backoff — what retry does with class overloaded is its own decision.
var overloadStacks = []string{"bare", "proxykit", "kit-noretry"}

// capacityHandler serves workers requests at a time, each for service;
// the rest wait in a FIFO queue until a worker is free or their caller
// gives up (the connection closes).
func capacityHandler(workers int, service time.Duration) http.Handler {
	sem := make(chan struct{}, workers)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		t := time.NewTimer(service)
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		<-sem
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
}

// runOverload runs the scenario through one stack.
func runOverload(ctx context.Context, stack string, sp overloadSpec) (loadgen.Row, error) {
	var ledger loadgen.Ledger
	up := gatewaytest.NewHealthy(capacityHandler(sp.workers, sp.service))
	up.OnRequest = ledger.Observe
	defer up.Close()
	target, _ := url.Parse(up.URL)

	handler, cleanup, err := buildOverload(stack, target, sp.tryLimit)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer cleanup()
	front, stop, err := serveOn(handler)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()

	res := loadgen.RunOpen(ctx, front, loadgen.OpenOptions{
		Streams:  []loadgen.Stream{{Path: "/", Rate: sp.rate}},
		Duration: sp.length,
		Timeout:  sp.tryLimit + time.Second,
	})
	return loadgen.Row{Scenario: "overload", Stack: stack, Result: res.Result(),
		Upstream: ledger.Total(), Overload: res.Overload(sp.within, sp.length)}, nil
}

// buildOverload is build for one target, with the per-try timeout on
// every stack: the bare proxy's transport stops waiting for a response
// header after it, as proxykit's retry layer does.
func buildOverload(stack string, target *url.URL, tryLimit time.Duration) (http.Handler, func(), error) {
	switch stack {
	case "bare":
		tr := gateway.NewHTTPTransport()
		tr.ResponseHeaderTimeout = tryLimit
		p := &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
			Transport:  tr,
			ErrorLog:   log.New(io.Discard, "", 0),
			BufferPool: gateway.NewBufferPool(0, 0),
		}
		return p, tr.CloseIdleConnections, nil
	case "proxykit", "kit-noretry":
		ro := retry.Options{PerTryTimeout: tryLimit}
		if stack == "kit-noretry" {
			ro.Attempts = 1
		}
		st, err := proxykit.New(proxykit.Config{
			Upstreams: []*url.URL{target},
			Retry:     ro,
			Logger:    slog.New(slog.DiscardHandler),
		})
		if err != nil {
			return nil, nil, err
		}
		return st.Handler, st.Close, nil
	}
	return nil, nil, fmt.Errorf("unknown stack %q", stack)
}

// checkOverload holds the overload scenario's targets.
func checkOverload(k loadgen.Row) string {
	f := k.Overload
	if f == nil {
		return ""
	}
	return join(want(f.Goodput >= 640, "goodput ≥ 640/s"),
		want(f.ServedP99 <= 100*time.Millisecond, "p99 of the 200s ≤ 100 ms"),
		want(f.Rest == 0 || f.RestP99 <= 5*time.Millisecond, "the excess answered within 5 ms (p99)"),
		want(f.RestRetryAfter == f.Rest, "the excess answered 503 with Retry-After"))
}
