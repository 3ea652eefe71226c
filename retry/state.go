package retry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// state is one request's retry state. It is recycled through a sync.Pool,
// so that the happy path allocates only the request's trail context (and,
// when the request may be hedged, its attempts' context). Those contexts
// are deliberately not part of the state: the transport may keep a
// request's context after RoundTrip returned (a background dial retains
// its values), and a recycled context would then show one request's values
// to another.
//
// Nothing else reaches a state after its request: the Interceptor and the
// Deciders are used only during attempts, body readers left behind by a
// transport are detached and never touch more than body.mu, which clear
// leaves alone, and a state whose hedge timer fired is not recycled.
type state struct {
	ic   gateway.Interceptor // the interceptor of the attempt on the request's goroutine
	body replay
	main lane // the attempt on the request's goroutine
	h    hedging

	rt    *Retry
	next  http.Handler
	in    *http.Request   // the inbound request
	tc    context.Context // the trail context over the inbound request's
	trail *gateway.Trail

	// out is the inbound request with the attempts' context (tc, or the
	// cancelable attemptCtx when hedging). It is held by value: nothing
	// keeps it after the request (ReverseProxy clones it for the transport
	// and hands the clone to its ErrorHandler), and copying
	// r.WithContext's result into it lets the compiler keep that copy off
	// the heap.
	out http.Request

	hasBody    bool // in has a body; body streams it
	repeatable bool // in may be sent again after it may have been applied
	finished   bool // serve returned normally

	// attempts is how many attempts started, hedges included. While a
	// hedge may start it is written under h.mu.
	attempts int
	start    time.Duration // when the request arrived, as a monotonic offset (Retry.since)

	// fail is the failure of the last attempt when its Decide chose to
	// retry, and delay the wait before the retry; written by that
	// attempt's goroutine, read by the request's once every attempt
	// returned.
	fail  *gateway.Failure
	delay time.Duration
	final *gateway.Failure // the failure passed to the client with the final response
	// shed is the last attempt's failure when it was shed as overloaded
	// and retried: if no other host has headroom, the client gets it
	// rather than the no_upstream its retry met.
	shed *gateway.Failure

	hdrOld []string  // the inbound AttemptHeader values
	hdrHad bool      // whether the inbound request had AttemptHeader
	hdrVal [1]string // the AttemptHeader value of the current attempt
}

// lane is one attempt in flight: the request goroutine's (state.main), or
// a hedge's. It is the attempt's Decider.
type lane struct {
	st      *state
	ic      *gateway.Interceptor
	trail   *gateway.Trail // names the attempt's upstream (Last)
	try     *tryCtx        // the per-try context, if any
	attempt int            // its number, from 1
	start   time.Duration  // when it started (Retry.since)
	madeUp  bool           // its failure was made up for a 429: not a gateway failure

	// Hedges only.
	hedge  bool
	cancel context.CancelCauseFunc // ends the attempt
	waited time.Duration           // how long the hedged attempt had been outstanding
	flying bool                    // in the race: not decided, not returned (under h.mu)
}

