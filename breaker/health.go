package breaker

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// Defaults of [HostHealth].
const (
	defaultProbeInterval      = 100 * time.Millisecond
	defaultMaxProbeInterval   = 2 * time.Second
	defaultPanicInterval      = 50 * time.Millisecond
	defaultProbeTimeout       = time.Second
	defaultRestAfter          = 1
	defaultRest               = time.Second
	defaultMaxRest            = 10 * time.Second
	defaultProbation          = 100
	defaultSlowStart          = 3 * time.Second
	defaultStatusFailureRatio = 0.9
	defaultSafeFirst          = time.Second
	defaultCheckInterval      = 5 * time.Second
	defaultCheckFall          = 2
	defaultCheckMinStatus     = 200
	defaultCheckMaxStatus     = 399
)

// HostHealth configures the host-health model of [Hosts]: one state per
// host ([pool.State]), decided in one place. A host is
//
//   - serving: its breaker is closed;
//   - resting: its breaker is closed, but it failed lately (see
//     RestAfter): a pool sends it requests only when no other host is
//     left;
//   - warming: back after being out or resting, with a share of traffic
//     that ramps up over SlowStart; after a rest, until a request to it
//     succeeds;
//   - out: its breaker is open (tripped by evidence about the host, see
//     [Hosts]); no request reaches it, and probes (see below) watch for
//     its return;
//   - trial: its breaker is half-open: a probe passed, or its open period
//     is over; a few real requests decide, idempotent ones first (see
//     SafeFirst).
//
// A host leaving service (resting or out, from serving or warming) is
// logged once at warn level, with the class of the failure and since
// when; its return (its first success afterwards, or its breaker closing)
// at info level, with how long it was out. Within a minute of a logged
// spell, further spells of the same host are logged at debug level, and
// the next warn line counts them.
//
// # Evidence
//
// Connection-level failures (refused, unreachable, connect timeout, DNS,
// TLS), resets and timeouts are evidence about the host: they count toward
// both rules of [Settings] (ConsecutiveFailures in a row, FailureRatio of
// the host's whole traffic). An upstream that answers is alive: its own
// 502, 503 and 504 are evidence about a route, and take the host out only
// when failures are nearly all of its traffic (StatusFailureRatio), so
// that one failing route never takes out a host whose other routes serve.
//
// # Probes
//
// While a host is out, a probe proves what failed is gone, and only a
// probe ends its open period; no client request is sent to a host known
// to be out:
//
//   - with a Check configured, the probe is that HTTP request, whatever
//     took the host out;
//   - without one, a host out after connection-level failures (refused,
//     unreachable, connect timeout, DNS) is probed with a TCP connect;
//   - a host out for anything else without a Check (a reset after reading,
//     a timeout, a TLS failure, 5xx to everything) cannot be proven back
//     by a connect: its open period (Settings.Timeout, growing) ends by
//     time, and half-open real requests decide.
//
// Probes run on a short, growing interval — ProbeInterval, doubling with
// ±25% jitter up to MaxProbeInterval — and every PanicInterval while no
// other host Hosts knows of is serving (a whole pool out), so that
// recovery follows a host's return within about that long. A host that
// trips again without a healthy spell (Settings.Interval closed) in
// between is first probed when its growing open period ends, so that a
// host that passes probes but fails real traffic does not flap; while no
// other host serves, that period is at most 3×PanicInterval. One probe
// per host is in flight at a time; a host nobody asked about for a whole
// Settings.Interval is no longer probed until it is asked about again;
// [Hosts.Close] stops them all (hosts then leave their open period by
// time).
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
	// ProbeTimeout bounds one connect probe. Default 1 s.
	ProbeTimeout time.Duration
	// NoProbes turns probing off, Check included: an out host waits for
	// its open period.
	NoProbes bool

	// StatusFailureRatio and StatusMinRequests are the rule for an
	// upstream's own failure answers (502, 503, 504, and 500 and 501 with
	// Settings.CountServerErrors): they take a host out only when, in the
	// rolling window, at least StatusMinRequests requests completed and
	// failures of any kind are at least StatusFailureRatio of them — a
	// host that fails nearly everything. Below that, failing routes are
	// the business of a per-route breaker ([New] with a Key). Defaults 0.9
	// and Settings.MinRequests (20). A ratio of 1 sheds only a host that
	// fails everything.
	StatusFailureRatio float64
	StatusMinRequests  uint32

	// SafeFirst is how long a half-open host keeps its trial requests for
	// idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE): a
	// request of another method (a POST, which may be applied and then
	// lost to a reset) is sent elsewhere by a pool ([Hosts.AllowsRequest])
	// and refused by the transport ([gateway.ClassOpen], not sent, so a
	// retry layer moves it to another host). It is admitted all the same
	// once one trial request succeeded, once SafeFirst has passed (the
	// traffic has no idempotent requests to try: a POST-only workload is
	// delayed by at most SafeFirst, never starved), or at once when no
	// other host is serving (refusing it would only fail it). Default 1 s;
	// negative turns the preference off.
	SafeFirst time.Duration

	// Check configures an HTTP health check, the probe of an out host
	// (and, with Check.Always, a watch over serving ones). Its zero value
	// is no check.
	Check HealthCheck

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

	// SlowStart is how long a host that returns after being out, or whose
	// rest ends, takes to ramp from 10% to its full share of new requests
	// (HAProxy slowstart, Envoy slow_start_config). After a rest the ramp
	// keeps a host that fails some requests (a reset after reading, which
	// a POST cannot be retried after) from taking its full share, and
	// another burst of such failures, the moment its rest ends. Default
	// 3 s; negative turns it off. A pool applies shares only among hosts
	// that can serve: a host alone gets everything.
	SlowStart time.Duration
}

