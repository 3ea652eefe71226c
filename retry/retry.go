// Package retry is http.Handler middleware that re-runs the handler it wraps
// (an httputil.ReverseProxy, whose Rewrite may pick another upstream each
// time) when an attempt failed in a way that is safe and useful to retry,
// and passes everything else through untouched.
//
// # What is retried
//
// An attempt's outcome is read from the *gateway.Failure that the proxy's
// gateway ErrorHandler records, or, for an upstream's own 502, 503, 504 or
// 429, from the status and headers. Following RFC 9110 §9.2.2 and the
// gateway's failure taxonomy:
//
//   - A failure where the request was certainly not sent (dns, refused,
//     unreachable, connect_timeout, tls, and reset, internal or
//     stale_connection when the transport measured that nothing was
//     written) is retried for every method: nothing can have been applied.
//   - A failure after the request may have been sent (reset, malformed,
//     timeout, internal, stale_connection, and an upstream's 502/503/504)
//     is retried only for idempotent methods: GET, HEAD, OPTIONS, TRACE,
//     PUT, DELETE; and for other methods carrying an Idempotency-Key header
//     when Options.TrustIdempotencyKey is set.
//   - stale_connection (the upstream closed a reused keep-alive connection
//     before answering) says nothing about the upstream's health: when the
//     two rules above allow it, it is retried at once, without the backoff
//     delay, but within the attempt cap and the budget like any retry.
//   - open (a breaker fast-failed the attempt; nothing was sent) is
//     retried, for every method, only when the Failure names an upstream:
//     a per-host breaker (breaker.Hosts), so that the balancer picks
//     another host. The open of a breaker that guards the whole route
//     (breaker.New, Upstream "") is not: every attempt would meet it, and
//     the client gets the fast 503 at once.
//   - no_upstream (nothing left to try), canceled (the client went away)
//     and client_body (the client's own request body could not be read:
//     its fault, and it cannot be read again) are never retried; nor is
//     anything once a response byte reached the client, a connection was
//     upgraded or hijacked, or the request's context is done.
//   - An upstream's 503 or 429 with a Retry-After is retried after that
//     delay only if it is at most Options.MaxRetryAfter and fits before the
//     request's deadline; otherwise the response goes to the client as it
//     is. A 429 without Retry-After is passed through.
//
// Every retry also needs an attempt left (Options.Attempts), a request body
// that can be replayed, time before the inbound deadline for the backoff
// and for an attempt as long as the last one, and room in the retry budget.
//
// # Request bodies
//
// Bodies are streamed, never read up front. The first attempt keeps what
// the upstream reads, up to Options.MaxReplayBytes (1 MiB); a retry replays
// that, then reads on from the client. A body longer than that is retried
// only if no byte of it was read. The buffers of all requests in flight
// together hold at most Options.MaxReplayTotal (64 MiB); a body that finds
// no room is not kept and is treated as one over MaxReplayBytes: it
// streams on whole, and is retried only if no byte of it was read. A
// buffer is given back when its request ends, however it ends. Each
// attempt reads through its own reader, detached when the attempt ends, so
// that a transport still reading after RoundTrip returned cannot take
// bytes meant for the next attempt. The client's body is never closed
// here, never truncated, and never read again after it failed.
//
// # Budget
//
// Retries and hedges together may add at most Options.BudgetRatio (20%) to
// the requests seen over BudgetWindow (10 s), plus
// Options.BudgetMinPerSecond (10) a second, per Retry. Under a total
// outage the upstreams therefore see at most about 1.2× the client
// requests. A retry the budget refuses is not made: the failure goes to
// the client, and "retry: budget exhausted" is logged (warn, at most once
// a second; debug otherwise). A hedge it refuses is not sent: the attempt
// it would have hedged simply continues.
//
// # Hedging
//
// With Options.Hedges set (the zero value leaves it off; proxykit.New
// turns it on), an attempt that has been outstanding longer than the hedge
// delay gets a copy, a hedge, sent to another upstream while it stays in
// flight. A response that is not a failure decides the race: the first
// one reaching its status wins and goes to the client, streamed as ever,
// and every other attempt is cancelled at once (the cause ErrHedgeLost, a
// context.Canceled: breakers, the pool and the Monitor do not count it).
// A failure of one attempt does not end the race while another is in
// flight; when the last one fails, it is retried as usual within the
// attempt cap. The properties:
//
//   - Who: GET, HEAD and OPTIONS by default (Options.Hedgeable changes the
//     rule); a body only once read whole and kept within MaxReplayBytes;
//     never an upgrade. PUT and DELETE are idempotent but not safe to
//     have in flight twice at once (see Options.Hedges).
//   - When: after three times the p90 of recent successful attempts' latencies
//     (to the response header), per Retry, with a floor
//     (Options.HedgeMinDelay, 5 ms), after a warm-up of 50 samples; or
//     Options.HedgeDelay. Per Retry rather than per host: the hedge is
//     decided before the balancer has chosen the host, and a slow host is
//     the balancer's business (peak EWMA); the tail hedging cuts is the
//     route's. Attempts that lose a race are not samples, so the stalls
//     that hedging cuts do not push the delay up.
//   - Where: never to an upstream the request has tried (the attempt in
//     flight included): the hedge's gateway.Trail asks before its first
//     upstream (gateway.WithHedgeTrail), and a hedge routed to such an
//     upstream ends before anything is sent. A balancer that skips tried
//     and unhealthy hosts (gateway/pool) sends it elsewhere; with no other
//     host, hedging rests for a second. The attempt must have reached an
//     upstream (recorded on the Trail by a balancer or gateway.Transport)
//     before it is hedged.
//   - Cost: a hedge is an attempt (Options.Attempts) and draws on the
//     budget; 1 hedge per request by default. On the happy path hedging
//     costs a timer reset and stop, one small allocation and no goroutine;
//     a goroutine runs only for a hedge actually sent.
//
// While a request may be hedged, its attempt's context takes its
// cancellation from the retry layer: a client that goes away cancels it
// within the hedge delay or 100 ms, whichever is sooner, and a deadline
// on the request's context ends it on time.
//
// A hedge's outbound request carries IsHedge in its context. Stats counts
// hedges sent, won and denied; Options.OnHedge reports each, and debug
// lines name them. Hedging needs a transport that ends a request when its
// context is cancelled (every net/http one does): an attempt that lost
// must return before the request can end.
//
// # Composition
//
// Place retry outside a breaker and inside an error page layer:
// errorpage → retry → breaker → ReverseProxy. Each attempt runs with a
// context carrying a gateway.Trail, so a balancer can skip the upstreams
// this request already tried. Responses of failed attempts are held back
// and discarded with the gateway.Interceptor; the final outcome's Failure
// (with Attempts set) is handed to the enclosing layer, or logged once here
// when there is none. gateway.Monitor's ObserveRetry fits Options.OnRetry.
package retry

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Retry is retry middleware configured once by [New]. It is safe for
// concurrent use; one Retry may wrap several handlers, which then share its
// retry budget.
type Retry struct {
	cfg       config
	backoff   backoff
	budget    *budget
	states    sync.Pool    // of *state
	replayMem replayMemory // the replay buffers of requests in flight

	retries   atomic.Int64 // retries made, since New
	exhausted atomic.Int64 // retries the budget denied, since New
	lastWarn  atomic.Int64 // UnixNano of the last budget warning

	lat              latencies    // for the adaptive hedge delay
	hedges           atomic.Int64 // hedges sent, since New
	hedgesWon        atomic.Int64 // hedges whose response won, since New
	hedgesDenied     atomic.Int64 // hedges the budget denied, since New
	hedgePausedUntil atomic.Int64 // Retry.since before which no request is hedged
}