// serve runs attempts until one is passed to the client, or the request
// ends otherwise.
func (st *state) serve(rt *Retry, next http.Handler, w http.ResponseWriter, r *http.Request) {
	st.rt, st.next, st.in = rt, next, r
	st.start = rt.since()
	rt.budget.request(st.start)
	st.repeatable = repeatable(r, rt.cfg.trustKey)
	st.tc, st.trail = gateway.WithTrail(r.Context())
	if rt.cfg.hedges > 0 && rt.hedgeable(r) {
		st.hedgeOn()
	} else {
		st.out = *r.WithContext(st.tc)
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		// ReverseProxy sends no body when ContentLength is 0, so neither
		// is one streamed here. A body that can only be retried unread
		// (a non-repeatable request, or any with Attempts 1) is not kept
		// at all, unless it may be hedged.
		st.hasBody = true
		limit := rt.cfg.maxReplay
		if (!st.repeatable || rt.cfg.attempts <= 1) && !st.h.on {
			limit = 0
		}
		st.body.reset(r.Body, &rt.replayMem, limit, r.ContentLength)
	}
	if name := rt.cfg.attemptHeader; name != "" {
		if r.Header == nil {
			r.Header = make(http.Header)
		}
		st.hdrOld, st.hdrHad = r.Header[name]
	}
	for {
		st.round(w)
		if st.fail == nil {
			break
		}
		// An attempt's Decide discarded its response to retry.
		st.ic.Rollback()
		f := *st.fail
		f.Attempts = st.attempts
		if f.Class == gateway.ClassOverloaded {
			st.shed = st.fail
		}
		st.fail = nil
		rt.retries.Add(1)
		rt.logRetry(r, &f, st.attempts+1, st.delay)
		if rt.cfg.onRetry != nil {
			rt.cfg.onRetry(st.attempts+1, &f, st.delay)
		}
		if !sleep(r.Context(), st.delay) {
			st.abandon(w, &f)
			st.finished = true
			return
		}
	}
	st.finish(w)
	st.finished = true
}

// round runs one attempt on the request's goroutine, and the hedges of it
// if any, until every one of them returned.
func (st *state) round(w http.ResponseWriter) {
	cfg := &st.rt.cfg
	l := &st.main
	st.attempts++
	*l = lane{st: st, ic: &st.ic, trail: st.trail, attempt: st.attempts}
	if st.attempts > 1 {
		l.start = st.rt.since()
	} else {
		l.start = st.start
	}
	req := &st.out
	if st.hasBody {
		// st.out is this request's own copy; ReverseProxy clones it again.
		req.Body = st.body.attempt()
	}
	if cfg.attemptHeader != "" {
		// The header map is the inbound request's; cleanup restores it.
		st.hdrVal[0] = strconv.Itoa(l.attempt)
		st.in.Header[cfg.attemptHeader] = st.hdrVal[:]
	}
	if cfg.perTry > 0 {
		l.try = newTryCtx(req.Context(), cfg.perTry)
		if st.hasBody {
			// The per-try timer measures the upstream: while the
			// transport waits on the client's body, it pauses.
			req.Body = l.try.pace(req.Body)
		}
		req = req.WithContext(l.try)
	}
	st.ic.Reset(w, l)
	if st.h.on {
		st.arm(l)
	}
	st.call(st.next, req)
	if st.h.on {
		st.settleRound(w)
	}
	st.endAttempt()
}

// endAttempt ends the request goroutine's attempt: its per-try context
// and its body reader.
func (st *state) endAttempt() {
	if st.main.try != nil {
		st.main.try.stop()
		st.main.try = nil
	}
	if st.hasBody {
		st.body.detach()
	}
}

// call runs next once. A ReverseProxy panics with http.ErrAbortHandler when
// the upstream's body breaks while it is copied: if the response was
// committed that panic must reach net/http (it aborts the client's
// connection, the only way to say the body is incomplete), but if it was
// discarded nothing reached the client, the retry is decided already, and
// the panic is swallowed. Any other panic propagates untouched.
func (st *state) call(next http.Handler, req *http.Request) {
	defer st.recoverDiscarded()
	next.ServeHTTP(&st.ic, req)
}

func (st *state) recoverDiscarded() {
	if !st.ic.Discarded() {
		return // do not even recover: the panic goes on as it was
	}
	if p := recover(); p != nil && p != http.ErrAbortHandler {
		panic(p)
	}
}

