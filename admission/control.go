package admission

import (
	"math"
	"time"
)

// unlimited is the enforced limit of a host that shows no queueing.
const unlimited = math.MaxInt64 / 2

// window is what one sampling window saw of a host.
type window struct {
	min     int64 // shortest latency to the response header, ns
	count   int64 // latency samples
	peak    int64 // most requests in flight at once
	blocked int64 // requests that found the host at its limit (queued or shed)
}

// event is a change of a controller worth a log line.
type event uint8

const (
	evNone      event = iota
	evCongested       // queueing showed: the limit is enforced from now on
	evClear           // the limit no longer binds and latency is near its baseline
	evRelearned       // the baseline expired during congestion: it is measured anew
)

// controller is the control law of one host (see doc.go). It is a plain
// value, updated once per window under its host's lock, so that the law
// can be tested on synthetic windows.
type controller struct {
	tolerance float64
	minDelay  int64 // ns
	minLimit  float64
	bucket    int64 // ns: the baseline is the minimum over two of these

	congested bool
	limit     float64 // the limit while congested

	// The baseline: the minimum window latency over the current and the
	// previous bucket, fed by windows without queueing and by probes.
	cur, prev int64 // 0: none
	curStart  int64

	windows    int   // congested windows so far
	sinceProbe int   // congested windows since the last probe (or the congestion began)
	lastProbe  int64 // when the last probe ended (ns)
	soon       bool  // probe again after probeAfter windows: the baseline may be too high
	probing    bool
	preLimit   float64 // the limit before the probe

	// A queue that grows under the threshold: windows whose latency and
	// concurrency both rose, in a row (the baseline may be too high).
	prevLatency, prevPeak int64
	rising                int

	last int64 // the last window's latency, for Status
}

func newController(c *config) controller {
	return controller{
		tolerance: c.Tolerance,
		minDelay:  int64(c.MinQueueDelay),
		minLimit:  float64(max(1, c.MinLimit)),
		bucket:    int64(baselineBucket),
	}
}

// rotate moves the baseline's buckets on to now.
func (c *controller) rotate(now int64) {
	if now-c.curStart < c.bucket {
		return
	}
	if now-c.curStart >= 2*c.bucket {
		c.prev, c.cur = 0, 0
	} else {
		c.prev, c.cur = c.cur, 0
	}
	c.curStart = now
}

// baseline returns the host's no-load latency at now, 0 if unknown.
func (c *controller) baseline(now int64) int64 {
	c.rotate(now)
	b := c.cur
	if c.prev > 0 && (b == 0 || c.prev < b) {
		b = c.prev
	}
	return b
}

func (c *controller) feed(now, s int64) {
	c.rotate(now)
	if c.cur == 0 || s < c.cur {
		c.cur = s
	}
}

// threshold is the latency above which a window shows queueing.
func (c *controller) threshold(b int64) int64 {
	return max(int64(float64(b)*c.tolerance), b+c.minDelay)
}

// enforced returns the limit to enforce now: unlimited unless congested,
// a quarter of the limit while probing.
func (c *controller) enforced() int64 {
	if !c.congested {
		return unlimited
	}
	l := c.limit
	if c.probing {
		l = max(c.minLimit, l/4)
	}
	return int64(math.Ceil(l))
}

// update applies one closed window w at now.
func (c *controller) update(now int64, w window) event {
	s := w.min
	c.last = s
	b := c.baseline(now)
	if c.probing {
		// The probe window: the limit was a quarter, and only requests
		// sent during it were sampled. Latency within the threshold there
		// confirms the baseline (and keeps it from expiring); lower
		// latency lowers it, and a much lower one calls for another probe
		// soon, as the queue may not have drained whole. A probe that
		// still finds latency above the threshold proves nothing either
		// way, and leaves the baseline to expire: a host that got slower
		// for good is relearned within 2·baselineBucket.
		c.probing, c.lastProbe, c.sinceProbe, c.soon = false, now, 0, false
		c.limit = c.preLimit
		switch {
		case b == 0:
			c.feed(now, s)
		case s <= c.threshold(b):
			c.feed(now, min(b, s))
			c.soon = float64(s) < probeLower*float64(b)
		}
		return evNone
	}
	if b == 0 {
		c.feed(now, s)
		if c.congested {
			// The baseline expired during a long congestion: no probe
			// found latency near it for 2·baselineBucket. Probe now, and
			// take what the probe finds.
			c.startProbe()
			return evRelearned
		}
		return evNone
	}
	thr := c.threshold(b)
	queueing := s > thr
	if !c.congested {
		growing := c.prevLatency > 0 && float64(s) >= risingBy*float64(c.prevLatency) && w.peak > c.prevPeak
		c.prevLatency, c.prevPeak = s, w.peak
		if growing {
			c.rising++
		} else {
			c.rising = 0
		}
		if !queueing && c.rising < risingWindows {
			c.feed(now, s)
			return evNone
		}
		// Hold the line at what was in flight: one window of slow
		// requests (a slow route's burst) then sheds nothing, and the
		// cuts start if the next window shows queueing too. Congestion
		// that lasts is probed after probeAfter windows: a queue that
		// grew under the threshold says the baseline may be too high.
		c.congested, c.windows, c.sinceProbe, c.lastProbe, c.soon = true, 1, 1, now, true
		c.limit = max(c.minLimit, float64(w.peak))
		c.rising, c.prevLatency, c.prevPeak = 0, 0, 0
		return evCongested
	}
	c.windows++
	c.sinceProbe++
	switch {
	case queueing:
		g := max(minGradient, float64(thr)/float64(s))
		c.limit = max(c.minLimit, c.limit*g)
	case w.blocked == 0:
		// Latency is near its baseline and nothing waited: the limit no
		// longer binds.
		c.congested = false
		c.feed(now, s)
		return evClear
	default:
		// At the limit without queueing: there may be room.
		c.limit += math.Sqrt(c.limit)
	}
	if c.sinceProbe >= probeAfter && (c.soon || now-c.lastProbe >= int64(probeEvery)) {
		c.startProbe()
	}
	return evNone
}

func (c *controller) startProbe() { c.probing, c.preLimit = true, c.limit }

// durationOf is a helper for Status.
func durationOf(ns int64) time.Duration { return time.Duration(ns) }
