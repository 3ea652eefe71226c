package admission

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"time"
)

// Defaults of [Settings].
const (
	DefaultTolerance     = 2.0
	DefaultMinQueueDelay = 5 * time.Millisecond
	DefaultWindow        = 50 * time.Millisecond
	DefaultMinLimit      = 2
	DefaultQueueLength   = 32
	DefaultQueueTimeout  = time.Millisecond
	DefaultRetryAfter    = time.Second
	DefaultMaxHosts      = 1024
)

// The control law's fixed constants (see doc.go for the reasons).
const (
	maxHorizon        = 20               // slots of backlog history (1 s at the default Window)
	slotsPerLatency   = 7                // a slow host's slot spans at least this share of its p90
	minBacklog        = 8                // the least in-flight growth that can show a host fell behind
	backlogShare      = 0.15             // in-flight growth, as a share of the answers, that shows falling behind
	paceShare         = 0.9              // answers kept at least this share of the host's pace meanwhile
	saturated         = 1.1              // answers that rose less than this while in-flight grew: no more throughput
	paceHold          = time.Second      // the pace is held this long while in-flight grows
	ewmaWeight        = 0.125            // of a new window in the pace and the p90
	answersWeight     = 0.25             // of a new window in the answer rate a probe is sized by
	quietGap          = 4                // windows without a close that restart the history
	quietClear        = time.Second      // a congested host quiet this long is congested no more
	keepPace          = 2 * time.Second  // nor one that kept pace at its limit this long
	holdWithin        = 2                // in-flight within this many limits is held a window before the cut
	keptShare         = 0.05             // held back no more than this share of its demand: a host keeps pace
	minLatencySamples = 4                // a window's latency needs this many samples
	minGradient       = 0.5              // the largest cut of one window: a half
	probeAfter        = 5                // congested windows before the first probe
	probeEvery        = 5 * time.Second  // probes while congestion lasts
	probeMax          = time.Second      // a probe that measured nothing by then ends
	probeLatencies    = 5                // nor before this many of the host's p90s
	probeLower        = 0.75             // a probe this far under the baseline calls for another soon
	baselineBucket    = 5 * time.Second  // the baseline is the minimum over two of these
	lowShare          = 0.75             // the share of the limit a negative priority may fill
	maxWaitSlack      = 10 * time.Second // waits longer than this are clamped (sanity)
	histBuckets       = 160              // latency histogram: four buckets an octave of microseconds
	sparseAnswers     = 128              // answers a window that make a host busy enough to time a quarter
)

// Settings configure a [Limiter]. The zero value is the documented default
// throughout; invalid values (negative durations, a Tolerance of 1 or less,
// NaN) make [New] fail with an error naming each of them.
type Settings struct {
	// Tolerance is how much queue a congested host is allowed, as a
	// multiple of its latency without one: its limit is Tolerance × its
	// answers a second × that latency, and a window whose median latency
	// is above Tolerance × the baseline cuts the limit (see doc.go). It
	// plays no part in whether a host is congested: only a host that falls
	// behind its traffic is. Default 2; it must be greater than 1.
	Tolerance float64

	// MinQueueDelay is the least rise above the baseline that cuts a
	// congested host's limit, whatever Tolerance says, so that a host
	// answering in 200 µs is not cut for a few milliseconds of jitter (the
	// gateway's own scheduling on a busy machine, a GC pause): queueing
	// that costs a request less than this is not worth shedding for.
	// Default 5 ms.
	MinQueueDelay time.Duration

	// Window is how often a host's pace is noted and its limit updated, by
	// time (a window closes at the first request or answer after it ends;
	// latency samples carry over until a window has four). The backlog
	// history is the last 20 windows (for a host slower than seven
	// windows, the last 20 slots of a seventh of its p90). Default 50 ms.
	Window time.Duration

	// MinLimit is the least concurrency a congested host is allowed.
	// Default 2.
	MinLimit int

	// QueueLength bounds the requests that wait for a slot of one host
	// once it is at its limit; QueueTimeout bounds how long each waits
	// (and a request's own deadline, when sooner). A request that finds
	// the queue full, or waits out its time, is shed. Defaults 32 and
	// 1 ms, so that a shed request is answered within a few
	// milliseconds. A negative QueueLength turns the queue off: requests
	// over the limit are shed at once.
	QueueLength  int
	QueueTimeout time.Duration

	// RetryAfter is the Retry-After of a shed request. Default 1 s.
	RetryAfter time.Duration

	// Priority, if set, ranks a request (the outbound request, whose
	// header and URL are the client's) for shedding: higher is kept
	// longer. 0 is the default rank. A request of negative priority
	// (crawlers, prefetches, batch jobs) may fill only three quarters of
	// a congested host's limit, so it is queued and shed first; among
	// waiting requests the highest priority gets the next free slot, and
	// one that finds the queue full takes the place of a waiting request
	// of lower priority (health checks and checkout over crawlers). It is
	// called only while a host is congested, on the request's goroutine:
	// it must be quick and safe for concurrent use.
	Priority func(*http.Request) int

	// MaxHosts bounds the hosts that get a limiter of their own (hosts
	// come from the outbound URL, which a Rewrite may take from the
	// request). Requests to further hosts pass unlimited. Default 1024.
	MaxHosts int

	// Logger receives a line when a host becomes congested (info) or
	// stops being so, and when a drain starts and ends. Nil means
	// slog.Default() at the time of each call.
	Logger *slog.Logger
}

// config is Settings with the defaults filled in.
type config struct {
	Settings
}

func (s Settings) normalize() (config, error) {
	c := config{s}
	var errs []error
	if math.IsNaN(s.Tolerance) || (s.Tolerance != 0 && s.Tolerance <= 1) || math.IsInf(s.Tolerance, 0) {
		errs = append(errs, fmt.Errorf("setting Tolerance %v: want a number greater than 1 (2 tolerates twice the baseline latency)", s.Tolerance))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"MinQueueDelay", s.MinQueueDelay}, {"Window", s.Window}, {"QueueTimeout", s.QueueTimeout}, {"RetryAfter", s.RetryAfter}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("setting %s %v is negative", d.name, d.v))
		}
	}
	if s.MinLimit < 0 {
		errs = append(errs, fmt.Errorf("setting MinLimit %d is negative", s.MinLimit))
	}
	if s.MaxHosts < 0 {
		errs = append(errs, fmt.Errorf("setting MaxHosts %d is negative", s.MaxHosts))
	}
	if s.Window > 0 && s.Window < time.Millisecond {
		errs = append(errs, fmt.Errorf("setting Window %v is shorter than 1 ms", s.Window))
	}
	if s.QueueTimeout > maxWaitSlack {
		errs = append(errs, fmt.Errorf("setting QueueTimeout %v is longer than %v: a queue is for bursts, not for holding requests", s.QueueTimeout, maxWaitSlack))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("admission: invalid settings: %w", errors.Join(errs...))
	}
	orDefault(&c.Tolerance, DefaultTolerance)
	orDefault(&c.MinQueueDelay, DefaultMinQueueDelay)
	orDefault(&c.Window, DefaultWindow)
	orDefault(&c.MinLimit, DefaultMinLimit)
	orDefault(&c.QueueLength, DefaultQueueLength)
	orDefault(&c.QueueTimeout, DefaultQueueTimeout)
	orDefault(&c.RetryAfter, DefaultRetryAfter)
	orDefault(&c.MaxHosts, DefaultMaxHosts)
	return c, nil
}

func orDefault[T int | float64 | time.Duration](p *T, def T) {
	if *p == 0 {
		*p = def
	}
}

func (c *config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}
