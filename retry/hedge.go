package retry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Hedging: an attempt that has been outstanding longer than the hedge delay
// gets a copy, sent to another upstream while it stays in flight; the first
// response that is not a failure wins. The package documentation states
// the properties; this file holds the mechanics:
//
//   - The delay (latencies): three times the p90 of recent successful attempts,
//     with a floor, from a two-window histogram refreshed every 200 ms
//     (every 10 ms, and every attempt a sample, while warming up); kept
//     through quiet spells. See latencies.compute for why p90.
//   - The attempt on the request's goroutine runs as always. A timer per
//     request state (reused, so the happy path only resets and stops it)
//     fires at the delay; only then does a goroutine start: the hedge runs
//     on the timer's own.
//   - That attempt must be cancelable if the hedge wins, without a
//     cancelable context per request: its context (attemptCtx) takes its
//     cancellation from a cancel context kept in the request state and
//     reused while never cancelled, and the client's cancellation is
//     hooked onto it only when the timer fires (at the delay, after
//     cancelReach, or at the request's deadline, whichever is soonest). A
//     request that ends sooner never pays for the hook, nor for a
//     goroutine.
//   - The winner is decided at the response header by the gateway's
//     Interceptor (Fork): each racing attempt writes a header map of its
//     own, and the first that passes a non-failure takes the response.
//   - The hedge's Trail is a view of the request's (gateway.WithHedgeTrail)
//     that asks admit before its first upstream: an upstream this request
//     tried already is refused (the hedge ends before anything is sent),
//     and the budget, shared with retries, is asked there, so that a hedge
//     that goes nowhere costs none.

// HedgeEvent is what happened to a hedge, for Options.OnHedge.
type HedgeEvent uint8

const (
	// HedgeSent: a hedge was sent to an upstream.
	HedgeSent HedgeEvent = iota + 1
	// HedgeWon: a hedge's response won the race and went to the client.
	HedgeWon
	// HedgeDenied: a hedge was due, but the budget it shares with retries
	// was spent; the hedged attempt simply continues.
	HedgeDenied
)

// String returns "sent", "won" or "denied".
func (e HedgeEvent) String() string {
	switch e {
	case HedgeSent:
		return "sent"
	case HedgeWon:
		return "won"
	case HedgeDenied:
		return "denied"
	}
	return "HedgeEvent(" + strconv.Itoa(int(e)) + ")"
}

type hedgeKey struct{}

// IsHedge reports whether ctx is (or derives from) the context of a
// hedge: the outbound request of a hedged attempt carries it, so that a
// transport or a tracer can tell a hedge from a first attempt or a retry.
func IsHedge(ctx context.Context) bool {
	return ctx.Value(hedgeKey{}) != nil
}

const (
	// cancelReach bounds how long a client that went away may take to
	// cancel a hedgeable request's attempt (see attemptCtx). Requests
	// slower than it (or than the hedge delay) cost a timer firing.
	cancelReach = 100 * time.Millisecond
	// hedgePause is how long hedging rests after a hedge of a first
	// attempt found no other upstream (a pool of one, or every other host
	// out): hedges would only be refused.
	hedgePause = time.Second
)

// ErrHedgeLost is the cancellation cause (context.Cause) of an attempt
// whose race another attempt of the same request won. It is a
// cancellation — errors.Is(ErrHedgeLost, context.Canceled) — so that
// breakers, the pool and the Monitor do not count it as the upstream's
// failure; a tracer can tell it from a client that went away.
var ErrHedgeLost error = hedgeCanceled("retry: another attempt of the request won")

var (
	// errHedgeSameHost ends a hedge routed to an upstream the request
	// tried already, before it is sent.
	errHedgeSameHost error = hedgeCanceled("retry: no other upstream to hedge to")
	// errHedgeBudget ends a hedge the budget refused, before it is sent.
	errHedgeBudget error = hedgeCanceled("retry: hedge refused by the retry budget")
)

type hedgeCanceled string

func (e hedgeCanceled) Error() string        { return string(e) }
func (e hedgeCanceled) Is(target error) bool { return target == context.Canceled }

