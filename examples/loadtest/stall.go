package main

// The stall scenarios: three healthy upstreams, each of which
// stalls a random share of its responses (a GC pause, a cold cache, a slow
// disk: "The Tail at Scale"). Nothing fails, a response is just late, so
// retries cannot help and neither can a balancer (every host stalls at
// random); a hedged request can. The happy-path pair (no stalls) shows
// what hedging costs when nothing is late.

import (
	"context"
	"net/url"
	"time"

	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

// stallSpec shapes the stall scenarios.
type stallSpec struct {
	clients  int           // closed-loop clients, GET only
	requests int           // measured requests per run
	warmup   int           // requests before them, not counted
	ratio    float64       // share of each upstream's responses that stall (stall)
	delay    time.Duration // how long a stall lasts
}

// defaultStall: 8 clients, 2% of responses stalled by 300 ms;
// 10,000 measured requests per run (ten samples beyond the p99.9) after a
// warm-up of 1,000 (the adaptive hedge delay needs about 400).
var defaultStall = stallSpec{clients: 8, requests: 10000, warmup: 1000, ratio: 0.02, delay: 300 * time.Millisecond}

// stallStacks: the bare proxy, proxykit with hedging off (the retry
// layer's Hedges: -1) and proxykit with its defaults (hedging on).
// nostallStacks: the happy-path pair, hedging off and on.
var (
	stallStacks   = []string{"bare", "kit-nohedge", "proxykit"}
	nostallStacks = []string{"kit-nohedge", "proxykit"}
)

// stall5 is the shape a delay learned from the stalls themselves would
// stop hedging: 5% of responses stalled by 100 ms.
var stall5 = struct {
	ratio float64
	delay time.Duration
}{0.05, 100 * time.Millisecond}

// stallJobs returns the three jobs: stall (ratio of the responses stalled
// by delay), stall5 (5% by 100 ms) and nostall (none).
func stallJobs(sp stallSpec) []job {
	return []job{
		{name: "stall", stacks: stallStacks, count: sp.warmup + sp.requests,
			one: func(ctx context.Context, stack string) (loadgen.Row, error) {
				return runStall(ctx, "stall", stack, sp, sp.ratio, sp.delay)
			}, check: func(k, _ loadgen.Row) string { return checkStall(k) }},
		{name: "stall5", stacks: stallStacks, count: sp.warmup + sp.requests,
			one: func(ctx context.Context, stack string) (loadgen.Row, error) {
				return runStall(ctx, "stall5", stack, sp, stall5.ratio, stall5.delay)
			}, check: func(k, _ loadgen.Row) string { return checkStall5(k) }},
		{name: "nostall", stacks: nostallStacks, count: sp.warmup + sp.requests,
			one: func(ctx context.Context, stack string) (loadgen.Row, error) {
				return runStall(ctx, "nostall", stack, sp, 0, sp.delay)
			}, check: func(k, _ loadgen.Row) string { return checkNoStall(k) }},
	}
}

// checkStall holds the stall scenario's targets.
func checkStall(k loadgen.Row) string {
	if k.Tail == nil {
		return ""
	}
	return join(want(k.Percentile(99) <= 10*time.Millisecond, "p99 ≤ 10 ms"),
		want(k.Percentile(99.9) <= 50*time.Millisecond, "p99.9 ≤ 50 ms"),
		want(k.Amplification() <= 1.10, "≤ 1.10 upstream requests per request"),
		want(k.SuccessRate() == 100, "100% success"))
}

// checkStall5 holds the target for 5% of responses stalled by 100 ms.
func checkStall5(k loadgen.Row) string {
	if k.Tail == nil {
		return ""
	}
	return join(want(k.Percentile(99) <= 20*time.Millisecond, "p99 ≤ 20 ms"),
		want(k.Amplification() <= 1.10, "≤ 1.10 upstream requests per request"),
		want(k.SuccessRate() == 100, "100% success"))
}

// checkNoStall holds the happy-path target of the nostall scenario.
func checkNoStall(k loadgen.Row) string {
	if k.Tail == nil {
		return ""
	}
	return want(k.Amplification() <= 1.02, "≤ 1.02 upstream requests per request without stalls")
}

// runStall runs one stall scenario through one stack on three fresh
// upstreams, each stalling ratio of its responses by delay: a warm-up
// (connections, the adaptive hedge delay), then sp.requests GETs from
// sp.clients clients, one after another; the row counts only those.
func runStall(ctx context.Context, name, stack string, sp stallSpec, ratio float64, delay time.Duration) (loadgen.Row, error) {
	var ledger loadgen.Ledger
	targets := make([]*url.URL, 3)
	for i := range targets {
		s := gatewaytest.NewHealthy(nil)
		s.OnRequest = ledger.Observe
		s.Delay = delay
		defer s.Close()
		if err := s.SetFlaky(gatewaytest.SlowHeaders, ratio); err != nil {
			return loadgen.Row{}, err
		}
		targets[i], _ = url.Parse(s.URL)
	}
	handler, cleanup, kit, err := buildStack(stack, targets, 0)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer cleanup()
	served, stop, err := serveOn(handler)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()
	front := served + "/"
	load := func(n int) loadgen.Result {
		return loadgen.Run(ctx, front, loadgen.Options{Concurrency: sp.clients, MaxRequests: n,
			Duration: 10 * time.Minute, Timeout: 10 * time.Second})
	}

	// Warm up. The adaptive hedge delay needs 50 samples (every
	// successful attempt while warming up) and is recomputed every 10 ms
	// until known, by a request: with hedging on, go on until it is there.
	load(sp.warmup)
	hedging := stack == "proxykit"
	for i := 0; hedging && i < 20 && kit.Retry.Stats().HedgeDelay == 0 && ctx.Err() == nil; i++ {
		time.Sleep(100 * time.Millisecond)
		load(sp.clients * 25)
	}

	base := ledger.Total()
	var s0 retry.Stats
	if kit != nil {
		s0 = kit.Retry.Stats()
	}
	res := load(sp.requests)
	fig := &loadgen.TailFigures{Hedging: hedging}
	if kit != nil {
		s := kit.Retry.Stats()
		fig.Hedges, fig.HedgesWon, fig.HedgesDenied = s.Hedges-s0.Hedges, s.HedgesWon-s0.HedgesWon, s.HedgesDenied-s0.HedgesDenied
		fig.HedgeDelay = s.HedgeDelay
	}
	if res.Elapsed > 0 {
		fig.Throughput = float64(res.Requests) / res.Elapsed.Seconds()
	}
	return loadgen.Row{Scenario: name, Stack: stack, Result: res, Upstream: ledger.Total() - base, Tail: fig}, nil
}
