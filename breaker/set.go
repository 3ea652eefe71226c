package breaker

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// Outcomes are reported to gobreaker as these errors: nil is a success.
var (
	errFailure  = errors.New("breaker: failure")
	errExcluded = errors.New("breaker: excluded")
)

// entry is one breaker: gobreaker's, plus what gobreaker does not expose
// (when it reopens) and the transitions waiting for the hooks.
//
// gobreaker counts and trips; proxykit owns the open period. A gobreaker
// that tripped is retired: requests that were in flight when it tripped
// still report to it, and gobreaker, whose own open period is 1 ns, would
// let the next of them turn it half-open at once. So when proxykit ends
// the open period it swaps in a fresh gobreaker, driven to half-open
// (toHalfOpen), and transitions of any gobreaker but the live one, and
// gobreaker's own open→half-open, are ignored.
type entry struct {
	set *set
	key string
	// overflow marks the breaker shared by requests without one of their
	// own; it never trips. evictable marks a keyed breaker, which the set
	// may evict to make room; the single and overflow breakers never are.
	overflow  bool
	evictable bool
	// cb is the live gobreaker; swapMu serialises its swaps.
	cb     atomic.Pointer[gbox]
	swapMu sync.Mutex

	// state is the breaker's state as of its last transition, and
	// openUntil (Unix ns) the end of the current open period. Both are
	// written under the live gobreaker's lock, by onStateChange, or under
	// swapMu while open, and read without either.
	state     atomic.Uint32
	openUntil atomic.Int64

	// pins counts the requests that hold the breaker: from acquire until
	// their outcome is reported (finish) or they are refused (allow).
	// Eviction swaps 0 for evicted, so a pinned breaker is never evicted
	// and a breaker being evicted cannot be pinned.
	pins atomic.Int64
	// used is set by each request and cleared by the eviction clock's
	// hand: a breaker used since the hand last passed is spared once more.
	used atomic.Bool

	// host is the host-health model of a Hosts breaker; nil otherwise.
	host *hostState
	// readyToTrip is the trip rule of the entry's kind.
	readyToTrip func(gobreaker.Counts) bool
	// trips counts the trips of this out spell, closedAt (ns) is when the
	// breaker last closed, and period is the current open period; all
	// under the live gobreaker's lock.
	trips    int
	closedAt int64
	period   time.Duration
	// statusTrip is set by hostReadyToTrip, under cb's lock, when the
	// status rule trips the host.
	statusTrip bool

	pending atomic.Bool // queue is not empty
	mu      sync.Mutex  // guards queue
	queue   []transition
	hookMu  sync.Mutex // serialises the hooks
}

// evicted is what pins holds once the breaker is evicted: negative however
// many pin attempts add to it.
const evicted = math.MinInt64 / 2

type transition struct {
	from, to State
	period   time.Duration // the open period, for a transition to open
	spell    bool          // open→half-open→open within one out spell
	cause    gateway.Class // for a host going out: the class of the evidence
}

// Kinds of entry.
const (
	kindSingle = iota
	kindKeyed
	kindOverflow
)

func (s *set) newEntry(key string, kind int) *entry {
	e := &entry{set: s, key: key, overflow: kind == kindOverflow, evictable: kind == kindKeyed}
	e.readyToTrip = func(n gobreaker.Counts) bool { return s.c.readyToTrip(countsOf(n)) }
	if s.prober != nil && kind == kindKeyed {
		e.host = new(hostState)
		e.readyToTrip = e.hostReadyToTrip
	}
	if e.overflow {
		e.readyToTrip = func(gobreaker.Counts) bool { return false } // fails open
	}
	e.cb.Store(e.newBox())
	return e
}

// gbox is one gobreaker of an entry.
type gbox struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
	// retired is set when the gobreaker trips, before the entry's state
	// reads open: it lets no request through again.
	retired atomic.Bool
	// force makes the next failure trip: toHalfOpen drives a fresh
	// gobreaker to half-open with it. Under cb's lock, before the box is
	// live.
	force bool
}