// hedging is a request state's hedging part.
type hedging struct {
	on     bool          // this request may be hedged (constant during the request)
	sample bool          // its successful attempts' latencies feed the adaptive delay
	warm   bool          // the adaptive delay is warming up: every attempt is a sample
	delay  time.Duration // its hedge delay
	forked atomic.Bool   // a hedge was forked from the current round's attempt
	// settled: the round's timer is stopped and its hedges returned; read
	// and written by the request's goroutine only.
	settled bool

	mu      sync.Mutex // guards what follows against the timer's and hedges' goroutines
	timer   *time.Timer
	armed   bool          // the timer serves the current round
	ticks   bool          // the timer was started since it was last stopped
	fired   atomic.Bool   // the timer fired during this request: the state is not recycled
	spent   bool          // a Stop found the timer expired: likewise
	due     time.Duration // when the current round's next hedge is due (Retry.since)
	mark    int           // the trail's length when the round started
	used    int           // hedges started by this request
	flying  int           // attempts of the current round in the race
	lanes   []*lane       // the hedges of the current round
	winner  *lane         // the hedge whose response won, if one did
	mainWon bool          // the attempt on the request's goroutine won its race
	panicV  any           // a hedge's panic, to go on on the request's goroutine

	// The failure an attempt met while another was in flight: reported
	// if no attempt of the round answers.
	out       *lane
	outFail   *gateway.Failure
	outStatus int

	wg sync.WaitGroup // hedges running

	// The cancellation of the attempts on the request's goroutine.
	p       context.Context // a child of Background, reused while never cancelled
	pcancel context.CancelCauseFunc
	pdirty  bool        // p was cancelled, or may be: not reused
	unhook  func() bool // stops the client's cancellation from reaching p
}

// reusable reports whether the state may serve another request: its timer
// never expired during this one, so that no late fire can find it.
func (h *hedging) reusable() bool { return !h.fired.Load() && !h.spent }

// alone reports whether no timer function ran during this request, nor can
// run now: then the request's goroutine is the only one to touch h, and
// needs no lock. (A timer function is only started by an arming that
// expired: every arming so far was stopped in time, or spent is set.)
func (h *hedging) alone() bool { return !h.fired.Load() && !h.spent && !h.ticks }

func (h *hedging) clear() {
	h.on, h.sample, h.warm, h.delay, h.settled = false, false, false, 0, false
	h.forked.Store(false)
	h.armed, h.used, h.flying, h.winner, h.mainWon, h.panicV = false, 0, 0, nil, false, nil
	h.out, h.outFail, h.outStatus = nil, nil, 0
	clear(h.lanes)
	h.lanes = h.lanes[:0]
}

// attemptCtx is the context of a hedgeable request's attempts on its own
// goroutine: the request's values and deadline, and a cancellation of its
// own, p, so that a hedge that wins can end the attempt it hedged.
//
// p is a child of Background kept in the request state and reused while
// never cancelled, so the happy path allocates only this wrapper. Contexts
// derived from an attemptCtx attach to p without a goroutine: Value hands
// p's own key (context's, an *int) to p, and AfterFunc covers the case
// where that ever changes. The client's cancellation reaches p through a
// hook (context.AfterFunc) that the hedge timer sets when it first fires:
// at the hedge delay, after cancelReach, or at the request's deadline,
// whichever is soonest. A request that ends sooner never pays for it; a
// client that leaves is seen by the attempt at most min(hedge delay,
// cancelReach) late — most requests are over by then, and the server
// notices writes to a client gone at once anyway — and a deadline is kept
// to the timer's precision.
type attemptCtx struct {
	context.Context // the trail context over the request's
	p               context.Context
}

func (c *attemptCtx) Done() <-chan struct{} { return c.p.Done() }

// Err is context.DeadlineExceeded when the request's deadline ended p (p is
// cancelled with the request's cause), as it would be for the request's
// own context: no layer must mistake a timeout for a client that left.
func (c *attemptCtx) Err() error { return deadlineErr(c.p) }

