package retry

import (
	"errors"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func allowed(b *budget, at time.Time, tries int) int {
	n := 0
	for range tries {
		if b.tryRetryAt(at) {
			n++
		}
	}
	return n
}

// TestBudgetRatioAndFloor: retries may be 20% of the requests in the
// window, plus the floor's tokens (a burst of 10, refilled at 10/s).
func TestBudgetRatioAndFloor(t *testing.T) {
	b := newBudget(0.2, 10, t0)
	at := t0.Add(500 * time.Millisecond)
	for range 1000 {
		b.requestAt(at)
	}
	assert.Equal(t, 200+10, allowed(b, at, 1000), "20% of 1000, plus the floor's burst")
	assert.Equal(t, 10, allowed(b, at.Add(time.Second), 1000), "a second later: only the refilled floor")
	req, ret := b.windowAt(at.Add(time.Second))
	assert.Equal(t, int64(1000), req)
	assert.Equal(t, int64(220), ret)

	later := t0.Add(time.Minute)
	req, ret = b.windowAt(later)
	assert.Zero(t, req, "old buckets leave the window")
	assert.Zero(t, ret)
	assert.Equal(t, 10, allowed(b, later, 100), "an idle window leaves the floor")
}

// TestBudgetWindowSlides: the window holds the last ten one-second buckets.
func TestBudgetWindowSlides(t *testing.T) {
	b := newBudget(0.2, 10, t0)
	for s := range 15 {
		for range 100 {
			b.requestAt(t0.Add(time.Duration(s)*time.Second + 300*time.Millisecond))
		}
	}
	req, _ := b.windowAt(t0.Add(14*time.Second + 900*time.Millisecond))
	assert.Equal(t, int64(1000), req, "seconds 5 to 14")
	req, _ = b.windowAt(t0.Add(20 * time.Second))
	assert.Equal(t, int64(400), req, "seconds 11 to 14")
	req, _ = b.windowAt(t0.Add(24 * time.Second))
	assert.Equal(t, int64(0), req)
	req, _ = b.windowAt(t0.Add(-time.Hour))
	assert.Equal(t, int64(0), req, "a time before the epoch counts as second 0, which is long gone")
}

// TestBudgetUnlimited: an infinite ratio disables the budget.
func TestBudgetUnlimited(t *testing.T) {
	b := newBudget(math.Inf(1), 10, t0)
	assert.Equal(t, 5000, allowed(b, t0, 5000))
}

// TestBudgetConcurrent: concurrent recording loses no count (and is clean
// under -race).
func TestBudgetConcurrent(t *testing.T) {
	b := newBudget(0.2, 10, t0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				at := t0.Add(time.Duration(g*500+i) * time.Millisecond)
				b.requestAt(at)
				b.tryRetryAt(at)
			}
		}()
	}
	wg.Wait()
	req, ret := b.windowAt(t0.Add(3999 * time.Millisecond))
	assert.Equal(t, int64(4000), req, "every request of seconds 0 to 3 counted")
	assert.Positive(t, ret)
}

// TestBudgetAmplificationAt simulates a total outage for a minute with the
// At variants: 50 client requests a second, each wanting two retries.
// Upstream load stays ≤ 1.2 × the client requests + the floor.
func TestBudgetAmplificationAt(t *testing.T) {
	b := newBudget(DefaultBudgetRatio, DefaultBudgetMinPerSecond, t0)
	const rps, seconds = 50, 60
	requests, attempts := 0, 0
	for i := range rps * seconds {
		at := t0.Add(time.Duration(i) * time.Second / rps)
		b.requestAt(at)
		requests++
		attempts++
		for range 2 {
			if !b.tryRetryAt(at) {
				break
			}
			attempts++
		}
	}
	floor := DefaultBudgetMinPerSecond*seconds + DefaultBudgetMinPerSecond
	assert.LessOrEqual(t, float64(attempts), 1.2*float64(requests)+floor)
	t.Logf("simulated outage: %d client requests, %d upstream attempts: %.3f×", requests, attempts, float64(attempts)/float64(requests))
}

// TestBudgetCapsAmplificationUnderOutage drives a real total outage (every
// upstream refuses) through the middleware and counts what the upstreams
// were offered: at most 1.2 × the client requests, plus the floor over the
// time the test took. Without a budget it would be 3×.
func TestBudgetCapsAmplificationUnderOutage(t *testing.T) {
	a, b := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewServer(gatewaytest.Refused)
	closeLater(t, a, b)
	var counter *countingRT
	logs := &logRecorder{}
	rt := mustNew(t, Options{BaseDelay: 100 * time.Microsecond, MaxDelay: 100 * time.Microsecond, Logger: slog.New(logs)})
	proxy := newProxyVia(t, ordered(t, a, b), func(next http.RoundTripper) http.RoundTripper {
		counter = &countingRT{next: next}
		return counter
	})
	// An outer layer sees, in the final Failure, that the budget stopped
	// the retry (errorpage marks the gateway hop for it).
	var budgetMarked atomic.Int64
	wrapped := rt.Wrap(proxy)
	front := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := newInterceptor(w, nil)
		wrapped.ServeHTTP(i, r)
		if f := i.Failure(); f != nil && errors.Is(f, gateway.ErrRetryBudget) {
			budgetMarked.Add(1)
		}
	}))

	const clients = 300
	start := time.Now()
	for range clients {
		res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
		require.Equal(t, http.StatusBadGateway, res.status)
	}
	elapsed := time.Since(start)
	upstream := counter.n.Load()
	floor := DefaultBudgetMinPerSecond * (1 + math.Ceil(elapsed.Seconds()))
	assert.LessOrEqual(t, float64(upstream), 1.2*clients+floor)
	assert.Positive(t, rt.Stats().BudgetExhausted)
	assert.Equal(t, rt.Stats().BudgetExhausted, budgetMarked.Load(), "every denied retry is marked in its Failure")
	warnings := len(logs.lines(slog.LevelWarn, "retry: budget exhausted, not retrying"))
	assert.GreaterOrEqual(t, warnings, 1, "exhaustion is logged")
	assert.LessOrEqual(t, float64(warnings), 1+math.Ceil(elapsed.Seconds()), "at most one warning a second")
	t.Logf("total outage: %d client requests in %v, %d upstream attempts: %.3f× (bound %.0f)",
		clients, elapsed.Round(time.Millisecond), upstream, float64(upstream)/clients, 1.2*clients+floor)
}
