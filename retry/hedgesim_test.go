package retry

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// hedgeSim runs requests through the adaptive hedge delay in virtual time,
// closing the loop the way a Retry does: a request whose first attempt is
// still out at the delay gets one hedge (an independent draw, which may
// stall too); the winner's latency, from its own start, is the sample (every
// one while warming up, one in latSampling after); the delay is recomputed
// as the Retry recomputes it. It returns the requests' latencies sorted and
// the upstream requests per request.
func hedgeSim(seed uint64, requests int, share float64, stall time.Duration) ([]time.Duration, float64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	// A healthy upstream: lognormal, median 0.4 ms, p99 2.6 ms.
	draw := func() time.Duration {
		d := time.Duration(0.4e6 * math.Exp(0.8*rng.NormFloat64()))
		if rng.Float64() < share {
			d += stall
		}
		return d
	}
	var l latencies
	l.floor = DefaultHedgeMinDelay
	lat := make([]time.Duration, 0, requests)
	upstream := 0
	for i := range requests {
		now := time.Duration(i) * 500 * time.Microsecond // 2,000 requests/s
		d := l.delay(now)
		first := draw()
		took, won := first, first
		upstream++
		if d > 0 && first > d {
			upstream++
			if h := draw(); d+h < first {
				took, won = d+h, h
			}
		}
		lat = append(lat, took)
		if d == 0 || rng.Uint32()%latSampling == 0 {
			l.observe(now+took, won)
		}
	}
	slices.Sort(lat)
	return lat, float64(upstream) / float64(requests)
}

// TestHedgeStallShapes: the stall shapes on a model upstream, in
// virtual time (no scheduler noise), from a cold start, warm-up included,
// over several seeds. 2% of responses stalled by 300 ms: p99 ≤ 10 ms and
// p99.9 ≤ 50 ms at ≤ 1.10 upstream requests per request; 5% stalled by
// 100 ms: p99 ≤ 20 ms. A delay of twice p95 locks hedging out in the 5%
// shape for some seeds (2 of these 10: its p99 is the stall).
func TestHedgeStallShapes(t *testing.T) {
	pct := func(lat []time.Duration, p float64) time.Duration {
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	for seed := range uint64(10) {
		lat, amp := hedgeSim(seed, 20000, 0.02, 300*time.Millisecond)
		assert.LessOrEqual(t, pct(lat, 0.99), 10*time.Millisecond, "2%%/300 ms, seed %d: p99", seed)
		assert.LessOrEqual(t, pct(lat, 0.999), 50*time.Millisecond, "2%%/300 ms, seed %d: p99.9", seed)
		assert.LessOrEqual(t, amp, 1.10, "2%%/300 ms, seed %d: upstream requests per request", seed)
		t.Logf("seed %d: 2%%/300 ms p99 %v p99.9 %v, %.3f upstream/request", seed, pct(lat, 0.99), pct(lat, 0.999), amp)

		lat, amp = hedgeSim(seed, 20000, 0.05, 100*time.Millisecond)
		assert.LessOrEqual(t, pct(lat, 0.99), 20*time.Millisecond, "5%%/100 ms, seed %d: p99", seed)
		assert.LessOrEqual(t, amp, 1.10, "5%%/100 ms, seed %d: upstream requests per request", seed)
		t.Logf("seed %d: 5%%/100 ms p99 %v p99.9 %v, %.3f upstream/request", seed, pct(lat, 0.99), pct(lat, 0.999), amp)

		lat, amp = hedgeSim(seed, 20000, 0, 0)
		assert.LessOrEqual(t, amp, 1.02, "no stalls, seed %d: upstream requests per request", seed)
		t.Logf("seed %d: no stalls p99 %v, %.3f upstream/request", seed, pct(lat, 0.99), amp)
	}
}