// deadlineErr returns ctx.Err(), or context.DeadlineExceeded when ctx was
// cancelled because of a deadline (its cause says so).
func deadlineErr(ctx context.Context) error {
	err := ctx.Err()
	if err == context.Canceled && errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return err
}

func (c *attemptCtx) Value(key any) any {
	if _, ok := key.(*int); ok {
		if v := c.p.Value(key); v != nil {
			return v
		}
	}
	return c.Context.Value(key)
}

// AfterFunc lets contexts derived from c attach to p without a goroutine
// even if Value ever stops finding p.
func (c *attemptCtx) AfterFunc(f func()) func() bool { return context.AfterFunc(c.p, f) }

// hedgeable reports whether r may be hedged at all: the user's rule, or
// a safe method; never an upgrade.
func (rt *Retry) hedgeable(r *http.Request) bool {
	if rt.cfg.hedgeable != nil {
		if !rt.cfg.hedgeable(r) {
			return false
		}
	} else if m := r.Method; m != http.MethodGet && m != http.MethodHead && m != http.MethodOptions {
		return false
	}
	return r.Header["Upgrade"] == nil
}

// hedgeOn sets up the hedging of a hedgeable request, if its hedge delay is
// known, and the attempts' request st.out.
func (st *state) hedgeOn() {
	rt, r := st.rt, st.in
	now := st.start
	st.h.sample = rt.cfg.hedgeDelay == 0
	d := rt.hedgeDelay(now)
	st.h.warm = d <= 0
	if d <= 0 || r.ContentLength > int64(rt.cfg.maxReplay) || now < time.Duration(rt.hedgePausedUntil.Load()) {
		st.out = *r.WithContext(st.tc)
		return
	}
	h := &st.h
	h.on, h.delay = true, d
	if h.p == nil {
		h.p, h.pcancel = context.WithCancelCause(context.Background())
	}
	st.out = *r.WithContext(&attemptCtx{Context: st.tc, p: h.p})
}

// arm starts the hedge timer of a round whose attempt l starts now. On the
// happy path no timer function ran: no lock is needed, and Reset orders
// what is written here before the function it schedules.
func (st *state) arm(l *lane) {
	h := &st.h
	h.settled = false
	if h.alone() {
		st.armLocked(l)
		return
	}
	h.mu.Lock()
	st.armLocked(l)
	h.mu.Unlock()
}

// armLocked is arm with h.mu held, or h alone.
func (st *state) armLocked(l *lane) {
	h, cfg := &st.h, &st.rt.cfg
	l.flying, h.flying = true, 1
	h.out, h.outFail, h.outStatus = nil, nil, 0
	h.mark = st.trail.Len()
	if h.used < cfg.hedges && st.attempts < cfg.attempts {
		h.armed = true
		h.due = l.start + h.delay
		first := min(h.delay, cancelReach)
		if dl, ok := st.in.Context().Deadline(); ok {
			first = max(min(first, time.Until(dl)), 0)
		}
		if h.timer == nil {
			// Made idle, then Reset: the field is set before the
			// function can run.
			h.timer = time.AfterFunc(math.MaxInt64, st.fire)
		}
		h.timer.Reset(first)
		h.ticks = true
	} else {
		st.hookLocked() // a retry without a hedge left: slow already
	}
}

// hookLocked lets the client's cancellation reach the attempts on the
// request's goroutine; h.mu is held.
func (st *state) hookLocked() {
	h := &st.h
	parent := st.in.Context()
	if h.unhook != nil || parent.Done() == nil {
		return
	}
	cancel := h.pcancel
	h.unhook = context.AfterFunc(parent, func() { cancel(context.Cause(parent)) })
}

// stopLocked stops hedging for now: no hedge starts, and the timer is
// stopped; one that had expired marks the state unfit for recycling (its
// function may still be on its way). h.mu is held.
func (h *hedging) stopLocked() {
	h.armed = false
	if h.ticks {
		h.ticks = false
		if !h.timer.Stop() {
			h.spent = true
		}
	}
}