// HealthCheck is an HTTP health check of [HostHealth]: a GET of Path on a
// host, passed by an answer with a status in [MinStatus, MaxStatus]
// within Timeout (like Caddy's health_uri, HAProxy's option httpchk or
// Envoy's HTTP health check). It goes through the transport that
// [Hosts.Transport] wraps (so TLS, timeouts and dialing are the proxy's)
// but not through the breakers or a pool: it is probe traffic, not a
// request. Its answer's body is read (up to 64 KiB) and discarded.
//
// While a host is out, whatever took it out, the check is its probe: the
// host returns (half-open) only after a check passes. A connect cannot
// prove a host back that reset requests after reading them, timed out or
// answered 5xx to everything; a check can.
//
// With Always, serving hosts are checked too, every Interval: Fall failed
// checks in a row take a host out (Caddy's active health checks, Envoy's
// unhealthy_threshold). A pool tells Hosts its targets ([Hosts.Watch]) so
// that they are checked before any traffic; other hosts are checked from
// their first request.
type HealthCheck struct {
	// Path is the path from the host's root, with an optional query:
	// "/healthz". "" turns the check off.
	Path string
	// Host is the Host header of the check. Default the host's name
	// (host:port), as the pool sends.
	Host string
	// MinStatus and MaxStatus bound the statuses that pass. Defaults 200
	// and 399.
	MinStatus int
	MaxStatus int
	// Timeout bounds one check, to its response header. Default
	// HostHealth.ProbeTimeout (1 s).
	Timeout time.Duration

	// Always checks serving hosts too. Off by default: checks run only
	// while a host is out.
	Always bool
	// Interval is how often Always checks a serving host (±10% jitter).
	// Default 5 s.
	Interval time.Duration
	// Fall is how many failed checks in a row take a serving host out
	// with Always. Default 2: one lost check (a pause, a slow moment)
	// ejects nothing, while passive evidence catches fast failures sooner
	// anyway.
	Fall int
}