// newBox returns a fresh gobreaker for e, closed.
func (e *entry) newBox() *gbox {
	s := e.set
	b := &gbox{}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         e.key,
		MaxRequests:  s.c.MaxRequests,
		Interval:     s.c.Interval,
		BucketPeriod: s.c.BucketPeriod,
		// gobreaker would go half-open as soon as it is asked; a tripped
		// gobreaker is retired instead, and the open period is
		// openUntil's, on the set's clock.
		Timeout: time.Nanosecond,
		ReadyToTrip: func(n gobreaker.Counts) bool {
			return b.force || e.readyToTrip(n)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) { e.onStateChange(b, from, to) },
		IsExcluded:    func(err error) bool { return err == errExcluded },
	})
	return b
}

// toHalfOpen ends e's open period: it swaps in a fresh gobreaker in
// half-open (with none of the requests of the retired one) and records
// the transition.
func (e *entry) toHalfOpen() {
	e.swapMu.Lock()
	defer e.swapMu.Unlock()
	if State(e.state.Load()) != StateOpen {
		return // swapped already
	}
	b := e.newBox() // not live: its transitions are ignored
	b.force = true
	if done, err := b.cb.Allow(); err == nil {
		done(errFailure)
	}
	b.force = false
	for b.cb.State() != gobreaker.StateHalfOpen { // its open period is 1 ns
	}
	// Record the transition and set the state before b is live: from the
	// moment it is, a trial may move it on (half-open→open or →closed),
	// and that transition must follow this one, in the hooks and in
	// e.state. Until then, a request that read the state before it
	// changed and loads the retired gobreaker is refused (allow).
	if h := e.host; h != nil {
		h.halfSince.Store(e.set.now())
	}
	e.state.Store(uint32(StateHalfOpen))
	e.record(transition{from: StateOpen, to: StateHalfOpen})
	e.cb.Store(b)
}

// record queues t for the hooks.
func (e *entry) record(t transition) {
	e.mu.Lock()
	e.queue = append(e.queue, t)
	e.pending.Store(true)
	e.mu.Unlock()
}

// onStateChange runs under the lock of b's gobreaker: for the live one, it
// records, and leaves the hooks to flush.
func (e *entry) onStateChange(b *gbox, from, to gobreaker.State) {
	if e.cb.Load() != b || to == gobreaker.StateHalfOpen {
		// A retired gobreaker, one being driven to half-open, or
		// gobreaker's own 1 ns open period: toHalfOpen decides.
		return
	}
	t := transition{from: stateOf(from), to: stateOf(to)}
	s := e.set
	now := s.now()
	switch t.to {
	case StateOpen:
		b.retired.Store(true)
		if e.closedAt != 0 && now-e.closedAt >= int64(s.c.Interval) {
			e.trips = 0 // a healthy spell since the last trip
		}
		t.spell = t.from == StateHalfOpen && e.trips > 0
		e.trips++
		period := s.c.Timeout
		for i := 1; i < e.trips && period < s.c.MaxTimeout; i++ {
			period *= 2
		}
		period = min(period, s.c.MaxTimeout)
		if h := e.host; h != nil {
			if t.from == StateClosed {
				h.outSince.Store(now)
				h.probeStep.Store(0)
			}
			cause := gateway.Class(h.lastClass.Load())
			if t.from == StateClosed && e.statusTrip {
				cause = gateway.ClassUpstreamStatus
			}
			h.cause.Store(int32(cause))
			t.cause = cause
			if !s.othersServing(e) {
				// A whole pool out: try it again soon.
				period = min(period, 3*s.c.Health.PanicInterval)
			}
			// The first trip of a spell is probed at once; a repeat one
			// (it passed a probe, then failed real traffic) when its
			// growing period ends. Only a probe ends the period of a host
			// that can be probed.
			after := now
			if e.trips > 1 {
				after += int64(period)
			}
			h.probeAfter.Store(after)
			h.asked.Store(now)
			h.await.Store(s.probeKind(cause) != probeNone)
		}
		e.statusTrip = false
		e.period, t.period = period, period
		e.openUntil.Store(now + int64(period))
	case StateClosed:
		e.closedAt = now
		if h := e.host; h != nil && t.from != StateClosed {
			h.warmFrom.Store(now)
			h.consecutive.Store(0)
			h.fails.reset() // gobreaker's counts start again too
		}
	}
	// Recorded before the state is set: once it reads open, toHalfOpen
	// may end the open period and record its own transition, which must
	// come after this one.
	e.record(t)
	e.state.Store(uint32(t.to))
	if t.to == StateOpen && e.host != nil {
		s.startProbe(e)
	}
}

