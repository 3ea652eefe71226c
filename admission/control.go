package admission

import (
	"math"
	"time"
)

// unlimited is the enforced limit of a host that shows no queueing.
const unlimited = math.MaxInt64 / 2

// window is what one sampling window saw of a host.
type window struct {
	dur      int64 // ns the window lasted
	left     int64 // requests that gave their slot back (answered or failed)
	inflight int64 // requests in flight when it closed
	peak     int64 // most requests in flight at once
	blocked  int64 // requests that found the host at its limit (queued or shed)
	count    int64 // latency samples
	p50, p90 int64 // ns; 0 with fewer than minLatencySamples samples
}

// event is a change of a controller worth a log line.
type event uint8

const (
	evNone      event = iota
	evCongested       // the host fell behind: the limit is enforced from now on
	evClear           // the host keeps pace again (or was quiet): the limit is lifted
	evRelearned       // the baseline expired during congestion: it is measured anew
)

// pace is one window of the backlog history.
type pace struct {
	dur, left, growth int64
}

// controller is the control law of one host (see doc.go). It is a plain
// value, updated once per window under its host's lock, so that the law
// can be tested on synthetic windows.
type controller struct {
	tolerance float64
	minDelay  int64 // ns
	minLimit  float64
	window    int64 // ns: the nominal window
	bucket    int64 // ns: the baseline is the minimum over two of these

	congested bool
	limit     float64 // the limit while congested

	// The backlog history: the last windows, oldest first, and the
	// host's pace (answers per ns) and typical slow latency (p90, ns)
	// while it kept up.
	hist      [maxHorizon]pace
	n         int
	inflight  int64   // at the close of the last window
	rate      float64 // answers per ns while no backlog grew; 0: unknown
	kept      bool    // the host kept pace once: its in-flight did not grow over a latency (two slots at least)
	frozen    int64   // ns the rate has been held while in-flight grew
	p90       float64 // ns
	quietFrom int64   // while congested: since when it kept pace at its limit (0: it does not)
	calmFrom  int64   // while congested: since when nothing waited and in-flight did not grow

	// The baseline: the shortest window median over the current and the
	// previous bucket, fed by windows without a growing backlog and by
	// probes.
	cur, prev int64 // 0: none
	curStart  int64

	sinceProbe int   // congested windows since the last probe (or the congestion began)
	lastProbe  int64 // when the last probe ended (ns)
	soon       bool  // probe again after probeAfter windows: the baseline may be too high
	probing    bool
	measuring  bool    // the probe's queue drained: its requests are being measured
	probeStart int64   // when the probe began (ns)
	preLimit   float64 // the limit before the probe
	probeLimit float64 // the limit during the probe
	answers    float64 // answers per ns, lately
	restart    bool    // judge latency only by requests sent from now on (read and reset by the host)

	little   float64 // the limit by Little's law at the start of the congestion
	adjusted int64   // when the gradient last changed the limit (ns)
	holding  bool    // the limit is held at what was in flight for a window

	last int64 // the last window's median latency, for Status
}