func (h HostHealth) withDefaults(minRequests uint32) HostHealth {
	orDefault(&h.ProbeInterval, defaultProbeInterval)
	orDefault(&h.MaxProbeInterval, defaultMaxProbeInterval)
	h.MaxProbeInterval = max(h.MaxProbeInterval, h.ProbeInterval)
	orDefault(&h.PanicInterval, defaultPanicInterval)
	orDefault(&h.ProbeTimeout, defaultProbeTimeout)
	orDefault(&h.StatusFailureRatio, defaultStatusFailureRatio)
	orDefault(&h.StatusMinRequests, minRequests)
	orDefault(&h.SafeFirst, defaultSafeFirst)
	orDefault(&h.RestAfter, defaultRestAfter)
	orDefault(&h.Rest, defaultRest)
	orDefault(&h.MaxRest, defaultMaxRest)
	h.MaxRest = max(h.MaxRest, h.Rest)
	orDefault(&h.Probation, defaultProbation)
	orDefault(&h.SlowStart, defaultSlowStart)
	c := &h.Check
	orDefault(&c.MinStatus, defaultCheckMinStatus)
	orDefault(&c.MaxStatus, defaultCheckMaxStatus)
	orDefault(&c.Timeout, h.ProbeTimeout)
	orDefault(&c.Interval, defaultCheckInterval)
	orDefault(&c.Fall, defaultCheckFall)
	return h
}

// validate reports the invalid fields of h (before defaults).
func (h HostHealth) validate() []error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ProbeInterval", h.ProbeInterval}, {"MaxProbeInterval", h.MaxProbeInterval},
		{"PanicInterval", h.PanicInterval}, {"ProbeTimeout", h.ProbeTimeout}, {"Rest", h.Rest},
		{"MaxRest", h.MaxRest}, {"Check.Timeout", h.Check.Timeout}, {"Check.Interval", h.Check.Interval}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("negative Health.%s %v", d.name, d.v))
		}
	}
	if h.Probation < 0 {
		errs = append(errs, fmt.Errorf("negative Health.Probation %d", h.Probation))
	}
	if r := h.StatusFailureRatio; math.IsNaN(r) || r < 0 || r > 1 {
		errs = append(errs, fmt.Errorf("Health.StatusFailureRatio %v is not in (0, 1]", r))
	}
	c := h.Check
	if c.Fall < 0 {
		errs = append(errs, fmt.Errorf("negative Health.Check.Fall %d", c.Fall))
	}
	if c.MinStatus < 0 || c.MaxStatus < 0 || (c.MaxStatus != 0 && c.MinStatus > c.MaxStatus) {
		errs = append(errs, fmt.Errorf("Health.Check status range [%d, %d] is empty", c.MinStatus, c.MaxStatus))
	}
	if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
		errs = append(errs, fmt.Errorf("Health.Check.Path %q does not start with /", c.Path))
	}
	return errs
}

// hostState is what Hosts keeps about a host beside its breaker.
type hostState struct {
	// consecutive counts host-evidence failures in a row (not an
	// upstream's own status): the ConsecutiveFailures rule reads it.
	consecutive atomic.Uint32
	lastClass   atomic.Int32 // gateway.Class of the last failure
	// cause is the gateway.Class of the evidence that took the host out
	// last: ClassUpstreamStatus when the status rule did.
	cause      atomic.Int32
	outSince   atomic.Int64 // ns; when it last left serving
	warmFrom   atomic.Int64 // ns; when it last came back; 0 never
	halfSince  atomic.Int64 // ns; when it last went half-open
	await      atomic.Bool  // out until a probe passes
	probeAfter atomic.Int64 // ns; no probe before (a repeat trip's period)
	asked      atomic.Int64 // ns; when a request or a pool last asked for it while out
	probing    atomic.Bool  // a probe loop runs
	watching   atomic.Bool  // an always-on check loop runs
	checking   atomic.Bool  // a check is in flight
	forced     atomic.Bool  // failed checks take the host out: readyToTrip trips
	probeStep  atomic.Int32 // probes failed in this out spell
	nextProbe  atomic.Int64 // ns; 0 none
	// target is the scheme and host that requests to the host use, for
	// the health check; nil until known.
	target atomic.Pointer[url.URL]

	// fails counts the host-evidence failures in the rolling window, which
	// gobreaker's counts do not tell apart from an upstream's own answers.
	fails window

	// lastTrail and lastLen mark the request whose failure was counted
	// last, so that its next attempt on the same host is not counted again.
	lastTrail atomic.Pointer[gateway.Trail]
	lastLen   atomic.Int64

	spell spell // its time out of service, for the log

	restUntil atomic.Int64 // ns; resting while now < restUntil
	strikes   atomic.Int32 // rests since the host last passed probation
	successes atomic.Int32 // successes in a row since a strike
	restMu    sync.Mutex   // serialises failures' resting
	restRun   int          // failures in a row, under restMu
}