// notify runs the hooks for transitions recorded by the last call into cb.
// Call it after every call into cb, outside cb's lock.
func (e *entry) notify() {
	if e.pending.Load() {
		e.flush()
	}
}

func (e *entry) flush() {
	// Whoever holds hookMu re-checks pending after releasing it, so a
	// transition recorded while another goroutine (or a hook up this
	// goroutine's stack) runs the hooks is never stranded.
	for e.pending.Load() {
		if !e.hookMu.TryLock() {
			return
		}
		e.mu.Lock()
		q := e.queue
		e.queue = nil
		e.pending.Store(false)
		e.mu.Unlock()
		for _, t := range q {
			e.set.report(e, t)
		}
		e.hookMu.Unlock()
	}
}

// pin holds e for a request, unless e was evicted.
func (e *entry) pin() bool {
	if !e.evictable {
		return true
	}
	if e.pins.Add(1) > 0 {
		return true
	}
	e.pins.Add(-1) // evicted (or being looked at by evict): undo
	return false
}

func (e *entry) unpin() {
	if e.evictable {
		e.pins.Add(-1)
	}
}

// touch marks e used, writing only when it was not, so that a busy
// breaker's cache line is not written on every request.
func (e *entry) touch() {
	if e.evictable && !e.used.Load() {
		e.used.Store(true)
	}
}

// allow asks the pinned breaker for a slot. On refusal it unpins and
// returns the open failure for upstream; otherwise the request reports its
// outcome with finish.
func (e *entry) allow(upstream string) (func(error), *gateway.Failure) {
	if State(e.state.Load()) == StateOpen {
		now := e.set.now()
		if now < e.openUntil.Load() || e.awaiting() {
			e.ask(now)
			return nil, e.refuse(upstream, gobreaker.ErrOpenState, now)
		}
		e.toHalfOpen()
	}
	b := e.cb.Load()
	done, err := b.cb.Allow()
	e.notify()
	if err != nil {
		return nil, e.refuse(upstream, err, e.set.now())
	}
	if b.retired.Load() || State(e.state.Load()) == StateOpen || e.cb.Load() != b {
		// It tripped between the look and the ask: the gobreaker that
		// let the request through is retired.
		done(errExcluded)
		return nil, e.refuse(upstream, gobreaker.ErrOpenState, e.set.now())
	}
	return done, nil
}

// refuse unpins e and returns the open failure for upstream.
func (e *entry) refuse(upstream string, err error, now int64) *gateway.Failure {
	e.unpin()
	f := gateway.NewFailure(gateway.ClassOpen, upstream, err)
	f.RetryAfter = e.openFor(now)
	if f.RetryAfter <= 0 {
		// Half-open with every probe slot taken: the answer is a
		// probe's round trip away.
		f.RetryAfter = time.Second
	}
	return f
}

// finish reports a request's outcome (nil, errFailure or errExcluded) and
// unpins e.
func (e *entry) finish(done func(error), outcome error) {
	done(outcome)
	e.unpin()
	e.notify()
}