// fire runs on the timer's goroutine: first it hooks the client's
// cancellation (and deadline); at the hedge delay it starts a hedge, if
// one may start, and runs it right here.
func (st *state) fire() {
	h := &st.h
	h.fired.Store(true) // first: the request's goroutine takes the lock from now on
	h.mu.Lock()
	if !h.armed {
		h.mu.Unlock()
		return
	}
	st.hookLocked()
	rt := st.rt
	now := rt.since()
	if now < h.due {
		h.timer.Reset(h.due - now)
		h.mu.Unlock()
		return
	}
	l, req, later := st.startHedgeLocked(now)
	if later || (l != nil && h.used < rt.cfg.hedges && st.attempts < rt.cfg.attempts) {
		h.due = now + h.delay
		h.timer.Reset(h.delay)
	} else {
		h.armed = false
	}
	h.mu.Unlock()
	if l != nil {
		st.runHedge(l, req)
	}
}

// startHedgeLocked prepares a hedge of the current round at now, or
// returns nil when none may start now; later says to try again after
// another delay. h.mu is held.
func (st *state) startHedgeLocked(now time.Duration) (l *lane, req *http.Request, later bool) {
	h, rt := &st.h, st.rt
	if h.winner != nil || h.mainWon || h.used >= rt.cfg.hedges || st.attempts >= rt.cfg.attempts || st.in.Context().Err() != nil {
		return nil, nil, false
	}
	if st.trail.Len() <= h.mark {
		// The attempt has not reached an upstream yet (held up on this
		// side: scheduling, a collection): a hedge could not tell where
		// to go, and would not help.
		return nil, nil, true
	}
	var body []byte
	if st.hasBody {
		var ok bool
		if body, ok = st.body.complete(); !ok {
			return nil, nil, false // not read whole yet, or not kept: only the first attempt has it
		}
	}
	l = &lane{st: st, hedge: true, start: now, waited: now - st.main.start}
	h.forked.Store(true) // before the fork: the forked attempt's Decide must see it
	if l.ic = st.ic.Fork(l); l.ic == nil {
		return nil, nil, false // the attempt's response has arrived
	}
	st.attempts++
	h.used++
	l.attempt = st.attempts
	l.flying = true
	h.flying++
	h.lanes = append(h.lanes, l)
	h.wg.Add(1)

	ctx := gateway.WithHedgeTrail(context.WithValue(st.tc, hedgeKey{}, true), l.admit)
	l.trail = gateway.TrailFrom(ctx)
	if d := rt.cfg.perTry; d > 0 {
		l.try = newTryCtx(ctx, d)
		ctx, l.cancel = l.try, l.try.cancel
	} else {
		ctx, l.cancel = context.WithCancelCause(ctx)
	}
	req = st.out.WithContext(ctx)
	if body != nil {
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	if name := rt.cfg.attemptHeader; name != "" {
		req.Header = st.in.Header.Clone()
		req.Header[name] = []string{strconv.Itoa(l.attempt)}
	}
	return l, req, false
}

// runHedge runs the hedge l on the calling goroutine.
func (st *state) runHedge(l *lane, req *http.Request) {
	defer st.hedgeDone(l)
	st.next.ServeHTTP(l.ic, req)
}

// hedgeDone ends a hedge: a panic that must reach net/http (a winner's, or
// an unexpected one) is kept for the request's goroutine, which waits.
func (st *state) hedgeDone(l *lane) {
	v := recover()
	h := &st.h
	h.mu.Lock()
	if v != nil && (v != http.ErrAbortHandler || l.ic.Committed()) && h.panicV == nil {
		h.panicV = v
	}
	if l.flying {
		l.flying = false
		h.flying--
	}
	h.mu.Unlock()
	if l.try != nil {
		l.try.stop()
	} else {
		l.cancel(context.Canceled)
	}
	h.wg.Done() // last: the request's goroutine may go on from here
}

// admit vets a hedge's first upstream, before anything is sent: never an
// upstream the request tried (the one in flight), and only within the
// budget, which hedges share with retries.
func (l *lane) admit(upstream string) bool {
	st := l.st
	rt := st.rt
	if l.trail.Tried(upstream) {
		l.cancel(errHedgeSameHost)
		st.unsent()
		if l.trail.Len() <= 1 {
			// The first attempt's hedge: the pool had no other host.
			rt.hedgePausedUntil.Store(int64(rt.since() + hedgePause))
		}
		rt.logHedge(st.in, "retry: no other upstream to hedge to", l, upstream)
		return false
	}
	if now := time.Now(); !rt.budget.tryRetryAt(now) {
		l.cancel(errHedgeBudget)
		st.unsent()
		rt.hedgesDenied.Add(1)
		rt.logHedge(st.in, "retry: hedge refused by the budget", l, upstream)
		if rt.cfg.onHedge != nil {
			rt.cfg.onHedge(HedgeDenied, l.attempt, l.waited)
		}
		return false
	}
	rt.hedges.Add(1)
	rt.logHedge(st.in, "retry: hedging", l, upstream)
	if rt.cfg.onHedge != nil {
		rt.cfg.onHedge(HedgeSent, l.attempt, l.waited)
	}
	return true
}

// unsent takes back the attempt a hedge counted when it was not sent.
func (st *state) unsent() {
	st.h.mu.Lock()
	st.attempts--
	st.h.mu.Unlock()
}

// raceSuccess decides a racing attempt's response that is not a failure:
// the first wins, and every other attempt of the round ends at once.
func (st *state) raceSuccess(l *lane) gateway.Decision {
	h := &st.h
	h.mu.Lock()
	if h.winner != nil || h.mainWon {
		h.mu.Unlock()
		return gateway.Discard
	}
	st.winLocked(l)
	h.mu.Unlock()
	l.pass(nil, 0)
	st.observe(l)
	if l.hedge {
		st.rt.hedgesWon.Add(1)
		st.rt.logHedge(st.in, "retry: hedge won", l, l.trail.Last())
		if st.rt.cfg.onHedge != nil {
			st.rt.cfg.onHedge(HedgeWon, l.attempt, l.waited)
		}
	}
	return gateway.Pass
}

// raceFailure decides a racing attempt's failure: while another attempt
// is in flight the race goes on without it; the last one is decided as if
// alone (retried, or passed to the client).
func (st *state) raceFailure(l *lane, f *gateway.Failure, status int) gateway.Decision {
	h := &st.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.winner != nil || h.mainWon {
		return gateway.Discard
	}
	if final(f) {
		st.winLocked(l)
		l.pass(f, st.attempts)
		return gateway.Pass
	}
	if l.flying {
		l.flying = false
		h.flying--
	}
	if h.flying > 0 {
		h.out, h.outFail, h.outStatus = l, f, status
		return gateway.Discard
	}
	if st.retry(l, f, status) {
		st.fail = f
		return gateway.Discard
	}
	st.winLocked(l)
	l.pass(f, st.attempts)
	return gateway.Pass
}

// winLocked makes l the round's winner and ends every other attempt of
// it; h.mu is held.
func (st *state) winLocked(l *lane) {
	h := &st.h
	if l.flying {
		l.flying = false
		h.flying--
	}
	if l.hedge {
		h.winner = l
		// End the attempt on the request's goroutine: its context is
		// attemptCtx, cancelled through p, which is then spent.
		h.pdirty = true
		h.pcancel(ErrHedgeLost)
	} else {
		h.mainWon = true
	}
	for _, o := range h.lanes {
		if o != l {
			o.cancel(ErrHedgeLost)
		}
	}
	h.out, h.outFail = nil, nil
}

// settleRound ends the round on the request's goroutine once its attempt
// returned: no more hedges, the hedges started are waited for, and a race
// that nobody won with a failure seen on the way is decided here.
func (st *state) settleRound(w http.ResponseWriter) {
	h := &st.h
	if !h.fired.Load() && !h.spent && h.ticks && h.timer.Stop() && !h.fired.Load() {
		// The happy path: the timer never fired (Stop caught it in
		// time), so no hedge started and no other goroutine touches h.
		h.ticks, h.armed = false, false
		st.main.flying, h.flying = false, 0
		h.forked.Store(false)
		h.settled = true
		return
	}
	h.mu.Lock()
	h.stopLocked()
	if st.main.flying {
		st.main.flying = false
		h.flying--
	}
	hedged := len(h.lanes) > 0
	h.mu.Unlock()
	if !hedged {
		h.forked.Store(false)
		h.settled = true
		return
	}
	h.wg.Wait()
	h.forked.Store(false)
	h.settled = true
	if v := h.panicV; v != nil {
		h.panicV = nil
		panic(v)
	}
	if h.winner == nil && !h.mainWon && st.fail == nil && h.outFail != nil && !st.ic.Committed() {
		// Every attempt returned, none answered, and one failed while
		// another was still in flight: decide on that failure now.
		if st.retry(h.out, h.outFail, h.outStatus) {
			st.fail = h.outFail
			h.out, h.outFail = nil, nil
		}
	}
	clear(h.lanes)
	h.lanes = h.lanes[:0]
}

// stopHedging ends hedging when the request ends, however it ends: no
// hedge starts, those running are cancelled and waited for, the client's
// cancellation is unhooked, and p is dropped if it may be cancelled.
func (st *state) stopHedging() {
	h := &st.h
	if !h.settled {
		st.stopRunning()
	}
	if h.unhook != nil {
		if !h.unhook() {
			h.pdirty = true // the hook ran, or is about to
		}
		h.unhook = nil
	}
	if h.pdirty {
		h.p, h.pcancel, h.pdirty = nil, nil, false
	}
}

// stopRunning stops the timer and the hedges of a round that did not
// settle (a panic): they are cancelled and waited for.
func (st *state) stopRunning() {
	h := &st.h
	h.mu.Lock()
	h.stopLocked()
	for _, l := range h.lanes {
		if l.flying {
			l.cancel(context.Canceled)
		}
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// observe records the latency of a successful attempt for the adaptive
// hedge delay.
func (st *state) observe(l *lane) {
	// One in latSampling: the clock read is most of the cost. While the
	// delay warms up, every one: nothing is hedged until it is known.
	if h := &st.h; h.sample && (h.warm || rand.Uint32()%latSampling == 0) {
		now := st.rt.since()
		st.rt.lat.observe(now, now-l.start)
	}
}

// hedgeDelay returns the hedge delay at now: fixed, or adaptive; 0 while
// the adaptive one is warming up.
func (rt *Retry) hedgeDelay(now time.Duration) time.Duration {
	if d := rt.cfg.hedgeDelay; d > 0 {
		return d
	}
	return rt.lat.delay(now)
}

// logHedge writes a debug line about hedge l.
func (rt *Retry) logHedge(r *http.Request, msg string, l *lane, upstream string) {
	lg := rt.logger()
	ctx := r.Context()
	if !lg.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.Int("attempt", l.attempt),
		slog.Duration("after", l.waited),
		slog.String("upstream", upstream),
	)
	lg.LogAttrs(ctx, slog.LevelDebug, msg, gateway.RequestAttrs(attrs, r)...)
}

// The adaptive hedge delay.
const (
	latBuckets    = 128                    // quarter-octave buckets from 1 µs
	latWindow     = 5 * time.Second        // each of the two windows
	latRefresh    = 200 * time.Millisecond // how often the delay is recomputed
	latWarmup     = 10 * time.Millisecond  // how often while warming up
	latSampling   = 4                      // one successful attempt in latSampling is a sample
	hedgeWarmup   = 50                     // samples before the first delay
	hedgeQuantile = 0.90
	hedgeFactor   = 3
)

// latencies is a histogram of the latencies of recent successful attempts,
// in two windows of latWindow (the current one and the one before), kept
// in atomic counters: recording is one atomic add, with no lock and no
// allocation. The delay derived from it is recomputed at most every
// latRefresh, by whichever request notices it is due, and read with one
// atomic load.
type latencies struct {
	floor time.Duration
	win   [2]latWindowCounts
	d     atomic.Int64 // the current delay, ns; 0 while warming up
	next  atomic.Int64 // when it is next recomputed (Retry.since)
}

type latWindowCounts struct {
	id     atomic.Int64 // 1 + the window number (since / latWindow) the counts are of
	counts [latBuckets]atomic.Uint32
}

// bucketOf returns d's bucket: 0 below 1 µs, then four per octave.
func bucketOf(d time.Duration) int {
	if d < 1<<10 {
		return 0
	}
	n := bits.Len64(uint64(d)) - 1 // ≥ 10
	frac := int(uint64(d)>>(n-2)) & 3
	return min((n-10)*4+frac+1, latBuckets-1)
}

// bucketTop returns the upper bound of bucket b.
func bucketTop(b int) time.Duration {
	if b == 0 {
		return 1 << 10
	}
	n, frac := (b-1)/4+10, (b-1)%4
	return time.Duration(4+frac+1) << (n - 2)
}

// window returns the counts of window number w, restarting them if they
// hold an older one.
func (l *latencies) window(w int64) *latWindowCounts {
	c := &l.win[w&1]
	if id := c.id.Load(); id < w+1 && c.id.CompareAndSwap(id, w+1) {
		for i := range c.counts {
			c.counts[i].Store(0)
		}
	}
	return c
}

// observe records a latency d seen at now.
func (l *latencies) observe(now, d time.Duration) {
	c := l.window(int64(now / latWindow))
	c.counts[bucketOf(d)].Add(1)
}

// delay returns the hedge delay at now, recomputing it when due. With too
// few recent samples (after a quiet spell) the last delay stays: only the
// first one waits for a warm-up, recomputed often so that it is short.
func (l *latencies) delay(now time.Duration) time.Duration {
	d := l.d.Load()
	if next := l.next.Load(); int64(now) >= next {
		every := latRefresh
		if d == 0 {
			every = latWarmup
		}
		if l.next.CompareAndSwap(next, int64(now+every)) {
			if c := l.compute(now); c > 0 {
				d = int64(c)
				l.d.Store(d)
			}
		}
	}
	return time.Duration(d)
}

// compute returns max(floor, hedgeFactor × p90) over the current and the
// previous window, or 0 with fewer than hedgeWarmup samples.
//
// Why p90. The samples include every stall that no hedge cut: all of them
// while warming up, and all of them if the delay ever rose above the stall,
// since then no hedge is sent. A delay from a quantile q learns a stall
// that hits more than 1−q of the samples, and then keeps itself there (the
// stall it no longer cuts keeps it up): with p95, 5% of responses stalled
// by 100 ms locked hedging out. p90 stays below any stall of up to 10% of
// responses whether or not hedges cut it, so the delay cannot lock itself
// out below that share; and three times p90 hedges at most 10% of attempts
// (the ratio the account of upstream requests allows hedging), and under 1%
// for the latency spread of most services (lognormal σ=1: 0.9%; a Pareto
// tail of index 3: 0.4%), no more than twice p95 did. A stall hitting more
// than 10% of responses is the normal latency of that service, not a tail.
func (l *latencies) compute(now time.Duration) time.Duration {
	w := int64(now / latWindow)
	var sum [latBuckets]uint64
	var n uint64
	for i := range l.win {
		c := &l.win[i]
		if id := c.id.Load() - 1; id != w && id != w-1 {
			continue
		}
		for b := range c.counts {
			v := uint64(c.counts[b].Load())
			sum[b] += v
			n += v
		}
	}
	if n < hedgeWarmup {
		return 0
	}
	rank := uint64(float64(n) * hedgeQuantile)
	var acc uint64
	for b, v := range sum {
		if acc += v; acc > rank {
			return max(l.floor, hedgeFactor*bucketTop(b))
		}
	}
	return max(l.floor, hedgeFactor*bucketTop(latBuckets-1))
}

// complete returns the whole body when every byte of it was read and kept.
func (rp *replay) complete() ([]byte, bool) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.err != io.EOF || int64(len(rp.buf)) != rp.n {
		return nil, false
	}
	return rp.buf, true
}