func newController(c *config) controller {
	return controller{
		tolerance: c.Tolerance,
		minDelay:  int64(c.MinQueueDelay),
		minLimit:  float64(max(1, c.MinLimit)),
		window:    int64(c.Window),
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

// baseline returns the host's median latency without queueing at now, 0
// if unknown.
func (c *controller) baseline(now int64) int64 {
	c.rotate(now)
	b := c.cur
	if c.prev > 0 && (b == 0 || c.prev < b) {
		b = c.prev
	}
	return b
}

func (c *controller) feed(now, s int64) {
	if s <= 0 {
		return
	}
	c.rotate(now)
	if c.cur == 0 || s < c.cur {
		c.cur = s
	}
}

// threshold is the latency above which a congested host's window shows
// queueing.
func (c *controller) threshold(b int64) int64 {
	return max(int64(float64(b)*c.tolerance), b+c.minDelay)
}

// enforced returns the limit to enforce now: unlimited unless congested,
// the probe's limit (at most half the limit) while probing.
func (c *controller) enforced() int64 {
	if !c.congested {
		return unlimited
	}
	l := c.limit
	if c.probing {
		l = c.probeLimit
	}
	return int64(math.Ceil(l))
}

// record adds w to the backlog history and returns how much the host's
// in-flight grew over it.
func (c *controller) record(w window) int64 {
	growth := w.inflight - c.inflight
	c.inflight = w.inflight
	span := c.span()
	if w.dur > quietGap*span {
		// Nothing was answered for a while: what came before, this long
		// window too, says nothing of the host's pace now.
		c.n, c.frozen = 0, 0
		return growth
	}
	if r := float64(w.left) / float64(max(1, w.dur)); c.answers == 0 {
		c.answers = r
	} else {
		c.answers += (r - c.answers) * answersWeight
	}
	if last := &c.hist[max(0, c.n-1)]; c.n > 0 && span > c.window && last.dur < span {
		// A slow host's slot spans several windows (see span).
		last.dur, last.left, last.growth = last.dur+max(1, w.dur), last.left+w.left, last.growth+growth
	} else {
		if c.n == maxHorizon {
			copy(c.hist[:], c.hist[1:])
			c.n--
		}
		c.hist[c.n] = pace{dur: max(1, w.dur), left: w.left, growth: growth}
		c.n++
	}
	last := c.hist[c.n-1]
	if span > c.window && last.dur < span {
		return growth // the slot is still filling: its pace is not known yet
	}
	// A host without a p90 yet takes its first: its first requests found
	// no queue of its own, whatever came after them.
	if !c.congested && c.p90 == 0 && w.p90 > 0 {
		c.p90 = float64(w.p90)
	}
	// Whether the host kept up is judged over the last of its latencies
	// (a window, for a host faster than one): a slow host answers a few
	// requests at a time, and a slot with answers in it says nothing of
	// its pace on its own.
	m := max(1, int(math.Ceil(c.p90/float64(span))))
	var grew, grewTwo int64 // over the last latency; over it and at least two slots
	for i := 1; i <= min(c.n, max(2, m)); i++ {
		if i <= m {
			grew += c.hist[c.n-i].growth
		}
		grewTwo += c.hist[c.n-i].growth
	}
	if !c.congested && c.p90 > 0 && c.n >= 2 && grewTwo <= 0 {
		c.kept = true
	}
	// The pace is what the host answered while it kept up. While its
	// in-flight grows the pace is held (a slower dependency answers
	// nothing for one latency: that is no new pace), for at most
	// paceHold, so that a host that is slower for good gets its pace.
	if grew > 0 && c.frozen < int64(paceHold) && c.rate > 0 {
		c.frozen += last.dur
	} else if !c.congested {
		c.frozen = 0
		r := float64(last.left) / float64(last.dur)
		if c.rate == 0 {
			c.rate = r
		} else {
			c.rate += (r - c.rate) * ewmaWeight
		}
	}
	if !c.congested && w.p90 > 0 && grew <= 0 {
		if c.p90 == 0 {
			c.p90 = float64(w.p90)
		} else {
			c.p90 += (float64(w.p90) - c.p90) * ewmaWeight
		}
	}
	return growth
}

// behind reports whether the history shows a host that stopped keeping
// pace, and if so the rate (answers per ns) at which it answered meanwhile.
//
// The history is judged over horizons of at least two of the host's
// latencies (its p90 while it kept pace), split in halves. A host fell
// behind when, in each half, arrivals exceeded answers by backlogShare
// (its in-flight grew) while it answered at least paceShare of its pace of
// before; when the recent half brought no more answers than the older one
// (more concurrency, no more throughput: the host is saturated); and when
// its in-flight at least doubled, by minBacklog or more.
//
// A slower dependency or a route-mix change raises in-flight too (Little's
// law), but only for one latency, during which answers stop: a half that
// covers that lag answers less than the pace, and a half after it shows
// no growth. A surge of arrivals or a burst at a host with room is
// answered one latency later, within the recent half: it brings more
// answers. Only a queue grows while answers stay flat.
func (c *controller) behind() (bool, float64) {
	span := c.span()
	if c.n == 0 || span > c.window && c.hist[c.n-1].dur < span {
		return false, 0 // the last slot is still filling
	}
	k := 2
	if c.p90 > 0 {
		k = max(k, int(math.Ceil(2*c.p90/float64(span))))
	}
	k += k & 1
	for h := k; h <= c.n; h += 2 {
		older, recent := c.sum(c.n-h, c.n-h/2), c.sum(c.n-h/2, c.n)
		growth := older.growth + recent.growth
		start := c.inflight - growth
		if growth < max(minBacklog, start) || !c.fallingBehind(older) || !c.fallingBehind(recent) ||
			float64(recent.left)*float64(older.dur) > saturated*float64(older.left)*float64(recent.dur) {
			continue
		}
		return true, float64(older.left+recent.left) / float64(older.dur+recent.dur)
	}
	return false, 0
}

// span is the least duration of one slot of the backlog history: a
// Window, or for a host whose p90 is longer than slotsPerLatency Windows,
// a slotsPerLatency-th of its p90, so that the history's maxHorizon slots
// cover maxHorizon/slotsPerLatency of its latencies however slow it is.
func (c *controller) span() int64 {
	return max(c.window, int64(c.p90/slotsPerLatency))
}

func (c *controller) sum(from, to int) pace {
	var s pace
	for _, p := range c.hist[from:to] {
		s.dur += p.dur
		s.left += p.left
		s.growth += p.growth
	}
	return s
}

// fallingBehind reports whether, over s, arrivals exceeded answers by
// backlogShare of the answers while answers kept the host's pace (a host
// that answers nothing has no pace to keep: a hung host is the host-health
// model's, not the limiter's). A host that never kept pace (overloaded
// from its first request) has no pace of its own: the one noted meanwhile
// is of its first answers, which come all at once; its growing in-flight
// and flat answers are the test.
func (c *controller) fallingBehind(s pace) bool {
	return s.growth > 0 && s.left > 0 && float64(s.growth) >= backlogShare*float64(s.left) &&
		(!c.kept || float64(s.left) >= paceShare*c.rate*float64(s.dur))
}

// update applies one closed window w at now.
func (c *controller) update(now int64, w window) event {
	growth := c.record(w)
	s := w.p50
	c.last = s
	if !c.congested {
		if growth <= 0 || c.cur == 0 {
			c.feed(now, s)
		}
		ok, rate := c.behind()
		if !ok {
			return evNone
		}
		// Size the limit by Little's law: the concurrency that carries
		// what the host answers at its no-queue latency, times the
		// tolerance. Without a baseline yet, the shortest median of the
		// history stands in, until a probe measures it.
		b := c.baseline(now)
		if b == 0 {
			b = s
		}
		if b == 0 {
			b = max(int64(c.p90), c.window)
		}
		c.feed(now, b)
		c.congested, c.sinceProbe, c.lastProbe, c.soon, c.quietFrom, c.calmFrom = true, 1, now, true, 0, 0
		// Near its limit, the limit is first held at what is in flight: a
		// burst of a host near its capacity that ends within the next
		// window sheds nothing. If requests still wait then — or at once,
		// when in-flight is already far past it — the host is held to it.
		c.little = max(c.minLimit, math.Ceil(c.tolerance*rate*float64(b)))
		c.limit, c.holding = c.little, false
		if float64(w.inflight) <= holdWithin*c.little {
			c.limit, c.holding = max(c.little, float64(w.inflight)), true
		}
		return evCongested
	}
	if w.dur >= int64(quietClear) {
		// Quiet for long: whatever queue there was has drained.
		c.clear()
		return evClear
	}
	if c.probing {
		return c.probe(now, w)
	}
	if c.holding {
		c.holding = false
		if w.blocked > 0 {
			c.limit = min(c.limit, c.little)
			return evNone
		}
	}
	c.sinceProbe++
	if float64(w.blocked) <= keptShare*float64(w.left+w.blocked) && growth <= 0 {
		// The host answered nearly all that asked for it (what waited or
		// was shed is a few of its answers) and its in-flight did not
		// grow: it keeps pace, and the limit no longer binds, once that
		// lasted two windows and two latencies.
		if c.calmFrom == 0 {
			c.calmFrom = now - w.dur
		}
		if now-c.calmFrom >= 2*max(c.window, c.baseline(now)) {
			c.clear()
			return evClear
		}
	} else {
		c.calmFrom = 0
	}
	b := c.baseline(now)
	if b == 0 {
		// The baseline expired during a long congestion: no probe found
		// latency near it for 2·baselineBucket. Probe now, and take
		// what the probe finds.
		c.startProbe(now)
		return evRelearned
	}
	thr := c.threshold(b)
	switch {
	case s == 0:
		// Too few answers to judge latency.
	case now-c.adjusted < b:
		// The last change of the limit has not shown in the latency of a
		// slow host yet (a baseline latency has not passed since): the
		// limit changes at most once a round trip, as TCP's window does.
	case s > thr:
		g := max(minGradient, float64(thr)/float64(s))
		c.limit = max(c.minLimit, c.limit*g)
		c.quietFrom, c.adjusted = 0, now
	default:
		c.adjusted = now
		// At the limit without queueing: there may be room. A host that
		// keeps pace this way for keepPace is no longer congested.
		c.limit += math.Sqrt(c.limit)
		if c.quietFrom == 0 {
			c.quietFrom = now
		} else if now-c.quietFrom >= int64(keepPace) {
			c.clear()
			return evClear
		}
	}
	if c.sinceProbe >= probeAfter && (c.soon || now-c.lastProbe >= int64(probeEvery)) {
		c.startProbe(now)
	}
	return evNone
}

// probe applies a window of a probe. The probe holds the host to at most
// half its limit (see startProbe) until what was in flight over it has drained, and
// then measures the requests sent from then on: their latency has no queue
// of the old limit in it. Latency within the threshold there confirms the
// baseline (and keeps it from expiring); lower latency lowers it, and a
// much lower one calls for another probe soon, as the queue may not have
// drained whole. A probe that still finds latency above the threshold
// proves nothing either way, and leaves the baseline to expire: a host
// that got slower for good is relearned within 2·baselineBucket.
func (c *controller) probe(now int64, w window) event {
	// A slow host needs a few latencies to drain and answer enough to
	// measure.
	timedOut := now-c.probeStart >= max(int64(probeMax), int64(probeLatencies*c.p90))
	if !c.measuring {
		if w.inflight <= c.enforced() {
			c.measuring, c.restart = true, true
		} else if timedOut {
			c.endProbe(now, 0)
		}
		return evNone
	}
	if w.p50 > 0 || timedOut {
		c.endProbe(now, w.p50)
	}
	return evNone
}

func (c *controller) endProbe(now, s int64) {
	b := c.baseline(now)
	c.probing, c.measuring, c.lastProbe, c.sinceProbe, c.soon = false, false, now, 0, false
	c.limit = c.preLimit
	switch {
	case s == 0:
	case b == 0:
		c.feed(now, s)
	case s <= c.threshold(b):
		c.feed(now, min(b, s))
		c.soon = float64(s) < probeLower*float64(b)
	}
}

func (c *controller) clear() {
	c.congested, c.probing, c.measuring, c.holding, c.quietFrom, c.calmFrom = false, false, false, false, 0, 0
	c.n, c.frozen = 0, 0
}

// startProbe holds the host to what carries its answers at half its
// baseline latency (Little's law), at most half its limit: if the host
// answers faster than the baseline without a queue, the probe shows it.
func (c *controller) startProbe(now int64) {
	c.probing, c.measuring, c.probeStart, c.preLimit = true, false, now, c.limit
	c.probeLimit = max(c.minLimit, math.Ceil(min(c.limit/2, c.answers*float64(c.baseline(now))/2)))
}

// durationOf is a helper for Status.
func durationOf(ns int64) time.Duration { return time.Duration(ns) }