// openFor returns how long the breaker stays open, or 0. For a host out
// until a probe passes, that is until its next probe at the earliest.
func (e *entry) openFor(now int64) time.Duration {
	if State(e.state.Load()) != StateOpen {
		return 0
	}
	d := time.Duration(e.openUntil.Load() - now)
	if e.awaiting() {
		d = max(d, time.Duration(e.host.nextProbe.Load()-now), e.set.c.Health.PanicInterval)
	}
	return max(0, d)
}

// allows reports whether a request would be let through now, without
// taking a probe slot.
func (e *entry) allows() bool {
	switch State(e.state.Load()) {
	case StateClosed:
		return true
	case StateOpen:
		if now := e.set.now(); now < e.openUntil.Load() || e.awaiting() {
			e.ask(now)
			return false
		}
		e.toHalfOpen()
		e.notify()
	}
	// Half-open: a trial slot free?
	n := e.cb.Load().cb.Counts()
	switch State(e.state.Load()) {
	case StateClosed:
		return true
	case StateOpen:
		return false
	}
	return n.Requests-min(n.Requests, n.TotalExclusions) < e.set.c.MaxRequests
}

func (e *entry) status() Status {
	now := e.set.now()
	st := State(e.state.Load())
	var n Counts // zero while open
	if st != StateOpen {
		b := e.cb.Load()
		b.cb.State() // rolls the window
		n = countsOf(b.cb.Counts())
		st = State(e.state.Load())
	} else if now >= e.openUntil.Load() && !e.awaiting() {
		st = StateHalfOpen // due: the next request is a trial
	}
	s := Status{Name: e.set.c.Name, Key: e.key, Overflow: e.overflow, State: st, Counts: n}
	if st == StateOpen {
		// When a request may pass again: for a host out until a probe
		// passes, its next probe at the earliest, never a moment past.
		s.OpenUntil = time.Unix(0, now+int64(e.openFor(now)))
	}
	if h := e.host; h != nil {
		s.HostState, s.Share = e.hostHealth(now)
		since := h.spell.since.Load() // it may have rested before it went out
		if since == 0 && st != StateClosed {
			since = h.outSince.Load()
		}
		if since != 0 {
			s.Since = time.Unix(0, since)
			if c := gateway.Class(h.lastClass.Load()); c != gateway.ClassInternal || h.consecutive.Load() > 0 {
				s.LastClass = c.String()
			}
		}
		if n := h.nextProbe.Load(); n > now {
			s.NextProbe = time.Unix(0, n) // none while one is in flight
		}
		if s.HostState == pool.StateResting {
			s.RestUntil = time.Unix(0, h.restUntil.Load())
		}
	}
	return s
}

// tryEvict evicts e if no request holds it and it is stale: closed, or
// open with its open period over for a whole Interval (nobody asked for it
// since). It reads only e's atomics, never cb: a closed breaker opens only
// in a request's finish, which happens before that request unpins.
func (e *entry) tryEvict(now int64) bool {
	if !e.pins.CompareAndSwap(0, evicted) {
		return false // requests in flight
	}
	stale := now-e.openUntil.Load() >= int64(e.set.c.Interval)
	if h := e.host; h != nil && h.await.Load() && now-h.asked.Load() < int64(e.set.c.Interval) {
		stale = false // out until a probe passes, and still asked about
	}
	if State(e.state.Load()) == StateClosed || stale {
		return true
	}
	// Keep it. A request that tried to pin it meanwhile undoes its own
	// increment and asks again under s.mu, which the caller holds.
	e.pins.Add(-evicted)
	return false
}

