package breaker

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/proxykit/proxykit/gateway"
)

// Outcomes are reported to gobreaker as these errors: nil is a success.
var (
	errFailure  = errors.New("breaker: failure")
	errExcluded = errors.New("breaker: excluded")
)

// entry is one breaker: gobreaker's, plus what gobreaker does not expose
// (when it reopens) and the transitions waiting for the hooks.
type entry struct {
	set      *set
	key      string
	overflow bool
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]

	// state mirrors cb's state as of its last transition, and openUntil
	// (Unix ns) the end of the current open period. Both are written under
	// cb's lock, by onStateChange, and read without it.
	state     atomic.Uint32
	openUntil atomic.Int64

	pending atomic.Bool // queue is not empty
	mu      sync.Mutex  // guards queue
	queue   []transition
	hookMu  sync.Mutex // serialises the hooks
}

type transition struct {
	from, to State
}

func (s *set) newEntry(key string, overflow bool) *entry {
	e := &entry{set: s, key: key, overflow: overflow}
	e.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:          key,
		MaxRequests:   s.c.MaxRequests,
		Interval:      s.c.Interval,
		BucketPeriod:  s.c.BucketPeriod,
		Timeout:       s.c.Timeout,
		ReadyToTrip:   func(n gobreaker.Counts) bool { return s.c.readyToTrip(countsOf(n)) },
		OnStateChange: e.onStateChange,
		IsExcluded:    func(err error) bool { return err == errExcluded },
	})
	return e
}

