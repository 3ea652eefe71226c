package breaker

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Defaults of [HostHealth].
const (
	DefaultProbeInterval    = 100 * time.Millisecond
	DefaultMaxProbeInterval = 2 * time.Second
	DefaultPanicInterval    = 50 * time.Millisecond
	DefaultProbeTimeout     = time.Second
	DefaultRestAfter        = 1
	DefaultRest             = time.Second
	DefaultMaxRest          = 10 * time.Second
	DefaultProbation        = 100
	DefaultSlowStart        = 3 * time.Second
)

// HostHealth configures the host-health model of [Hosts]: one state per
// host, decided in one place. A host is
//
//   - serving: its breaker is closed;
//   - resting: serving, but it failed lately (see RestAfter): a pool sends
//     it requests only when no other host is left;
//   - warming: serving again after being out, with a share of traffic that
//     ramps up over SlowStart;
//   - out: its breaker is open (tripped by evidence about the host, see
//     [Hosts]); no request reaches it;
//   - probing: out, and a probe is due or in flight;
//   - half-open: its open period is over; a few real requests decide.
//
// While a host is out after a connection-level failure (refused,
// unreachable, connect timeout, DNS), Hosts dials it on a short, growing
// interval — ProbeInterval, doubling with ±25% jitter up to
// MaxProbeInterval — and ends the open period as soon as a TCP connect
// succeeds, so that the next requests (half-open) put it back in service.
// While no other host Hosts knows of is serving (a whole pool out), it
// dials every PanicInterval instead, so that recovery follows a host's
// return within about that long. One probe per host is in flight at a
// time; [Hosts.Close] stops them all.
//
// A connect proves nothing about a host that reset a request after
// reading it, timed out, failed TLS or answered 5xx: those wait for their
// open period (Settings.Timeout, growing) and half-open real requests;
// while no other host serves, that period is at most 3×PanicInterval, so
// that a whole pool out is tried again at most about 20 times a second.
//
// The zero value is the documented default throughout.
type HostHealth struct {
	// ProbeInterval is the first probe's delay after a host goes out.
	// Default 100 ms.
	ProbeInterval time.Duration
	// MaxProbeInterval caps the doubling of the probe interval. Default
	// 2 s: at most one connection every 1.5 s per host once it has been
	// out a few seconds (≤ 2/s once out for 2 s).
	MaxProbeInterval time.Duration
	// PanicInterval is the probe interval while no other host serves.
	// Default 50 ms (≤ 20 probes/s per host).
	PanicInterval time.Duration
	// ProbeTimeout bounds one probe's dial. Default 1 s.
	ProbeTimeout time.Duration
	// NoProbes turns probing off: an out host waits for its open period.
	NoProbes bool

	// RestAfter is how many consecutive failures that are evidence about
	// the host (connection-level failures, resets, timeouts — not an
	// upstream's own status) rest it for Rest. If it fails again before
	// Probation successes, its next rest is twice as long, up to MaxRest;
	// Probation successes in a row clear the doubling. Resting is a
	// preference, not a verdict: it keeps requests that cannot be retried
	// (a POST that reached the upstream) off a host that resets some of
	// them, which a breaker, needing several failures in a row or a high
	// ratio, does not notice. Defaults 1, 1 s, 10 s, 100 (measured: see
	// gateway/pool's TestPassiveHealthMeasure); a negative RestAfter turns
	// resting off.
	RestAfter int
	Rest      time.Duration
	MaxRest   time.Duration
	Probation int

	// SlowStart is how long a host that returns after being out takes to
	// ramp from 10% to its full share of new requests (HAProxy slowstart,
	// Envoy slow_start_config). Default 3 s; negative turns it off. A pool
	// applies shares only among hosts that can serve: a host alone gets
	// everything.
	SlowStart time.Duration
}