// window counts events over a rolling window of buckets, as gobreaker's
// counts do. Only failures touch it, under its mutex.
type window struct {
	mu      sync.Mutex
	buckets []bucket
}

type bucket struct {
	epoch int64 // now / period of the bucket's period
	n     uint32
}

// add counts one event at now, in a window of n buckets of period ns.
func (w *window) add(now, period int64, n int) {
	ep := now / period
	w.mu.Lock()
	if w.buckets == nil {
		w.buckets = make([]bucket, n)
	}
	b := &w.buckets[int(ep%int64(n))]
	if b.epoch != ep {
		*b = bucket{epoch: ep}
	}
	b.n++
	w.mu.Unlock()
}

// sum returns the events counted in the window that ends at now.
func (w *window) sum(now, period int64) uint32 {
	ep := now / period
	w.mu.Lock()
	defer w.mu.Unlock()
	var total uint32
	for _, b := range w.buckets {
		if b.epoch <= ep && ep-b.epoch < int64(len(w.buckets)) {
			total += b.n
		}
	}
	return total
}

func (w *window) reset() {
	w.mu.Lock()
	clear(w.buckets)
	w.mu.Unlock()
}

// connLevel reports a class that a TCP connect disproves.
func connLevel(c gateway.Class) bool {
	switch c {
	case gateway.ClassRefused, gateway.ClassUnreachable, gateway.ClassConnectTimeout, gateway.ClassDNS:
		return true
	}
	return false
}

// safeMethod reports an idempotent method (RFC 9110 §9.2.2): a trial
// request of a half-open host that may be lost without harm.
func safeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// Kinds of probe of an out host.
const (
	probeNone    = iota // the open period ends by time; real requests decide
	probeConnect        // a TCP connect
	probeCheck          // the HTTP health check
)

// probeKind is how a host out for cause is proven back.
func (s *set) probeKind(cause gateway.Class) int {
	hh := &s.c.Health
	switch {
	case s.prober == nil || hh.NoProbes:
		return probeNone
	case hh.Check.Path != "":
		return probeCheck
	case connLevel(cause):
		return probeConnect
	}
	return probeNone
}

// prober runs the probe and check loops of a Hosts.
type prober struct {
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex // orders wg.Add before Close's Wait
	closed atomic.Bool
	wg     sync.WaitGroup
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	// rt is the transport checks go through: what Hosts.Transport wraps.
	rt atomic.Pointer[roundTripper]
}

type roundTripper struct{ http.RoundTripper }

// start runs loop on a new goroutine unless the prober is closed; flag is
// the loop's running flag, which it clears when it ends.
func (p *prober) start(flag *atomic.Bool, loop func()) {
	if !flag.CompareAndSwap(false, true) {
		return
	}
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		flag.Store(false)
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		defer flag.Store(false)
		loop()
	}()
}