// set is the breakers of one Settings: a single one, or one per key up to
// MaxKeys plus the overflow breaker. The key map is copied on write: the
// request path reads it with one atomic load and no lock.
//
// When the map is full, a new key takes the slot of a breaker chosen by a
// clock (second-chance) approximation of least-recently-used: the hand
// goes round the slots, sparing once each breaker used since it last
// passed, and evicts the first stale one no request holds. Making room is
// rationed to MaxKeys attempts per Interval, so that a flood of new keys
// costs a bounded amount of work and can turn the whole map over at most
// once a window. A key that gets no breaker — beyond the cap with nothing
// to evict or the ration spent, or longer than maxKeyLen — is counted in
// the overflow breaker, which never trips: overflow fails open.
type set struct {
	c      config
	keyed  bool
	single *entry // !keyed

	entries  atomic.Pointer[map[string]*entry]
	overflow *entry
	// fullUntil (Unix ns): until then the ration is spent, and new keys go
	// to the overflow breaker without taking mu.
	fullUntil atomic.Int64

	// prober runs a Hosts' probes; nil for a Breaker.
	prober *prober
	// clock is the set's clock in Unix ns; nil means time.Now. Tests set
	// it before first use.
	clock func() int64

	mu        sync.Mutex // serialises writers of entries; guards the fields below
	ring      []*entry   // the keyed breakers, one per slot: the clock's face
	hand      int
	turnStart int64 // Unix ns: when the current ration began
	turnLeft  int   // attempts to make room left in it
}

func newSet(c config, keyed bool) *set {
	return newSetWith(c, keyed, nil)
}

func newSetWith(c config, keyed bool, p *prober) *set {
	s := &set{c: c, keyed: keyed, prober: p}
	if keyed {
		s.entries.Store(&map[string]*entry{})
		s.overflow = s.newEntry("", kindOverflow)
	} else {
		s.single = s.newEntry("", kindSingle)
	}
	return s
}

// acquire returns the breaker for a request with key, pinned: it stays in
// the set until the request's outcome is in. The caller must call allow,
// and finish if allowed.
func (s *set) acquire(key string) *entry {
	if !s.keyed {
		return s.single
	}
	e := s.lookup(key)
	if e == nil {
		e = s.admit(key)
	}
	return s.pinned(e, key)
}

// pinned pins e, the breaker looked up for key. If e was evicted since the
// lookup, it looks again under mu, which the evictor held until the map
// without e was stored: the request's outcome must not land in a breaker
// that is no longer in the set.
func (s *set) pinned(e *entry, key string) *entry {
	for !e.pin() {
		e = s.insert(key)
	}
	e.touch()
	return e
}

// lookup returns the keyed breaker for key without creating one, or nil.
func (s *set) lookup(key string) *entry {
	return (*s.entries.Load())[key]
}

// admit returns a new breaker for key, or the overflow breaker.
func (s *set) admit(key string) *entry {
	if len(key) > maxKeyLen {
		return s.overflow
	}
	if len(*s.entries.Load()) >= s.c.MaxKeys && s.now() < s.fullUntil.Load() {
		return s.overflow
	}
	return s.insert(key)
}

