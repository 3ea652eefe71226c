package retry

import (
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOptionsValidation: every invalid field is an error naming it, all of
// them at once.
func TestOptionsValidation(t *testing.T) {
	cases := []struct {
		name  string
		o     Options
		field string
	}{
		{"negative attempts", Options{Attempts: -1}, "Attempts"},
		{"negative base", Options{BaseDelay: -time.Millisecond}, "BaseDelay"},
		{"negative cap", Options{MaxDelay: -time.Millisecond}, "MaxDelay"},
		{"base above cap", Options{BaseDelay: time.Second, MaxDelay: time.Millisecond}, "BaseDelay"},
		{"negative per-try", Options{PerTryTimeout: -1}, "PerTryTimeout"},
		{"negative max retry-after", Options{MaxRetryAfter: -1}, "MaxRetryAfter"},
		{"negative replay", Options{MaxReplayBytes: -1}, "MaxReplayBytes"},
		{"negative replay total", Options{MaxReplayTotal: -1}, "MaxReplayTotal"},
		{"replay total below per-request", Options{MaxReplayBytes: 2 << 20, MaxReplayTotal: 1 << 20}, "MaxReplayTotal"},
		{"negative ratio", Options{BudgetRatio: -0.1}, "BudgetRatio"},
		{"NaN ratio", Options{BudgetRatio: math.NaN()}, "BudgetRatio"},
		{"negative floor", Options{BudgetMinPerSecond: -1}, "BudgetMinPerSecond"},
		{"bad header", Options{AttemptHeader: "X Attempt"}, "AttemptHeader"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rt, err := New(c.o)
			require.Error(t, err)
			assert.Nil(t, rt)
			assert.Contains(t, err.Error(), c.field)
			assert.Contains(t, err.Error(), "retry: Options.")
		})
	}
	_, err := New(Options{Attempts: -1, PerTryTimeout: -1, AttemptHeader: "a b"})
	require.Error(t, err)
	for _, f := range []string{"Attempts", "PerTryTimeout", "AttemptHeader"} {
		assert.Contains(t, err.Error(), f)
	}
}

// TestZeroOptionsAreTheDefaults: New(Options{}) never fails and applies
// every documented default.
func TestZeroOptionsAreTheDefaults(t *testing.T) {
	rt, err := New(Options{})
	require.NoError(t, err)
	c := rt.cfg
	assert.Equal(t, 3, c.attempts)
	assert.Equal(t, 25*time.Millisecond, c.base)
	assert.Equal(t, 250*time.Millisecond, c.cap)
	assert.Zero(t, c.perTry)
	assert.Equal(t, time.Second, c.maxRetryAfter)
	assert.Equal(t, 1<<20, c.maxReplay)
	assert.Equal(t, 64<<20, c.maxReplayTotal)
	assert.Equal(t, int64(64<<20), rt.replayMem.max)
	assert.False(t, c.trustKey)
	assert.Equal(t, 0.2, c.ratio)
	assert.Equal(t, 10.0, c.floor)
	assert.Empty(t, c.attemptHeader)
	assert.Equal(t, 10*time.Second, BudgetWindow)

	rt, err = New(Options{BudgetRatio: math.Inf(1), BudgetMinPerSecond: math.Inf(1), AttemptHeader: "x-try"})
	require.NoError(t, err, "infinite budget values are allowed: no limit")
	assert.Equal(t, "X-Try", rt.cfg.attemptHeader)
}

type plainHandler struct{}

func (*plainHandler) ServeHTTP(http.ResponseWriter, *http.Request) {}

// TestOneAttemptIsPassThrough: Attempts 1 without a per-try duty means no
// retry layer at all; with one (PerTryTimeout, AttemptHeader), the layer
// stays for it.
func TestOneAttemptIsPassThrough(t *testing.T) {
	rt, err := New(Options{Attempts: 1})
	require.NoError(t, err)
	h := &plainHandler{}
	assert.Same(t, h, rt.Wrap(h))
	for _, o := range []Options{{Attempts: 1, PerTryTimeout: time.Second}, {Attempts: 1, AttemptHeader: "X-Attempt"}} {
		rt, err = New(o)
		require.NoError(t, err)
		assert.NotSame(t, h, rt.Wrap(h), "%+v", o)
	}
	rt, err = New(Options{})
	require.NoError(t, err)
	assert.NotSame(t, h, rt.Wrap(h))
}

// TestOneDelaySetAlone: a default yields to the other delay set alone.
func TestOneDelaySetAlone(t *testing.T) {
	c, err := Options{MaxDelay: 10 * time.Millisecond}.resolve()
	require.NoError(t, err)
	assert.Equal(t, 10*time.Millisecond, c.base)
	assert.Equal(t, 10*time.Millisecond, c.cap)
	c, err = Options{BaseDelay: time.Second}.resolve()
	require.NoError(t, err)
	assert.Equal(t, time.Second, c.base)
	assert.Equal(t, time.Second, c.cap)
	_, err = Options{BaseDelay: time.Second, MaxDelay: time.Millisecond}.resolve()
	assert.Error(t, err, "both set and inconsistent is still an error")
}

// TestReplayPairSetAlone: MaxReplayBytes and MaxReplayTotal, one set alone,
// never contradict each other: the defaulted one yields. Both set, they
// must agree; math.MaxInt lifts the total cap.
func TestReplayPairSetAlone(t *testing.T) {
	c, err := Options{MaxReplayTotal: 512 << 10}.resolve()
	require.NoError(t, err)
	assert.Equal(t, 512<<10, c.maxReplay, "a per-request default above the total yields")
	assert.Equal(t, 512<<10, c.maxReplayTotal)

	c, err = Options{MaxReplayBytes: 128 << 20}.resolve()
	require.NoError(t, err)
	assert.Equal(t, 128<<20, c.maxReplay)
	assert.Equal(t, 128<<20, c.maxReplayTotal, "a total default below the per-request cap yields")

	c, err = Options{MaxReplayBytes: 4 << 10, MaxReplayTotal: 4 << 10}.resolve()
	require.NoError(t, err, "equal is fine: one body at a time")
	assert.Equal(t, 4<<10, c.maxReplayTotal)

	c, err = Options{MaxReplayTotal: math.MaxInt}.resolve()
	require.NoError(t, err)
	assert.Equal(t, DefaultMaxReplayBytes, c.maxReplay)
	assert.Equal(t, math.MaxInt, c.maxReplayTotal)
}