// Decide implements gateway.Decider: it passes every response except a
// failure that will be retried, and, while attempts race, any response
// once another attempt won and a failure while another attempt is still
// in flight.
func (l *lane) Decide(status int, h http.Header, f *gateway.Failure) gateway.Decision {
	if f == nil && (status < http.StatusInternalServerError && status != http.StatusTooManyRequests) {
		return l.succeed()
	}
	if f == nil {
		if f = l.statusFailure(status, h); f == nil {
			return l.succeed()
		}
	}
	st := l.st
	if l.racing() {
		return st.raceFailure(l, f, status)
	}
	if st.retry(l, f, status) {
		st.fail = f
		return gateway.Discard
	}
	if f.Class == gateway.ClassNoUpstream && st.shed != nil {
		// A shed request found no other host with headroom: the client
		// learns that the service is overloaded, not that it has no host.
		f = st.shed
	}
	l.pass(f, st.attempts)
	return gateway.Pass
}

// racing reports whether l may race other attempts: a hedge, or the
// attempt a hedge was forked from (set before the fork, so never missed).
func (l *lane) racing() bool {
	return l.hedge || (l.st.h.on && l.st.h.forked.Load())
}

// succeed passes a response that is not a failure: it wins, unless it
// races and another attempt won first.
func (l *lane) succeed() gateway.Decision {
	if l.racing() {
		return l.st.raceSuccess(l)
	}
	l.pass(nil, 0)
	l.st.observe(l)
	return gateway.Pass
}

// statusFailure classifies an upstream's own response: 502, 503, 504 by
// the gateway; 429 here, as a Failure that only this layer sees.
func (l *lane) statusFailure(status int, h http.Header) *gateway.Failure {
	now := time.Now()
	upstream := l.trail.Last()
	if status != http.StatusTooManyRequests {
		return gateway.ClassifyStatus(status, h, upstream, now)
	}
	ra, ok := gateway.ParseRetryAfter(h.Get("Retry-After"), now)
	if !ok || ra <= 0 {
		return nil // a rate limit without a time to come back: the client's to handle
	}
	l.madeUp = true
	return &gateway.Failure{Class: gateway.ClassUpstreamStatus, Status: status,
		Upstream: upstream, Sent: true, RetryAfter: ra}
}

// Committed implements gateway.CommitObserver: an upgrade or a hijack
// committed the attempt without a decision. The connection now lives as
// long as the client keeps it: the per-try timeout no longer applies.
func (l *lane) Committed() {
	if l.try != nil {
		l.try.disarm()
	}
}

// pass prepares the response being passed: the per-try timeout no longer
// applies, and its Failure, if any, carries the attempt count (attempts)
// to the enclosing layer.
func (l *lane) pass(f *gateway.Failure, attempts int) {
	if l.try != nil {
		l.try.disarm()
	}
	if f == nil || l.madeUp {
		return
	}
	c := *f
	c.Attempts = attempts
	l.st.final = &c
	l.ic.RecordFailure(&c)
}

// retry decides whether the attempt l, which failed with f, is retried,
// and with what delay. The budget is consulted last, because it counts the
// retry, and the body is settled (detached, in-flight reads waited for)
// only when everything else agreed: a detached body ends the attempt's
// upload, which a response that is passed after all may still need.
func (st *state) retry(l *lane, f *gateway.Failure, status int) bool {
	rt := st.rt
	ctx := st.in.Context()
	if st.attempts >= rt.cfg.attempts || ctx.Err() != nil || !eligible(f, st.repeatable) {
		return false
	}
	delay := rt.retryDelay(f, st.attempts-1)
	if f.Class == gateway.ClassUpstreamStatus && honoursRetryAfter(status) && f.RetryAfter > 0 {
		if f.RetryAfter > rt.cfg.maxRetryAfter {
			return false
		}
		delay = max(delay, f.RetryAfter)
	}
	now := time.Now()
	if dl, ok := ctx.Deadline(); ok {
		// The next attempt must be able to finish: assume it takes as long
		// as this one did.
		took := rt.since() - l.start
		if !now.Add(delay + took).Before(dl) {
			return false
		}
	}
	if st.hasBody && !st.body.replayable() {
		return false
	}
	if !rt.budget.tryRetryAt(now) {
		rt.denied(st.in, f, now)
		// Say so in the Failure itself: the page marks the gateway hop and
		// the log line names the budget.
		if f.Err == nil {
			f.Err = gateway.ErrRetryBudget
		} else if !errors.Is(f.Err, gateway.ErrRetryBudget) {
			f.Err = fmt.Errorf("%w; %w", f.Err, gateway.ErrRetryBudget)
		}
		return false
	}
	if st.hasBody && !st.body.settle() {
		return false
	}
	st.delay = delay
	return true
}

