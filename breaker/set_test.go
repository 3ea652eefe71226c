package breaker

import (
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func keyedSet(t *testing.T, s Settings) *set {
	t.Helper()
	s.Logger = slog.New(slog.DiscardHandler)
	c, err := s.normalize()
	require.NoError(t, err)
	return newSet(c, true)
}

// serveOn runs one request's protocol on the breaker for key: acquire,
// allow, finish with outcome. It returns the breaker used.
func serveOn(t *testing.T, s *set, key string, outcome error) *entry {
	t.Helper()
	e := s.acquire(key)
	done, f := e.allow(key)
	require.Nil(t, f)
	e.finish(done, outcome)
	return e
}

// TestLookupRacingEviction: a request looks its key's breaker
// up; before it takes a slot, a new key at the cap evicts that breaker.
// The pin fails, the request looks again, and its outcome counts in the
// breaker the set holds, not in the dropped one outside the set.
func TestLookupRacingEviction(t *testing.T) {
	s := keyedSet(t, Settings{MaxKeys: 2})
	a := serveOn(t, s, "a", nil)
	serveOn(t, s, "c", nil)

	e := s.lookup("a") // a request looks "a" up...
	require.Same(t, a, e)
	serveOn(t, s, "b", nil) // ...a new key at the cap evicts it...
	require.Nil(t, s.lookup("a"), "a was the least recently used")

	got := s.pinned(e, "a") // ...before the request pins it.
	assert.NotSame(t, e, got, "an evicted breaker cannot be pinned")
	require.Same(t, s.lookup("a"), got, "the request holds the breaker in the set")
	done, f := got.allow("a")
	require.Nil(t, f)
	got.finish(done, errFailure)
	assert.EqualValues(t, 1, s.lookup("a").cb.Load().cb.Counts().TotalFailures, "its outcome counts")
	assert.Zero(t, e.cb.Load().cb.Counts().TotalFailures, "nothing landed in the evicted breaker")
}

// TestEvictionSparesHeld: a breaker with a request in flight is never
// evicted; an open one is looked at and kept, and stays usable.
func TestEvictionSparesHeld(t *testing.T) {
	s := keyedSet(t, Settings{MaxKeys: 1, ConsecutiveFailures: 1, Timeout: time.Minute})
	a := s.acquire("a")
	done, f := a.allow("a")
	require.Nil(t, f)
	assert.Same(t, s.overflow, s.acquire("b"), "a is in flight: b gets no place")
	assert.Same(t, a, s.lookup("a"))
	a.finish(done, errFailure) // trips a
	require.Equal(t, StateOpen, State(a.state.Load()))

	s = keyedSet(t, Settings{MaxKeys: 1, ConsecutiveFailures: 1, Timeout: time.Minute})
	a = serveOn(t, s, "a", errFailure)
	require.Equal(t, StateOpen, State(a.state.Load()))
	o := s.acquire("b")
	assert.Same(t, s.overflow, o, "an open breaker keeps its place")
	done, f = o.allow("b")
	require.Nil(t, f)
	o.finish(done, nil)
	assert.Same(t, a, s.lookup("a"))
	assert.Zero(t, a.pins.Load(), "the look at it left no pin behind")
	assert.Same(t, a, s.acquire("a"), "and it can be held again")
	_, f = a.allow("a")
	require.NotNil(t, f, "still open")
	assert.Zero(t, a.pins.Load(), "a refused request lets go")
}

// TestEvictionNeverStrandsOutcome races requests on 8 keys
// against eviction (4 places, a window and ration of 1 ms, requests
// spaced so that breakers fall idle): every request's outcome must land in
// the breaker the set holds for its key, or in the overflow entry, never
// in a breaker already dropped. Run with -race.
func TestEvictionNeverStrandsOutcome(t *testing.T) {
	s := keyedSet(t, Settings{MaxKeys: 4, Interval: time.Millisecond})
	var stranded, served atomic.Int64
	var breakers sync.Map // every breaker that served, to show the churn
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 400 {
				key := strconv.Itoa(rand.IntN(8))
				e := s.acquire(key)
				done, f := e.allow(key)
				if f != nil {
					continue
				}
				served.Add(1)
				if !e.overflow && s.lookup(key) != e {
					stranded.Add(1)
				}
				e.finish(done, nil)
				breakers.Store(e, true)
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	n := 0
	breakers.Range(func(any, any) bool { n++; return true })
	t.Logf("%d requests served by %d breakers", served.Load(), n)
	assert.Greater(t, n, 16, "keys were evicted and came back")
	s.mu.Lock()
	for _, e := range s.ring {
		assert.Zero(t, e.pins.Load(), "no pin left behind")
	}
	s.mu.Unlock()
	assert.Zero(t, stranded.Load(), "outcomes reported to a breaker no longer in the set")
}
