package main

// The restart scenarios: what host health costs or saves when an
// upstream restarts, stays down, or serves one failing route. They run an
// open-loop load (requests on a fixed schedule, whatever the answers), so
// that a stack that fails fast is not sent fewer requests than one that
// fails slowly, and they change faults on the load's own clock.

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// timeline sets the phases of the restart scenarios.
type timeline struct {
	// rate is the total request rate, per second; requests arrive as a
	// Poisson process of that rate, drawn from seed (the same schedule for
	// every stack).
	rate float64
	seed uint64
	// before is the steady load before the fault.
	before time.Duration
	// outage is how long the upstreams refuse connections (restart1,
	// restart3).
	outage time.Duration
	// settle is how long the dead host is out before its connections are
	// counted (dead1): the accounts' "once it has been out for 2 s".
	settle time.Duration
	// after is the watch window: after the return (restart1, restart3),
	// the counting window (dead1), the whole run (badroute).
	after time.Duration
}

// defaultTimeline: ~400 GET/s, 0.5 s of steady load, a 1 s
// outage, 5 s watched after the return (6.5 s in all).
var defaultTimeline = timeline{rate: 400, seed: 1, before: 500 * time.Millisecond, outage: time.Second,
	settle: 2 * time.Second, after: 5 * time.Second}

// restartScenario is one restart scenario, run through one stack at a
// time.
type restartScenario struct {
	name  string
	run   func(ctx context.Context, stack string, tl timeline) (loadgen.Row, error)
	check func(kit loadgen.Row) string
	// length is how long one run takes.
	length func(tl timeline) time.Duration
}

var restartScenarios = []restartScenario{
	{name: "restart1", run: func(ctx context.Context, stack string, tl timeline) (loadgen.Row, error) {
		return runRestart(ctx, "restart1", stack, 1, tl)
	}, check: checkRestart, length: restartLength},
	{name: "restart3", run: func(ctx context.Context, stack string, tl timeline) (loadgen.Row, error) {
		return runRestart(ctx, "restart3", stack, 3, tl)
	}, check: checkRestart, length: restartLength},
	{name: "dead1", run: runDead, check: func(k loadgen.Row) string {
		return join(want(k.Figures.ProbeRate <= 2, "≤ 2 connections/s at a host out for 2 s"),
			want(k.SuccessRate() == 100, "100% success with 1 of 3 down"))
	}, length: func(tl timeline) time.Duration { return tl.before + tl.settle + tl.after }},
	{name: "badroute", run: runBadRoute, check: func(k loadgen.Row) string {
		return want(k.Figures.Others >= 99, "≥ 99% of the other routes served while one route fails")
	}, length: func(tl timeline) time.Duration { return tl.after }},
}

func restartLength(tl timeline) time.Duration { return tl.before + tl.outage + tl.after }

// checkRestart holds the recovery targets: the first success within
// 0.25 s of the return, and ≥ 99% served in the window after it.
func checkRestart(k loadgen.Row) string {
	return join(want(k.Figures.FirstOK <= 250, "first 200 ≤ 250 ms after the return"),
		want(k.Figures.ServedAfter >= 99, "≥ 99% served after the return"))
}

func join(misses ...string) string {
	out := ""
	for _, m := range misses {
		if m == "" {
			continue
		}
		if out != "" {
			m = "; " + m[len("missed: "):]
		}
		out += m
	}
	return out
}

// rig is n fresh upstreams with a stack in front, on loopback.
type rig struct {
	ups    []*gatewaytest.Server
	ledger loadgen.Ledger
	url    string // the front, without a trailing slash
	stop   []func()
}

// newRig starts n upstreams serving h (nil: gatewaytest's default) and the
// stack in front of them.
func newRig(stack string, n int, h http.Handler) (*rig, error) {
	r := &rig{}
	targets := make([]*url.URL, n)
	for i := range n {
		s := gatewaytest.NewHealthy(h)
		s.OnRequest = r.ledger.Observe
		r.ups = append(r.ups, s)
		r.stop = append(r.stop, s.Close)
		targets[i], _ = url.Parse(s.URL)
	}
	handler, cleanup, err := build(stack, targets, 0)
	if err != nil {
		r.close()
		return nil, err
	}
	r.stop = append(r.stop, cleanup)
	front, stop, err := serveOn(handler)
	if err != nil {
		r.close()
		return nil, err
	}
	r.stop = append(r.stop, stop)
	r.url = front
	return r, nil
}

// close stops everything, the front first.
func (r *rig) close() {
	for i := len(r.stop) - 1; i >= 0; i-- {
		r.stop[i]()
	}
}

// row is the table row of a run on r.
func (r *rig) row(scenario, stack string, res loadgen.OpenResult, fig *loadgen.Figures) loadgen.Row {
	return loadgen.Row{Scenario: scenario, Stack: stack, Result: res.Result(),
		Upstream: r.ledger.Total(), Duplicates: r.ledger.Duplicates(), Figures: fig}
}

// sleepUntil waits until t or ctx ends, and reports whether t came.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// setAll switches every server to f.
func setAll(ups []*gatewaytest.Server, f gatewaytest.Fault) error {
	for _, s := range ups {
		if err := s.SetFault(f); err != nil {
			return err
		}
	}
	return nil
}