// New returns a Retry configured by o. The zero Options is valid and gives
// the defaults documented on each field; an invalid field (a negative count
// or duration, BaseDelay above MaxDelay, a bad header name) is an error
// naming it.
func New(o Options) (*Retry, error) {
	cfg, err := o.resolve()
	if err != nil {
		return nil, err
	}
	rt := &Retry{
		cfg:     cfg,
		backoff: backoff{base: cfg.base, cap: cfg.cap},
		budget:  newBudget(cfg.ratio, cfg.floor, time.Now()),
	}
	rt.replayMem.max = int64(cfg.maxReplayTotal)
	rt.lat.floor = cfg.hedgeMinDelay
	rt.states.New = func() any { return new(state) }
	return rt, nil
}

// Wrap returns next wrapped with retries. With Options.Attempts = 1 no
// attempt is retried or hedged, but the per-try duties stay
// (PerTryTimeout, AttemptHeader); when there are none, Wrap returns next
// unchanged.
func (rt *Retry) Wrap(next http.Handler) http.Handler {
	if rt.cfg.attempts <= 1 && rt.cfg.perTry == 0 && rt.cfg.attemptHeader == "" {
		return next
	}
	return &handler{rt: rt, next: next}
}

// Stats are a Retry's counters, for a status page.
type Stats struct {
	// Requests and Retries are the client requests and the retries and
	// hedges counted in the budget's current window (the last
	// BudgetWindow).
	Requests, Retries int64
	// TotalRetries is how many retries were made since New.
	TotalRetries int64
	// BudgetExhausted is how many retries the budget denied since New.
	BudgetExhausted int64
	// ReplayBytes is the memory, in bytes, that the replay buffers of the
	// requests in flight hold now: at most Options.MaxReplayTotal.
	ReplayBytes int64
	// ReplaySkipped is how many request bodies, since New, could not be
	// kept for replay because the replay buffers of the requests in flight
	// held MaxReplayTotal already. They streamed on unkept, so such a
	// request is not retried once any of its body was read.
	ReplaySkipped int64

	// Hedges is how many hedges were sent since New, HedgesWon how many
	// of them won their race (their response went to the client), and
	// HedgesDenied how many hedges were due but refused by the budget.
	Hedges, HedgesWon, HedgesDenied int64
	// HedgeDelay is the current hedge delay: Options.HedgeDelay, or the
	// adaptive one; 0 while it is warming up or hedging is off.
	HedgeDelay time.Duration
}