func (h HostHealth) withDefaults() HostHealth {
	orDefault(&h.ProbeInterval, DefaultProbeInterval)
	orDefault(&h.MaxProbeInterval, DefaultMaxProbeInterval)
	h.MaxProbeInterval = max(h.MaxProbeInterval, h.ProbeInterval)
	orDefault(&h.PanicInterval, DefaultPanicInterval)
	orDefault(&h.ProbeTimeout, DefaultProbeTimeout)
	orDefault(&h.RestAfter, DefaultRestAfter)
	orDefault(&h.Rest, DefaultRest)
	orDefault(&h.MaxRest, DefaultMaxRest)
	h.MaxRest = max(h.MaxRest, h.Rest)
	orDefault(&h.Probation, DefaultProbation)
	orDefault(&h.SlowStart, DefaultSlowStart)
	return h
}

// hostState is what Hosts keeps about a host beside its breaker.
type hostState struct {
	// consecutive counts host-evidence failures in a row (not an
	// upstream's own status): the ConsecutiveFailures rule reads it.
	consecutive atomic.Uint32
	lastClass   atomic.Int32 // gateway.Class of the last failure
	outSince    atomic.Int64 // ns; when it last left serving
	warmFrom    atomic.Int64 // ns; when it last came back; 0 never
	probing     atomic.Bool  // a probe loop runs
	probeStep   atomic.Int32 // probes failed in this out spell
	nextProbe   atomic.Int64 // ns; 0 none

	// lastTrail and lastLen mark the request whose failure was counted
	// last, so that its next attempt on the same host is not counted again.
	lastTrail atomic.Pointer[gateway.Trail]
	lastLen   atomic.Int64

	restUntil atomic.Int64 // ns; resting while now < restUntil
	strikes   atomic.Int32 // rests since the host last passed probation
	successes atomic.Int32 // successes in a row since a strike
	restMu    sync.Mutex   // serialises failures' resting
	restRun   int          // failures in a row, under restMu
}

// connLevel reports a class that a TCP connect disproves.
func connLevel(c gateway.Class) bool {
	switch c {
	case gateway.ClassRefused, gateway.ClassUnreachable, gateway.ClassConnectTimeout, gateway.ClassDNS:
		return true
	}
	return false
}

// prober runs the probe loops of a Hosts.
type prober struct {
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
}

// hostFailure records a failure of class c for the request req; it
// returns false when the failure is not to be counted (a repeat of the
// same client request on this host).
func (e *entry) hostFailure(req *http.Request, c gateway.Class) bool {
	h := e.host
	if t := gateway.TrailFrom(req.Context()); t != nil {
		n := int64(t.Len())
		if h.lastTrail.Load() == t && n > h.lastLen.Load() {
			return false // this request failed on this host already
		}
		h.lastTrail.Store(t)
		h.lastLen.Store(n)
	}
	h.lastClass.Store(int32(c))
	if c == gateway.ClassUpstreamStatus {
		return true // the ratio's business only
	}
	h.consecutive.Add(1)
	hh := &e.set.c.Health
	if hh.RestAfter < 0 {
		return true
	}
	now := e.set.now()
	h.restMu.Lock()
	h.successes.Store(0)
	if h.restRun++; h.restRun >= hh.RestAfter && now >= h.restUntil.Load() {
		strikes := h.strikes.Add(1)
		rest := hh.Rest
		for i := int32(1); i < strikes && rest < hh.MaxRest; i++ {
			rest *= 2
		}
		h.restUntil.Store(now + int64(min(rest, hh.MaxRest)))
		h.restRun = 0
	}
	h.restMu.Unlock()
	return true
}

// hostStatusFailure records an upstream's own failure status: the ratio
// counts it, the consecutive rule and resting do not.
func (e *entry) hostStatusFailure(req *http.Request) bool {
	return e.hostFailure(req, gateway.ClassUpstreamStatus)
}

