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
// so that the happy path allocates only the request's trail context. That
// context is deliberately not part of the state: the transport may keep a
// request's context after RoundTrip returned (a background dial retains
// its values), and a recycled context would then show one request's values
// to another.
//
// Nothing else reaches a state after its request: the Interceptor and the
// Decider are used only during attempts, and body readers left behind by
// a transport are detached and never touch more than body.mu, which clear
// leaves alone.
type state struct {
	ic   gateway.Interceptor
	body replay

	rt  *Retry
	in  *http.Request         // the inbound request
	tc  *gateway.TrailContext // the trail context
	try *tryCtx               // the current attempt's per-try context, if any

	// out is the inbound request with the trail context, which attempts
	// run with. It is held by value: nothing keeps it after the request
	// (ReverseProxy clones it for the transport and hands the clone to its
	// ErrorHandler), and copying r.WithContext's result into it lets the
	// compiler keep that copy off the heap.
	out http.Request

	hasBody    bool // in has a body; body streams it
	repeatable bool // in may be sent again after it may have been applied
	finished   bool // serve returned normally

	attempt  int           // the current attempt, from 1
	start    time.Duration // when the request arrived, as a monotonic offset (Retry.since)
	tryStart time.Duration // when the current attempt started, likewise

	fail   *gateway.Failure // the failure of the current attempt, when Decide retries
	final  *gateway.Failure // the failure passed to the client with the final response
	delay  time.Duration    // the wait before the next attempt
	madeUp bool             // fail was made up for a 429: not a gateway failure

	hdrOld []string  // the inbound AttemptHeader values
	hdrHad bool      // whether the inbound request had AttemptHeader
	hdrVal [1]string // the AttemptHeader value of the current attempt
}