// setTarget records the scheme and host that requests to e's host use,
// for its health check, and starts the always-on check if configured.
func (e *entry) setTarget(u *url.URL) {
	h := e.host
	if h.target.Load() != nil || u == nil || u.Host == "" {
		return
	}
	if h.target.CompareAndSwap(nil, &url.URL{Scheme: u.Scheme, Host: u.Host}) {
		s := e.set
		if hc := &s.c.Health.Check; hc.Always && hc.Path != "" && !s.c.Health.NoProbes && s.prober != nil {
			s.prober.start(&h.watching, func() { s.watchLoop(e) })
		}
	}
}

// hostFailure records a failure of class c for the request req; it
// returns false when the failure is not to be counted (a repeat of the
// same client request on this host).
func (e *entry) hostFailure(req *http.Request, c gateway.Class) bool {
	h := e.host
	if h.target.Load() == nil {
		e.setTarget(req.URL)
	}
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
		// An answer: the host is alive, whatever the route's trouble.
		if h.consecutive.Load() != 0 {
			h.consecutive.Store(0)
		}
		return true // the status rule's business only
	}
	h.consecutive.Add(1)
	s := e.set
	now := s.now()
	h.fails.add(now, int64(s.c.BucketPeriod), int(s.c.Interval/s.c.BucketPeriod))
	hh := &s.c.Health
	if hh.RestAfter < 0 {
		return true
	}
	h.restMu.Lock()
	h.successes.Store(0)
	rested := false
	if h.restRun++; h.restRun >= hh.RestAfter && now >= h.restUntil.Load() {
		strikes := h.strikes.Add(1)
		rest := hh.Rest
		for i := int32(1); i < strikes && rest < hh.MaxRest; i++ {
			rest *= 2
		}
		h.restUntil.Store(now + int64(min(rest, hh.MaxRest)))
		h.restRun = 0
		rested = true
	}
	h.restMu.Unlock()
	if rested && State(e.state.Load()) == StateClosed {
		e.leave(now, pool.StateResting, c)
	}
	return true
}

// hostStatusFailure records an upstream's own failure status: the status
// rule counts it, the consecutive rule, the host-evidence ratio and
// resting do not.
func (e *entry) hostStatusFailure(req *http.Request) bool {
	return e.hostFailure(req, gateway.ClassUpstreamStatus)
}

