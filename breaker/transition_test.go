package breaker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHalfOpenSwapOrdered: many goroutines drive one breaker through
// closed, open and half-open as fast as it goes, on a clock that jumps
// past every open period at once, so that the end of an open period (the
// swap to a fresh gobreaker) races trial requests that read the state
// before it. The hook must see one gapless sequence: the open→half-open
// of a swap is recorded, and the state set, before any trial of the fresh
// gobreaker can move it on; otherwise a trial's half-open→open lands
// first and the swap's late half-open overwrites the state, so the host
// skips its open period.
func TestHalfOpenSwapOrdered(t *testing.T) {
	var mu sync.Mutex
	var last State
	var errs []string
	entered := map[State]int{}
	hook := func(_, _ string, from, to State) {
		mu.Lock()
		defer mu.Unlock()
		if from != last && len(errs) < 5 {
			errs = append(errs, fmt.Sprintf("%v → %v after entering %v", from, to, last))
		}
		last = to
		entered[to]++
	}
	b, err := New(Settings{Logger: quietLog, ConsecutiveFailures: 1, MaxRequests: 2,
		Timeout: time.Second, MaxTimeout: time.Second, OnStateChange: hook})
	require.NoError(t, err)
	// Every read of the clock is an hour after the one before: an open
	// period is over as soon as it is set.
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	b.set.clock = func() int64 { return now.Add(int64(time.Hour)) }
	e := b.set.single

	const workers = 8
	const perWorker = 4000
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				done, f := e.allow("")
				if f != nil {
					continue
				}
				var outcome error
				if (g+i)%3 == 0 {
					outcome = errFailure
				}
				e.finish(done, outcome)
			}
		}()
	}
	wg.Wait()
	e.notify()

	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, errs, "transitions out of order")
	for _, s := range []State{StateOpen, StateHalfOpen, StateClosed} {
		assert.Positive(t, entered[s], "entered %v", s)
	}
	assert.Equal(t, last, State(e.state.Load()), "the state is the last transition's")
}