// Stats returns the current counters.
func (rt *Retry) Stats() Stats {
	req, ret := rt.budget.windowAt(time.Now())
	return Stats{
		Requests:        req,
		Retries:         ret,
		TotalRetries:    rt.retries.Load(),
		BudgetExhausted: rt.exhausted.Load(),
		ReplayBytes:     rt.replayMem.used.Load(),
		ReplaySkipped:   rt.replayMem.skipped.Load(),
		Hedges:          rt.hedges.Load(),
		HedgesWon:       rt.hedgesWon.Load(),
		HedgesDenied:    rt.hedgesDenied.Load(),
		HedgeDelay:      rt.currentHedgeDelay(),
	}
}

// currentHedgeDelay returns the hedge delay for Stats, without updating it.
func (rt *Retry) currentHedgeDelay() time.Duration {
	switch {
	case rt.cfg.hedges == 0:
		return 0
	case rt.cfg.hedgeDelay > 0:
		return rt.cfg.hedgeDelay
	}
	return time.Duration(rt.lat.d.Load())
}

// since returns the time since the Retry was made, from the monotonic
// clock: one clock read, where time.Now takes two (wall and monotonic).
func (rt *Retry) since() time.Duration { return time.Since(rt.budget.epoch) }

func (rt *Retry) logger() *slog.Logger {
	if rt.cfg.logger != nil {
		return rt.cfg.logger
	}
	return slog.Default()
}

// denied records a retry the budget refused, and says so: one warn line a
// second at most (under an outage every request is refused), debug lines
// otherwise.
func (rt *Retry) denied(r *http.Request, f *gateway.Failure, now time.Time) {
	total := rt.exhausted.Add(1)
	level := slog.LevelDebug
	last := rt.lastWarn.Load()
	if now.UnixNano()-last >= int64(time.Second) && rt.lastWarn.CompareAndSwap(last, now.UnixNano()) {
		level = slog.LevelWarn
	}
	l := rt.logger()
	ctx := r.Context()
	if !l.Enabled(ctx, level) {
		return
	}
	requests, retries := rt.budget.windowAt(now)
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("class", f.Class.String()),
		slog.Int("status", f.StatusCode()),
		slog.String("upstream", f.Upstream),
		slog.Int64("window_requests", requests),
		slog.Int64("window_retries", retries),
		slog.Int64("denied_total", total),
	)
	l.LogAttrs(ctx, level, "retry: budget exhausted, not retrying", gateway.RequestAttrs(attrs, r)...)
}

// logRetry writes the debug line for a retry about to start.
func (rt *Retry) logRetry(r *http.Request, f *gateway.Failure, attempt int, delay time.Duration) {
	l := rt.logger()
	ctx := r.Context()
	if !l.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.Int("attempt", attempt),
		slog.Duration("delay", delay),
		slog.String("class", f.Class.String()),
		slog.Int("status", f.StatusCode()),
		slog.String("upstream", f.Upstream),
		slog.Bool("sent", f.Sent),
	)
	l.LogAttrs(ctx, slog.LevelDebug, "retry: retrying", gateway.RequestAttrs(attrs, r)...)
}

// handler is the middleware wrapping one http.Handler.
type handler struct {
	rt   *Retry
	next http.Handler
}

// ServeHTTP runs attempts of h.next until one is passed to the client.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := h.rt
	st := rt.states.Get().(*state)
	defer rt.release(st)
	st.serve(rt, h.next, w, r)
}

// release cleans up after a request, gives its replay buffer back to the
// total in every case, and recycles its state when nothing can still reach
// it: not after a panic, not while a detached body reader is still reading.
func (rt *Retry) release(st *state) {
	st.cleanup()
	reusable := !st.hasBody || st.body.release()
	if !st.finished || !reusable || !st.h.reusable() {
		// A panic is on its way up, a reader is still out, or the hedge
		// timer fired: let the state go.
		return
	}
	st.clear()
	rt.states.Put(st)
}

// sleep waits d, or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