// hostSuccess records a success, writing only what changes. A success of
// a host out of service whose breaker is closed and whose rest is over
// brings it back.
func (e *entry) hostSuccess() {
	h := e.host
	if h.consecutive.Load() != 0 {
		h.consecutive.Store(0)
	}
	if h.spell.since.Load() != 0 && State(e.state.Load()) == StateClosed {
		if now := e.set.now(); now >= h.restUntil.Load() {
			e.rejoin(now)
		}
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

// hostReadyToTrip is the trip rule of a host, under cb's lock after a
// failure while closed: n are gobreaker's counts of the window, whose
// failures include an upstream's own failure answers.
func (e *entry) hostReadyToTrip(n gobreaker.Counts) bool {
	s, h := e.set, e.host
	e.statusTrip = false
	if h.forced.Load() {
		return true
	}
	c := countsOf(n)
	// Only evidence about the host runs in a row.
	c.ConsecutiveFailures = h.consecutive.Load()
	if s.c.ReadyToTrip != nil {
		return s.c.ReadyToTrip(c)
	}
	if c.ConsecutiveFailures >= s.c.ConsecutiveFailures {
		return true
	}
	done := uint64(c.Successes) + uint64(c.Failures)
	if done >= uint64(s.c.MinRequests) &&
		float64(h.fails.sum(s.now(), int64(s.c.BucketPeriod))) >= s.c.FailureRatio*float64(done) {
		return true
	}
	hh := &s.c.Health
	if done >= uint64(hh.StatusMinRequests) && float64(c.Failures) >= hh.StatusFailureRatio*float64(done) {
		e.statusTrip = true
		return true
	}
	return false
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

// awaiting reports whether e is out until a probe passes.
func (e *entry) awaiting() bool {
	h := e.host
	return h != nil && h.await.Load() && !e.set.prober.closed.Load()
}

// askEvery rations the writes of hostState.asked.
const askEvery = int64(100 * time.Millisecond)

// ask records that a request or a pool asked for e's host while it is
// out, and restarts its probes if they stopped for lack of interest.
func (e *entry) ask(now int64) {
	h := e.host
	if h == nil {
		return
	}
	if now-h.asked.Load() >= askEvery {
		h.asked.Store(now)
	}
	if h.await.Load() && !h.probing.Load() {
		e.set.startProbe(e)
	}
}

// startProbe starts e's probe loop unless one runs, e is not awaiting a
// probe, or Hosts is closed.
func (s *set) startProbe(e *entry) {
	if s.prober == nil || !e.host.await.Load() {
		return
	}
	s.prober.start(&e.host.probing, func() { s.probeLoop(e) })
}

// probeLoop probes e's host while it is out awaiting a probe, and ends its
// open period at the first probe that passes.
func (s *set) probeLoop(e *entry) {
	p, h, hh := s.prober, e.host, &s.c.Health
	defer h.nextProbe.Store(0)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := s.now()
		if !e.probeDue(now) {
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
		if d := time.Duration(h.probeAfter.Load() - now); d > wait {
			wait = d // a repeat trip: not before its open period ends
		}
		h.nextProbe.Store(now + int64(wait))
		timer.Reset(wait)
		select {
		case <-p.ctx.Done():
			return
		case <-timer.C:
		}
		if !e.probeDue(s.now()) {
			return
		}
		if s.probe(e) {
			e.probeSucceeded()
			return
		}
		if p.ctx.Err() != nil {
			return
		}
		h.probeStep.Add(1)
	}
}

// probeDue reports whether e is still out awaiting a probe, still in the
// set, and asked about within the last Interval.
func (e *entry) probeDue(now int64) bool {
	h := e.host
	return State(e.state.Load()) == StateOpen && h.await.Load() &&
		now-h.asked.Load() < int64(e.set.c.Interval) && e.set.lookup(e.key) == e
}

// probe runs one probe of e's host: the health check if configured, else
// a TCP connect. It reports whether it passed.
func (s *set) probe(e *entry) bool {
	if s.c.Health.Check.Path != "" {
		_, ok, _ := s.check(e)
		return ok
	}
	p := s.prober
	ctx, cancel := context.WithTimeout(p.ctx, s.c.Health.ProbeTimeout)
	defer cancel()
	c, err := p.dial(ctx, "tcp", e.key)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// maxCheckBody is how much of a check's answer is read, so that its
// connection can be reused.
const maxCheckBody = 64 << 10

// check runs the health check of e's host once. It reports whether the
// check passed and, if not, the class of its failure; ran is false when
// another check of the host was in flight (nothing was sent).
func (s *set) check(e *entry) (c gateway.Class, ok, ran bool) {
	h := e.host
	if !h.checking.CompareAndSwap(false, true) {
		return gateway.ClassInternal, false, false
	}
	defer h.checking.Store(false)
	hc := &s.c.Health.Check
	scheme := "http"
	if t := h.target.Load(); t != nil && t.Scheme != "" {
		scheme = t.Scheme
	}
	ctx, cancel := context.WithTimeout(s.prober.ctx, hc.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+e.key+hc.Path, nil)
	if err != nil {
		return gateway.ClassInternal, false, true
	}
	if hc.Host != "" {
		req.Host = hc.Host
	}
	req.Header.Set("User-Agent", "proxykit-health-check")
	var rt http.RoundTripper = http.DefaultTransport
	if r := s.prober.rt.Load(); r != nil {
		rt = r.RoundTripper
	}
	res, err := rt.RoundTrip(req)
	if err != nil {
		return gateway.ClassifyError(err, e.key, true).Class, false, true
	}
	_, _ = io.CopyN(io.Discard, res.Body, maxCheckBody)
	_ = res.Body.Close()
	if res.StatusCode < hc.MinStatus || res.StatusCode > hc.MaxStatus {
		return gateway.ClassUpstreamStatus, false, true
	}
	return 0, true, true
}

// watchLoop is the always-on check of a serving host: every
// Check.Interval, and Check.Fall failed checks in a row take it out.
// While the host is not serving, its probes check it instead.
func (s *set) watchLoop(e *entry) {
	p, hc := s.prober, &s.c.Health.Check
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	fails := 0
	for {
		timer.Reset(time.Duration(float64(hc.Interval) * (0.9 + 0.2*rand.Float64())))
		select {
		case <-p.ctx.Done():
			return
		case <-timer.C:
		}
		if s.lookup(e.key) != e {
			return // evicted
		}
		if State(e.state.Load()) != StateClosed {
			fails = 0
			continue
		}
		c, ok, ran := s.check(e)
		switch {
		case !ran:
		case ok:
			fails = 0
		case p.ctx.Err() != nil:
			return
		default:
			if fails++; fails >= hc.Fall {
				fails = 0
				e.forceTrip(c)
			}
		}
	}
}

// forceTrip takes e's serving host out: failed checks are evidence about
// the host. gobreaker has no way to open a breaker but a failure it is
// told to trip on.
func (e *entry) forceTrip(c gateway.Class) {
	h := e.host
	if !e.pin() {
		return
	}
	h.lastClass.Store(int32(c))
	h.forced.Store(true)
	done, err := e.cb.Load().cb.Allow()
	if err == nil {
		done(errFailure)
	}
	h.forced.Store(false)
	e.unpin()
	e.notify()
}

// probeSucceeded ends e's open period: the next request goes half-open.
// The host's resting is cleared: the probe proved the failure gone.
func (e *entry) probeSucceeded() {
	now := e.set.now()
	h := e.host
	h.await.Store(false)
	if now < e.openUntil.Load() {
		e.openUntil.Store(now)
	}
	h.restUntil.Store(0)
}

// admitsUnsafe reports whether e's half-open host takes a request of a
// method that is not idempotent now (see HostHealth.SafeFirst).
func (e *entry) admitsUnsafe(now int64) bool {
	hh := &e.set.c.Health
	if hh.SafeFirst < 0 || now-e.host.halfSince.Load() >= int64(hh.SafeFirst) {
		return true
	}
	if e.cb.Load().cb.Counts().ConsecutiveSuccesses > 0 {
		e.notify()
		return true // a trial request passed
	}
	e.notify()
	return !e.set.othersServing(e)
}

// hostHealth returns the state of a host and its share.
func (e *entry) hostHealth(now int64) (pool.State, float64) {
	switch State(e.state.Load()) {
	case StateOpen:
		if now >= e.openUntil.Load() && !e.awaiting() {
			return pool.StateTrial, 1 // due: the next request is a trial
		}
		return pool.StateOut, 0
	case StateHalfOpen:
		return pool.StateTrial, 1
	}
	if share := e.share(now); share < 1 {
		if share == 0 {
			return pool.StateResting, 0
		}
		return pool.StateWarming, share
	}
	if e.host.spell.since.Load() != 0 {
		// Its rest is over, but no request has succeeded since it left
		// service: back, not yet proven.
		return pool.StateWarming, 1
	}
	return pool.StateServing, 1
}

// share is a serving host's share of new requests: 0 while resting, a
// ramp from 0.1 to 1 over SlowStart after a return, else 1.
func (e *entry) share(now int64) float64 {
	h := e.host
	rest := h.restUntil.Load()
	if now < rest {
		return 0
	}
	ss := e.set.c.Health.SlowStart
	// Warming from a return, or from the end of a rest.
	if w := max(h.warmFrom.Load(), rest); ss > 0 && w > 0 && now-w < int64(ss) {
		return 0.1 + 0.9*float64(now-w)/float64(ss)
	}
	return 1
}