// insert returns the breaker for key, creating it if there is room or room
// can be made, or the overflow breaker.
func (s *set) insert(key string) *entry {
	var spent bool
	defer func() {
		if spent {
			s.reportFull() // outside mu: a log handler may block
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.entries.Load()
	if e := old[key]; e != nil {
		return e
	}
	if len(key) > maxKeyLen {
		return s.overflow
	}
	slot, victim := len(s.ring), (*entry)(nil)
	if len(old) >= s.c.MaxKeys {
		now := s.now()
		var ok bool
		if ok, spent = s.ration(now); !ok {
			return s.overflow
		}
		if slot, victim = s.evict(now); victim == nil {
			return s.overflow
		}
	}
	m := make(map[string]*entry, len(old)+1)
	for k, e := range old {
		if e != victim {
			m[k] = e
		}
	}
	key = strings.Clone(key) // do not pin the request the key was cut from
	e := s.newEntry(key, kindKeyed)
	e.used.Store(true) // not the hand's next victim before its request pins it
	m[key] = e
	if slot == len(s.ring) {
		s.ring = append(s.ring, e)
	} else {
		s.ring[slot] = e
	}
	s.entries.Store(&m)
	return e
}

// ration takes one attempt to make room: MaxKeys per Interval. spent
// reports the attempt that found the ration spent first in its Interval.
func (s *set) ration(now int64) (ok, spent bool) {
	if now-s.turnStart >= int64(s.c.Interval) {
		s.turnStart, s.turnLeft = now, s.c.MaxKeys
	}
	if s.turnLeft == 0 {
		until := s.turnStart + int64(s.c.Interval)
		return false, s.fullUntil.Swap(until) != until
	}
	s.turnLeft--
	return true, false
}

// evict moves the clock's hand, at most twice round, to the first breaker
// it may evict, and returns its slot and the breaker; nil if none.
func (s *set) evict(now int64) (int, *entry) {
	n := len(s.ring)
	for range 2 * n {
		i := s.hand
		s.hand = (i + 1) % n
		e := s.ring[i]
		if e.used.Swap(false) {
			continue
		}
		if e.tryEvict(now) {
			return i, e
		}
	}
	return 0, nil
}

// reportFull logs that new keys go unguarded until the ration renews.
func (s *set) reportFull() {
	logger := s.c.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger.LogAttrs(context.Background(), slog.LevelWarn,
		"breaker: key cap reached; requests for new keys pass unguarded",
		slog.String("breaker", s.c.Name),
		slog.Int("max_keys", s.c.MaxKeys),
		slog.Time("until", time.Unix(0, s.fullUntil.Load())))
}

func (s *set) states() []Status {
	if !s.keyed {
		return []Status{s.single.status()}
	}
	m := *s.entries.Load()
	es := make([]*entry, 0, len(m)+1)
	for _, e := range m {
		es = append(es, e)
	}
	sort.Slice(es, func(i, j int) bool { return es[i].key < es[j].key })
	out := make([]Status, len(es), len(es)+1)
	for i, e := range es {
		out[i] = e.status()
	}
	if ov := s.overflow.status(); ov.Counts.Requests > 0 {
		out = append(out, ov) // only while keys pass unguarded
	}
	return out
}

// report logs a transition and calls the user's hook. A host's
// transitions are debug lines: its leaving and rejoining service are the
// lines operators read (see spell).
func (s *set) report(e *entry, t transition) {
	if e.host != nil {
		switch {
		case t.to == StateOpen && t.from == StateClosed:
			e.leave(s.now(), pool.StateOut, t.cause)
		case t.to == StateClosed && t.from != StateClosed:
			e.rejoin(s.now())
		}
	}
	logger := s.logger()
	ctx := context.Background()
	if logger.Enabled(ctx, slog.LevelDebug) || logger.Enabled(ctx, slog.LevelWarn) {
		attrs := []slog.Attr{
			slog.String("breaker", s.c.Name),
			slog.String("key", e.key),
			slog.String("from", t.from.String()),
			slog.String("to", t.to.String()),
		}
		if e.overflow {
			attrs = append(attrs, slog.Bool("overflow", true))
		}
		if t.to == StateOpen {
			attrs = append(attrs, slog.Duration("open_for", t.period))
			if e.host != nil {
				attrs = append(attrs, slog.String("cause", t.cause.String()))
			}
		}
		level := slog.LevelWarn
		if e.host != nil || t.spell || (t.from == StateOpen && t.to == StateHalfOpen) {
			// Within one out spell (half-open tries that fail) the
			// transitions are debug: the spell's start and end are warn.
			level = slog.LevelDebug
		}
		logger.LogAttrs(ctx, level, "breaker: state changed", attrs...)
	}
	if s.c.OnStateChange != nil {
		s.c.OnStateChange(s.c.Name, e.key, t.from, t.to)
	}
}

// logger is Settings.Logger, or slog.Default().
func (s *set) logger() *slog.Logger {
	if s.c.Logger != nil {
		return s.c.Logger
	}
	return slog.Default()
}

// now is the set's clock, in Unix ns.
func (s *set) now() int64 {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now().UnixNano()
}