// runRestart: n upstreams under steady load; after tl.before every one of
// them refuses connections (its listener closed, its port kept) for
// tl.outage, then listens again on the same port. Figures: the first
// success after the return, and the share served in tl.after after it.
func runRestart(ctx context.Context, name, stack string, n int, tl timeline) (loadgen.Row, error) {
	r, err := newRig(stack, n, nil)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer r.close()
	start := time.Now().Add(10 * time.Millisecond)
	type event struct {
		up  time.Time // when the upstreams listened again
		err error
	}
	done := make(chan event, 1)
	go func() {
		var ev event
		defer func() { done <- ev }()
		if !sleepUntil(ctx, start.Add(tl.before)) {
			return
		}
		if ev.err = setAll(r.ups, gatewaytest.Refused); ev.err != nil {
			return
		}
		down := time.Now()
		if !sleepUntil(ctx, down.Add(tl.outage)) {
			return
		}
		ev.err = setAll(r.ups, gatewaytest.Healthy)
		ev.up = time.Now()
	}()
	res := loadgen.RunOpen(ctx, r.url, loadgen.OpenOptions{
		Streams:  []loadgen.Stream{{Path: "/", Rate: tl.rate}},
		Duration: restartLength(tl),
		Start:    start,
		Poisson:  true, Seed: tl.seed,
	})
	ev := <-done
	if ev.err != nil {
		return loadgen.Row{}, ev.err
	}
	fig := loadgen.NoFigures()
	if !ev.up.IsZero() {
		fig.FirstOK = math.Inf(1)
		if d, ok := res.FirstSuccessAfter(ev.up); ok && d <= tl.after {
			fig.FirstOK = float64(d) / float64(time.Millisecond)
		}
		fig.ServedAfter = res.ServedRate(ev.up, ev.up.Add(tl.after), nil)
	}
	return r.row(name, stack, res, fig), nil
}

// runDead: three upstreams under steady load; after tl.before the third
// goes down for good. A host that refuses connections accepts none, so
// there would be nothing to count at it: this one drops its connections
// (its listener closed, so that the stack's idle connections to it end),
// then resets every connection it accepts. Figure: the connections it
// accepted per second from tl.settle after it went down, over tl.after.
func runDead(ctx context.Context, stack string, tl timeline) (loadgen.Row, error) {
	r, err := newRig(stack, 3, nil)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer r.close()
	dead := r.ups[2]
	start := time.Now().Add(10 * time.Millisecond)
	type event struct {
		rate float64
		err  error
	}
	done := make(chan event, 1)
	go func() {
		ev := event{rate: math.NaN()}
		defer func() { done <- ev }()
		if !sleepUntil(ctx, start.Add(tl.before)) {
			return
		}
		if ev.err = dead.SetFault(gatewaytest.Refused); ev.err != nil {
			return
		}
		if ev.err = dead.SetFault(gatewaytest.ResetOnAccept); ev.err != nil {
			return
		}
		down := time.Now()
		if !sleepUntil(ctx, down.Add(tl.settle)) {
			return
		}
		a0, t0 := dead.Accepts(), time.Now()
		if !sleepUntil(ctx, down.Add(tl.settle+tl.after)) {
			return
		}
		ev.rate = float64(dead.Accepts()-a0) / time.Since(t0).Seconds()
	}()
	res := loadgen.RunOpen(ctx, r.url, loadgen.OpenOptions{
		Streams:  []loadgen.Stream{{Path: "/", Rate: tl.rate}},
		Duration: tl.before + tl.settle + tl.after,
		Start:    start,
		Poisson:  true, Seed: tl.seed,
	})
	ev := <-done
	if ev.err != nil {
		return loadgen.Row{}, ev.err
	}
	fig := loadgen.NoFigures()
	fig.ProbeRate = ev.rate
	return r.row("dead1", stack, res, fig), nil
}

// runBadRoute: one upstream whose /bad answers 502 (its database is down)
// while its other routes are fine; /bad gets 50 requests a second (at most
// half the rate), three other routes share the rest. Figure: the share of
// the other routes' requests served.
func runBadRoute(ctx context.Context, stack string, tl timeline) (loadgen.Row, error) {
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if req.URL.Path == "/bad" {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "database unavailable\n")
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	r, err := newRig(stack, 1, h)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer r.close()
	bad := min(50, tl.rate/2)
	other := (tl.rate - bad) / 3
	res := loadgen.RunOpen(ctx, r.url, loadgen.OpenOptions{
		Streams: []loadgen.Stream{{Path: "/bad", Rate: bad},
			{Path: "/a", Rate: other}, {Path: "/b", Rate: other}, {Path: "/c", Rate: other}},
		Duration: tl.after,
		Poisson:  true, Seed: tl.seed,
	})
	fig := loadgen.NoFigures()
	fig.Others = res.ServedRate(res.Start, res.Start.Add(time.Hour), func(s int) bool { return s != 0 })
	return r.row("badroute", stack, res, fig), nil
}
