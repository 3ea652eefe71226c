package pool

import (
	"math"
	"sync/atomic"
)

// peakEWMA is a latency estimate that jumps to any sample above it and
// decays toward samples below it (and toward zero while idle) with time
// constant tau: the "peak EWMA" of Finagle and Linkerd. A slow host is
// noticed at once and forgiven gradually.
//
// Readers (the balancer) load value and stamp without a lock; writers must
// be serialised by the caller. A reader may pair a new value with an old
// stamp and over-decay it by one sample's interval: harmless for a balancer.
type peakEWMA struct {
	bits  atomic.Uint64 // float64 estimate, in ns
	stamp atomic.Int64  // pool clock (ns) of the last update
}

// value returns the estimate decayed to now.
func (e *peakEWMA) value(now int64, tau float64) float64 {
	v := math.Float64frombits(e.bits.Load())
	if td := now - e.stamp.Load(); td > 0 && v > 0 {
		v *= math.Exp(-float64(td) / tau)
	}
	return v
}

// observe adds a sample of rtt ns at now. Callers serialise observe.
func (e *peakEWMA) observe(now int64, rtt, tau float64) {
	v := math.Float64frombits(e.bits.Load())
	td := now - e.stamp.Load()
	if td < 0 {
		td = 0
	}
	w := math.Exp(-float64(td) / tau)
	cur := v * w
	if rtt > cur {
		cur = rtt
	} else {
		cur += rtt * (1 - w)
	}
	e.bits.Store(math.Float64bits(cur))
	e.stamp.Store(now)
}

// unmeasuredCost ranks a host with no latency sample but requests in
// flight below every measured one, as Finagle does: its first requests may
// be hanging.
const unmeasuredCost = 1e14

// loadCost is the balancer's cost of sending one more request to a host
// with estimate v and n requests in flight.
func loadCost(v float64, n int64) float64 {
	if v == 0 {
		if n == 0 {
			return 0
		}
		return unmeasuredCost + float64(n)
	}
	return v * float64(n+1)
}

// copyFrom sets e to o's estimate. Callers serialise writes of both.
func (e *peakEWMA) copyFrom(o *peakEWMA) {
	e.bits.Store(o.bits.Load())
	e.stamp.Store(o.stamp.Load())
}