// hostSuccess records a success, writing only what changes.
func (e *entry) hostSuccess() {
	h := e.host
	if h.consecutive.Load() != 0 {
		h.consecutive.Store(0)
	}
	if h.strikes.Load() > 0 {
		h.restMu.Lock()
		h.restRun = 0
		if h.successes.Add(1) >= int32(e.set.c.Health.Probation) {
			h.strikes.Store(0)
			h.successes.Store(0)
		}
		h.restMu.Unlock()
	}
}

// othersServing reports whether a host other than e's is serving (closed).
func (s *set) othersServing(e *entry) bool {
	for _, o := range *s.entries.Load() {
		if o != e && State(o.state.Load()) == StateClosed {
			return true
		}
	}
	return false
}

// startProbe starts e's probe loop unless one runs or Hosts is closed.
func (s *set) startProbe(e *entry) {
	p := s.prober
	if p == nil || s.c.Health.NoProbes || !e.host.probing.CompareAndSwap(false, true) {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		e.host.probing.Store(false)
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go s.probeLoop(e)
}

// probeLoop dials e's host while it is out after a connection-level
// failure, and ends its open period at the first connect that succeeds.
func (s *set) probeLoop(e *entry) {
	p, h, hh := s.prober, e.host, &s.c.Health
	defer p.wg.Done()
	defer h.probing.Store(false)
	defer h.nextProbe.Store(0)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if !e.probeDue() {
			return
		}
		var wait time.Duration
		if s.othersServing(e) {
			step := min(h.probeStep.Load(), 30)
			wait = min(hh.ProbeInterval<<step, hh.MaxProbeInterval)
			wait = time.Duration(float64(wait) * (0.75 + 0.5*rand.Float64()))
		} else {
			wait = hh.PanicInterval
		}
		h.nextProbe.Store(s.now() + int64(wait))
		timer.Reset(wait)
		select {
		case <-p.ctx.Done():
			return
		case <-timer.C:
		}
		if !e.probeDue() {
			return
		}
		ctx, cancel := context.WithTimeout(p.ctx, hh.ProbeTimeout)
		c, err := p.dial(ctx, "tcp", e.key)
		cancel()
		if err == nil {
			_ = c.Close()
			e.probeSucceeded()
			return
		}
		if p.ctx.Err() != nil {
			return
		}
		h.probeStep.Add(1)
	}
}

// probeDue reports whether e is still out after a connection-level
// failure, and not evicted.
func (e *entry) probeDue() bool {
	return State(e.state.Load()) == StateOpen && e.pins.Load() >= 0 &&
		connLevel(gateway.Class(e.host.lastClass.Load())) &&
		e.set.now() < e.openUntil.Load()
}

// probeSucceeded ends e's open period: the next request goes half-open.
// The host's resting is cleared: the probe proved the failure gone.
func (e *entry) probeSucceeded() {
	now := e.set.now()
	if now < e.openUntil.Load() {
		e.openUntil.Store(now)
	}
	e.host.restUntil.Store(0)
}

// hostHealth returns the one-word state of a host, its share, and when
// its probe is next due.
func (e *entry) hostHealth(now int64) (string, float64) {
	switch State(e.state.Load()) {
	case StateOpen:
		if now >= e.openUntil.Load() {
			return "half-open", 1
		}
		if e.host.probing.Load() {
			return "probing", 0
		}
		return "out", 0
	case StateHalfOpen:
		return "half-open", 1
	}
	if share := e.share(now); share < 1 {
		if share == 0 {
			return "resting", 0
		}
		return "warming", share
	}
	return "serving", 1
}

// share is a serving host's share of new requests: 0 while resting, a
// ramp from 0.1 to 1 over SlowStart after a return, else 1.
func (e *entry) share(now int64) float64 {
	h := e.host
	if now < h.restUntil.Load() {
		return 0
	}
	ss := e.set.c.Health.SlowStart
	if w := h.warmFrom.Load(); ss > 0 && w > 0 && now-w < int64(ss) {
		return 0.1 + 0.9*float64(now-w)/float64(ss)
	}
	return 1
}