// serve runs attempts until one is passed to the client, or the request
// ends otherwise.
func (st *state) serve(rt *Retry, next http.Handler, w http.ResponseWriter, r *http.Request) {
	st.rt, st.in = rt, r
	st.start = rt.since()
	rt.budget.request(st.start)
	st.tc = new(gateway.TrailContext)
	st.tc.Init(r.Context())
	st.out = *r.WithContext(st.tc)
	st.repeatable = repeatable(r, rt.cfg.trustKey)
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		// ReverseProxy sends no body when ContentLength is 0, so neither
		// is one streamed here. A body that can only be retried unread
		// (a non-repeatable request) is not kept at all.
		st.hasBody = true
		limit := rt.cfg.maxReplay
		if !st.repeatable {
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
		st.attempt++
		st.run(next, w)
		if !st.ic.Discarded() {
			break
		}
		// Decide discarded the attempt's response to retry.
		st.ic.Rollback()
		f := *st.fail
		f.Attempts = st.attempt
		rt.retries.Add(1)
		rt.logRetry(r, &f, st.attempt+1, st.delay)
		if rt.cfg.onRetry != nil {
			rt.cfg.onRetry(st.attempt+1, &f, st.delay)
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

// run runs one attempt of next.
func (st *state) run(next http.Handler, w http.ResponseWriter) {
	cfg := &st.rt.cfg
	req := &st.out
	st.tryStart = st.start
	if st.attempt > 1 {
		st.tryStart = st.rt.since()
	}
	if st.hasBody {
		// st.out is this request's own copy; ReverseProxy clones it again.
		req.Body = st.body.attempt()
	}
	if cfg.attemptHeader != "" {
		// The header map is the inbound request's; cleanup restores it.
		st.hdrVal[0] = strconv.Itoa(st.attempt)
		st.in.Header[cfg.attemptHeader] = st.hdrVal[:]
	}
	if cfg.perTry > 0 {
		st.try = newTryCtx(st.tc, cfg.perTry)
		req = req.WithContext(st.try)
	}
	st.fail, st.madeUp = nil, false
	st.ic.Reset(w, st)
	st.call(next, req)
	st.endAttempt()
}

// endAttempt ends the attempt's context and detaches its body reader.
func (st *state) endAttempt() {
	if st.try != nil {
		st.try.stop()
		st.try = nil
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
// failure that will be retried.
func (st *state) Decide(status int, h http.Header, f *gateway.Failure) gateway.Decision {
	if f == nil {
		if status < http.StatusInternalServerError && status != http.StatusTooManyRequests {
			st.pass(nil)
			return gateway.Pass
		}
		if f = st.statusFailure(status, h); f == nil {
			st.pass(nil)
			return gateway.Pass
		}
	}
	if st.retry(f, status) {
		st.fail = f
		return gateway.Discard
	}
	st.pass(f)
	return gateway.Pass
}

// statusFailure classifies an upstream's own response: 502, 503, 504 by
// the gateway; 429 here, as a Failure that only this layer sees.
func (st *state) statusFailure(status int, h http.Header) *gateway.Failure {
	now := time.Now()
	upstream := st.tc.Trail().Last()
	if status != http.StatusTooManyRequests {
		return gateway.ClassifyStatus(status, h, upstream, now)
	}
	ra, ok := gateway.ParseRetryAfter(h.Get("Retry-After"), now)
	if !ok || ra <= 0 {
		return nil // a rate limit without a time to come back: the client's to handle
	}
	st.madeUp = true
	return &gateway.Failure{Class: gateway.ClassUpstreamStatus, Status: status,
		Upstream: upstream, Sent: true, RetryAfter: ra}
}

// pass prepares the response being passed: the per-try timeout no longer
// applies, and its Failure, if any, carries the attempt count to the
// enclosing layer.
// Committed implements gateway.CommitObserver: an upgrade or a hijack
// committed the attempt without a decision. The connection now lives as
// long as the client keeps it: the per-try timeout no longer applies.
func (st *state) Committed() {
	if st.try != nil {
		st.try.disarm()
	}
}

func (st *state) pass(f *gateway.Failure) {
	if st.try != nil {
		st.try.disarm()
	}
	if f == nil || st.madeUp {
		return
	}
	c := *f
	c.Attempts = st.attempt
	st.final = &c
	st.ic.RecordFailure(&c)
}

// retry decides whether the attempt that failed with f is retried, and with
// what delay. The budget is consulted last, because it counts the retry,
// and the body is settled (detached, in-flight reads waited for) only when
// everything else agreed: a detached body ends the attempt's upload, which
// a response that is passed after all may still need.
func (st *state) retry(f *gateway.Failure, status int) bool {
	rt := st.rt
	ctx := st.in.Context()
	if st.attempt >= rt.cfg.attempts || ctx.Err() != nil || !eligible(f, st.repeatable) {
		return false
	}
	delay := rt.retryDelay(f, st.attempt-1)
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
		took := rt.since() - st.tryStart
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
	if st.ic.Committed() {
		if st.final != nil && !st.ic.Forwarded() {
			gateway.LogFailure(st.rt.cfg.logger, st.in, st.final, st.rt.since()-st.start)
		}
		return
	}
	// Nothing was written. The gateway ErrorHandler does that for a client
	// that went away; any other handler that recorded a failure and wrote
	// nothing gets the failure written for it.
	if f := st.ic.Failure(); f != nil {
		c := *f
		c.Attempts = st.attempt
		st.report(w, &c)
	}
}

// abandon ends a request whose context ended while waiting to retry:
// f is the failure of the last attempt, whose response was discarded.
func (st *state) abandon(w http.ResponseWriter, f *gateway.Failure) {
	ctx := st.in.Context()
	if errors.Is(ctx.Err(), context.Canceled) {
		f.Class, f.Status, f.Err = gateway.ClassCanceled, gateway.ClassCanceled.Status(), context.Cause(ctx)
	}
	st.report(w, f)
}

// report hands f to the enclosing layer, writes it unless the client went
// away, and logs it unless an enclosing layer took it.
func (st *state) report(w http.ResponseWriter, f *gateway.Failure) {
	outer := gateway.RecordFailure(w, f)
	if f.Class != gateway.ClassCanceled {
		gateway.WriteFailure(w, st.in, f)
	}
	if !outer {
		gateway.LogFailure(st.rt.cfg.logger, st.in, f, st.rt.since()-st.start)
		gateway.AbortIfCanceled(f)
	}
}

// cleanup runs after every request, panicking or not: the attempt's
// context ends, the body reader is detached, the inbound header restored.
func (st *state) cleanup() {
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
	st.rt, st.in, st.tc, st.try = nil, nil, nil, nil
	st.out = http.Request{}
	st.hasBody, st.repeatable, st.finished = false, false, false
	st.attempt, st.start, st.tryStart = 0, 0, 0
	st.fail, st.final, st.delay, st.madeUp = nil, nil, 0, false
	st.hdrOld, st.hdrHad, st.hdrVal = nil, false, [1]string{}
}