// finish reports the final outcome once the last attempt returned.
func (st *state) finish(w http.ResponseWriter) {
	ic := st.result()
	if ic.Committed() {
		if f := st.final; f != nil && !ic.Forwarded() {
			gateway.HandOff(w, st.in, f, true, nil, func() { st.log(f) })
		}
		return
	}
	// Nothing was written. The gateway ErrorHandler does that for a client
	// that went away; any other handler that recorded a failure and wrote
	// nothing gets the failure written for it. After a race that no
	// attempt won, that is the failure one of them met while the other
	// was in flight, if any.
	if f := st.h.outFail; f != nil {
		c := *f
		c.Attempts = st.attempts
		st.abandon(w, &c) // a client that left since is what happened
		return
	}
	if f := ic.Failure(); f != nil {
		c := *f
		c.Attempts = st.attempts
		st.report(w, &c)
	}
}

// result returns the interceptor of the attempt whose response is the
// request's: a hedge's that won, or the request goroutine's.
func (st *state) result() *gateway.Interceptor {
	if l := st.h.winner; l != nil {
		return l.ic
	}
	return &st.ic
}

// abandon ends a request whose context ended while waiting to retry (or
// while the attempts of a race ended): f is the failure of an attempt,
// whose response was discarded.
func (st *state) abandon(w http.ResponseWriter, f *gateway.Failure) {
	ctx := st.in.Context()
	if errors.Is(ctx.Err(), context.Canceled) {
		f.Class, f.Status, f.Err = gateway.ClassCanceled, gateway.ClassCanceled.Status(), context.Cause(ctx)
	}
	st.report(w, f)
}

// report hands f to the enclosing layer, writes it unless the client went
// away, and logs it unless an enclosing layer took it (gateway.HandOff).
func (st *state) report(w http.ResponseWriter, f *gateway.Failure) {
	gateway.HandOff(w, st.in, f, false, nil, func() { st.log(f) })
}

// log writes the request's one failure line.
func (st *state) log(f *gateway.Failure) {
	gateway.LogFailure(st.rt.cfg.logger, st.in, f, st.rt.since()-st.start)
}

// cleanup runs after every request, panicking or not: hedges are ended and
// waited for, the attempt's context ends, the body reader is detached, the
// inbound header restored.
func (st *state) cleanup() {
	if st.h.on {
		st.stopHedging()
	}
	st.endAttempt()
	if st.rt == nil || st.in == nil {
		return
	}
	if name := st.rt.cfg.attemptHeader; name != "" {
		if st.hdrHad {
			st.in.Header[name] = st.hdrOld
		} else {
			delete(st.in.Header, name)
		}
	}
}

// clear forgets the request, for recycling. The body's mutexes are left
// alone: a detached reader of a past request may still take them.
func (st *state) clear() {
	st.ic = gateway.Interceptor{}
	st.main = lane{}
	st.h.clear()
	st.rt, st.next, st.in, st.tc, st.trail = nil, nil, nil, nil, nil
	st.out = http.Request{}
	st.hasBody, st.repeatable, st.finished = false, false, false
	st.attempts, st.start = 0, 0
	st.fail, st.final, st.delay, st.shed = nil, nil, 0, nil
	st.hdrOld, st.hdrHad, st.hdrVal = nil, false, [1]string{}
}