// onStateChange runs under cb's lock: it records, and leaves the hooks to
// flush.
func (e *entry) onStateChange(_ string, from, to gobreaker.State) {
	t := transition{stateOf(from), stateOf(to)}
	if t.to == StateOpen {
		e.openUntil.Store(time.Now().Add(e.set.c.Timeout).UnixNano())
	}
	e.state.Store(uint32(t.to))
	e.mu.Lock()
	e.queue = append(e.queue, t)
	e.pending.Store(true)
	e.mu.Unlock()
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

// allow asks the breaker for a slot. On refusal it returns the open failure
// for upstream.
func (e *entry) allow(upstream string) (func(error), *gateway.Failure) {
	done, err := e.cb.Allow()
	e.notify()
	if err != nil {
		f := gateway.NewFailure(gateway.ClassOpen, upstream, err)
		f.RetryAfter = e.openFor(time.Now())
		if f.RetryAfter <= 0 {
			// Half-open with every probe slot taken: the answer is a
			// probe's round trip away.
			f.RetryAfter = time.Second
		}
		return nil, f
	}
	return done, nil
}

// finish reports a request's outcome (nil, errFailure or errExcluded).
func (e *entry) finish(done func(error), outcome error) {
	done(outcome)
	e.notify()
}

// openFor returns how long the breaker stays open, or 0.
func (e *entry) openFor(now time.Time) time.Duration {
	if State(e.state.Load()) != StateOpen {
		return 0
	}
	return max(0, time.Duration(e.openUntil.Load()-now.UnixNano()))
}

// allows reports whether a request would be let through now, without
// taking a probe slot.
func (e *entry) allows() bool {
	switch State(e.state.Load()) {
	case StateClosed:
		return true
	case StateOpen:
		if time.Now().UnixNano() < e.openUntil.Load() {
			return false
		}
	}
	// Half-open, or open and due for half-open: ask gobreaker.
	st := e.cb.State()
	e.notify()
	switch st {
	case gobreaker.StateClosed:
		return true
	case gobreaker.StateOpen:
		return false
	}
	n := e.cb.Counts()
	return n.Requests-min(n.Requests, n.TotalExclusions) < e.set.c.MaxRequests
}

func (e *entry) status() Status {
	st := stateOf(e.cb.State()) // rolls the window first
	e.notify()
	s := Status{Name: e.set.c.Name, Key: e.key, Overflow: e.overflow, State: st, Counts: countsOf(e.cb.Counts())}
	if st == StateOpen {
		s.OpenUntil = time.Unix(0, e.openUntil.Load())
	}
	return s
}

// idle reports a closed breaker with nothing in its window. It may record a
// transition (open to half-open): the caller must notify, outside its locks.
func (e *entry) idle() bool {
	return e.cb.State() == gobreaker.StateClosed && e.cb.Counts().Requests == 0
}

// set is the breakers of one Settings: a single one, or one per key up to
// MaxKeys plus an overflow breaker. The key map is copied on write: the
// request path reads it with one atomic load and no lock.
type set struct {
	c      config
	keyed  bool
	single *entry // !keyed

	entries   atomic.Pointer[map[string]*entry]
	overflow  *entry
	mu        sync.Mutex   // serialises writers of entries
	lastSweep atomic.Int64 // Unix ns
}

func newSet(c config, keyed bool) *set {
	s := &set{c: c, keyed: keyed}
	if keyed {
		s.entries.Store(&map[string]*entry{})
		s.overflow = s.newEntry("", true)
	} else {
		s.single = s.newEntry("", false)
	}
	return s
}

// get returns the breaker for key, creating it if there is room.
func (s *set) get(key string) *entry {
	if !s.keyed {
		return s.single
	}
	if e := s.lookup(key); e != nil {
		return e
	}
	if o := s.overflowFor(key); o != nil && !s.sweepDue(time.Now()) {
		return o
	}
	return s.insert(key)
}

// lookup returns the breaker for key without creating one, or nil.
func (s *set) lookup(key string) *entry {
	if !s.keyed {
		return s.single
	}
	return (*s.entries.Load())[key]
}

// overflowFor returns the overflow breaker if a request for key would be
// sent to it now (an overlong key, or no room), or nil.
func (s *set) overflowFor(key string) *entry {
	if !s.keyed {
		return nil
	}
	if len(key) > maxKeyLen || len(*s.entries.Load()) >= s.c.MaxKeys {
		return s.overflow
	}
	return nil
}

func (s *set) sweepDue(now time.Time) bool {
	return now.UnixNano()-s.lastSweep.Load() >= int64(s.c.Interval)
}

func (s *set) insert(key string) *entry {
	var touched []*entry
	defer func() {
		// Hooks may read the set: run them once s.mu is released.
		for _, e := range touched {
			e.notify()
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
	m := make(map[string]*entry, min(len(old)+1, s.c.MaxKeys))
	if now := time.Now(); len(old) >= s.c.MaxKeys && s.sweepDue(now) {
		// Full: drop the breakers idle for a whole window.
		s.lastSweep.Store(now.UnixNano())
		for k, e := range old {
			if !e.idle() {
				m[k] = e
			}
			if e.pending.Load() {
				touched = append(touched, e)
			}
		}
	} else {
		maps.Copy(m, old)
	}
	if len(m) >= s.c.MaxKeys {
		if len(m) < len(old) {
			s.entries.Store(&m)
		}
		return s.overflow
	}
	key = strings.Clone(key) // do not pin the request the key was cut from
	e := s.newEntry(key, false)
	m[key] = e
	s.entries.Store(&m)
	return e
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
	es = append(es, s.overflow)
	out := make([]Status, len(es))
	for i, e := range es {
		out[i] = e.status()
	}
	return out
}

// gatewayStatus is states in the shape of gateway.StatusView.
func (s *set) gatewayStatus() []gateway.BreakerStatus {
	st := s.states()
	out := make([]gateway.BreakerStatus, len(st))
	for i, b := range st {
		name := b.Key
		switch {
		case b.Overflow:
			name = b.Name + " (overflow)"
		case name == "":
			name = b.Name
		}
		out[i] = gateway.BreakerStatus{
			Name:                name,
			State:               b.State.String(),
			Requests:            b.Counts.Requests,
			Failures:            b.Counts.Failures,
			ConsecutiveFailures: b.Counts.ConsecutiveFailures,
			OpenUntil:           b.OpenUntil,
		}
	}
	return out
}

// report logs a transition and calls the user's hook.
func (s *set) report(e *entry, t transition) {
	logger := s.c.Logger
	if logger == nil {
		logger = slog.Default()
	}
	ctx := context.Background()
	if logger.Enabled(ctx, slog.LevelWarn) {
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
			attrs = append(attrs, slog.Duration("open_for", s.c.Timeout))
		}
		logger.LogAttrs(ctx, slog.LevelWarn, "breaker: state changed", attrs...)
	}
	if s.c.OnStateChange != nil {
		s.c.OnStateChange(s.c.Name, e.key, t.from, t.to)
	}
}
