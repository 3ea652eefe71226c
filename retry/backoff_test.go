package retry

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBackoffCeiling: min(cap, base·2ⁿ), without overflow for any n.
func TestBackoffCeiling(t *testing.T) {
	b := backoff{base: DefaultBaseDelay, cap: DefaultMaxDelay}
	ms := time.Millisecond
	for n, want := range []time.Duration{25 * ms, 50 * ms, 100 * ms, 200 * ms, 250 * ms, 250 * ms} {
		assert.Equal(t, want, b.ceiling(n), "n=%d", n)
	}
	assert.Equal(t, 250*ms, b.ceiling(1000))
	huge := backoff{base: 1, cap: math.MaxInt64}
	for n := range 200 {
		assert.Positive(t, huge.ceiling(n), "n=%d", n)
	}
	assert.Zero(t, backoff{}.delay(3))
}

// TestBackoffFullJitterRange: the delay is drawn from [0, ceiling): the
// random source is asked for exactly the ceiling, and its extremes map to 0
// and ceiling-1ns.
func TestBackoffFullJitterRange(t *testing.T) {
	var asked []int64
	low := backoff{base: 25 * time.Millisecond, cap: 250 * time.Millisecond,
		int64n: func(n int64) int64 { asked = append(asked, n); return 0 }}
	high := low
	high.int64n = func(n int64) int64 { return n - 1 }
	for n := range 6 {
		assert.Zero(t, low.delay(n))
		assert.Equal(t, low.ceiling(n)-1, high.delay(n))
	}
	require.Len(t, asked, 6)
	assert.Equal(t, int64(25*time.Millisecond), asked[0])
	assert.Equal(t, int64(250*time.Millisecond), asked[5])
}

// TestBackoffDistribution: with the real source, delays stay within bounds
// and are spread uniformly over them (mean and deciles, with wide margins:
// 20 000 samples put each decile at 2000 ± 42, one standard deviation).
func TestBackoffDistribution(t *testing.T) {
	b := backoff{base: DefaultBaseDelay, cap: DefaultMaxDelay}
	const samples = 20_000
	for n := range 5 {
		ceil := b.ceiling(n)
		var sum float64
		var deciles [10]int
		for range samples {
			d := b.delay(n)
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.Less(t, d, ceil)
			sum += float64(d)
			deciles[int(10*d/ceil)]++
		}
		mean := sum / samples / float64(ceil)
		assert.InDelta(t, 0.5, mean, 0.05, "n=%d: mean/ceiling", n)
		for i, c := range deciles {
			assert.InDelta(t, samples/10, c, samples*0.03, "n=%d decile %d", n, i)
		}
	}
}

// TestNewUsesDefaultBackoff: the zero Options give base 25 ms, cap 250 ms.
func TestNewUsesDefaultBackoff(t *testing.T) {
	rt, err := New(Options{})
	require.NoError(t, err)
	assert.Equal(t, 25*time.Millisecond, rt.backoff.base)
	assert.Equal(t, 250*time.Millisecond, rt.backoff.cap)
}
