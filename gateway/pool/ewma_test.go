package pool

import (
	"log/slog"
	"math"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const ms = float64(time.Millisecond)

func TestPeakEWMA(t *testing.T) {
	tau := float64(10 * time.Second)
	var e peakEWMA
	assert.Zero(t, e.value(0, tau))
	e.observe(0, 10*ms, tau)
	assert.Equal(t, 10*ms, e.value(0, tau), "the first sample is the estimate")
	e.observe(int64(time.Millisecond), 50*ms, tau)
	assert.Equal(t, 50*ms, e.value(int64(time.Millisecond), tau), "a peak counts at once")

	var d peakEWMA
	d.observe(0, 10*ms, tau)
	d.observe(int64(tau), 1*ms, tau)
	want := 10*ms*math.Exp(-1) + 1*ms*(1-math.Exp(-1))
	assert.InDelta(t, want, d.value(int64(tau), tau), 1, "a lower sample blends in with the time elapsed")
	assert.InDelta(t, want*math.Exp(-1), d.value(2*int64(tau), tau), 1, "idle, the estimate decays toward zero")
	assert.Equal(t, d.value(int64(tau), tau), d.value(int64(tau)-5, tau), "no decay backwards in time")
}

func TestLoadCost(t *testing.T) {
	assert.Zero(t, loadCost(0, 0), "an idle unmeasured host is tried first")
	assert.Greater(t, loadCost(0, 1), loadCost(time.Minute.Seconds()*1e9, 100), "an unmeasured busy host is tried last")
	assert.Equal(t, 3*ms, loadCost(1*ms, 2))
}

// fakeClockPool returns a pool over n hosts whose clock the test sets.
func fakeClockPool(t *testing.T, n int) (*Pool, *int64) {
	var targets []*url.URL
	for i := range n {
		u, err := url.Parse("http://10.0.0." + string(rune('1'+i)) + ":80")
		require.NoError(t, err)
		targets = append(targets, u)
	}
	p, err := New(targets...)
	require.NoError(t, err)
	p.Logger = slog.New(slog.DiscardHandler)
	var now int64
	p.clock = func() int64 { return now }
	return p, &now
}

// TestFailurePenalty: a host that fails fast never looks cheaper than the
// slowest successful host, and however long its failure streak, its cost
// falls back below a healthy host's within a bounded time once it stops.
func TestFailurePenalty(t *testing.T) {
	p, now := fakeClockPool(t, 2)
	good, bad := p.targets().ups[0], p.targets().ups[1]
	tau := p.decay()
	p.observe(good, false, int64(5*time.Millisecond), *now)
	for range 1000 {
		*now += int64(time.Millisecond)
		p.observe(bad, true, int64(10*time.Microsecond), *now)
	}
	assert.GreaterOrEqual(t, bad.cost.value(*now, tau), 2*5*ms*math.Exp(-1.0/10), "failing fast must not look fast")
	assert.LessOrEqual(t, bad.cost.value(*now, tau), 2*5*ms, "the penalty is bounded")
	assert.Same(t, good, p.pick(nil, nil, *now), "the failing host loses every pairing")

	// Once it stops failing, its cost wears off: within Decay·ln 2, plus
	// the healthy host's own decay, it is no costlier than the healthy one.
	*now += int64(tau * math.Ln2)
	p.observe(good, false, int64(5*time.Millisecond), *now)
	assert.LessOrEqual(t, bad.cost.value(*now, tau), good.cost.value(*now, tau)*1.01)
}
