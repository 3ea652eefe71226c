package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Defaults of a Pool. See [PassiveHealth] for how the rest defaults were
// chosen.
const (
	DefaultRestAfter       = 1
	DefaultRest            = 1 * time.Second
	DefaultMaxRest         = 10 * time.Second
	DefaultProbation       = 100
	DefaultDecay           = 10 * time.Second
	DefaultNoUpstreamRetry = 1 * time.Second
)

const (
	// noUpstreamScheme marks an outbound request for which Rewrite found no
	// host. http.Transport rejects it without touching the network.
	noUpstreamScheme = "proxykit-no-upstream"
	// failurePenalty: a failure counts, for the balancer, as a response
	// this many times slower than the host's usual (successful) latency.
	failurePenalty = 2
)

// Pool is a set of upstream targets and a balancer over them. It is the
// ReverseProxy's Rewrite (which picks a target) and wraps its Transport
// (which observes each target's latency and failures). [Pool.Attach] sets
// both on a ReverseProxy in one call:
//
//	p, err := pool.New(targets...)
//	proxy := &httputil.ReverseProxy{
//		Transport:    gateway.NewTransport(),
//		ErrorHandler: gateway.ErrorHandler,
//	}
//	err = p.Attach(proxy)
//
// With per-host circuit breakers (package breaker), the breakers go inside
// the pool's Transport, and the pool asks them which hosts may be used:
//
//	p.Health = hosts
//	proxy.Transport = hosts.Transport(gateway.NewTransport())
//	err = p.Attach(proxy)
//
// Every pick skips hosts that Health does not allow (a hard rule), and
// prefers hosts this request has not tried yet (see [gateway.Trail]) and
// hosts that are not resting after failures (see [PassiveHealth]); among
// the hosts of the best preference the Policy chooses. Tried and resting
// hosts are used only when nothing better is left, so that a retry layer
// over a one-host pool can still retry, and resting never empties a pool.
// When no host is allowed the request fails with [gateway.ClassNoUpstream]
// (503, Retry-After) without dialing.
//
// Hosts are named by [gateway.UpstreamName]: host:port, with the scheme's
// default port filled in.
//
// Create a Pool with [New]. The exported fields configure it; set them
// before its first use and do not change them afterwards. A Pool is safe
// for concurrent use.
type Pool struct {
	// Policy chooses among the eligible hosts. Default PeakEWMA.
	Policy Policy

	// Health, if set, decides which hosts may be sent requests now; a
	// *breaker.Hosts is one. Nil allows every host.
	Health Health

	// Passive configures resting hosts that fail.
	Passive PassiveHealth

	// Decay is the peak-EWMA's time constant: how fast a latency peak or a
	// failure is forgiven. Default 10 s (Finagle's and Linkerd's).
	Decay time.Duration

	// Logger receives one warn line each time a host starts resting. Nil
	// means slog.Default().
	Logger *slog.Logger

	ups    []*upstream
	byHost map[string]*upstream
	rr     atomic.Uint64
	epoch  time.Time
	clock  func() int64 // tests; nil: time since epoch
}

// Health is what a Pool asks about its hosts, by their [gateway.UpstreamName].
// *breaker.Hosts implements it. Both methods are called on the request path,
// for several hosts per request: they must be fast and safe for concurrent
// use.
type Health interface {
	// Allows reports whether host may be sent a request now.
	Allows(host string) bool
	// OpenFor reports how long a host that is not allowed stays so, or 0
	// when unknown. The shortest positive one becomes the Retry-After of a
	// no_upstream failure (1 s when none is known).
	OpenFor(host string) time.Duration
}

// PassiveHealth rests a host that fails: for a while the balancer sends it
// requests only if no other healthy host is left. It is what keeps
// requests that cannot be retried (a POST that reached the upstream)
// succeeding when one host of several fails some of them; a breaker, which
// needs several failures in a row or a high failure rate, does not notice
// a host that resets one request in five.
//
// A host rests after RestAfter consecutive failures (classes that count as
// failures, or an upstream 502/503/504) for Rest. If it fails again before
// it has served Probation requests successfully, its next rest is twice as
// long, up to MaxRest; Probation successes in a row clear the doubling.
//
// The defaults — rest after 1 failure, for 1 s doubling up to 10 s,
// probation 100 — were chosen by measurement (TestPassiveHealthMeasure):
// 3 hosts, one resetting a random 20% of POSTs after reading them, 30 s at
// ~40 and ~190 POST/s and 10 s flat out (~10k/s), on loopback. POST
// success with the defaults and PeakEWMA: 99.75%, 99.90%, 99.995%; with
// RoundRobin: 99.49%, 99.90%, 99.996%. Without resting: 93.4–93.9% (round
// robin), 97.3% flat out (peak EWMA). nginx's fixed 10 s after one failure
// scores about the same (99.75%, 99.95%, 99.999%) but keeps a host that
// failed briefly out of rotation: after a 2 s outage it got traffic again
// 8.0 s after it had recovered, against 1.0 s with the doubling. A fixed
// 1 s rest recovers at once but reaches only 98.0% at 40/s (round robin);
// resting after 2 failures in a row, 99.2% (peak EWMA).
//
// Resting is a preference, never a verdict: it does not empty a pool. With
// every healthy host resting, the balancer uses them all anyway.
type PassiveHealth struct {
	// RestAfter is how many consecutive failures rest a host. Default 1;
	// negative disables resting.
	RestAfter int
	// Rest is the first rest. Default 1 s.
	Rest time.Duration
	// MaxRest caps the doubling. Default 10 s.
	MaxRest time.Duration
	// Probation is how many successes in a row clear the doubling.
	// Default 100.
	Probation int
}

// HostStatus is one host's state, as a Pool reports it.
type HostStatus struct {
	// Upstream is the host's [gateway.UpstreamName].
	Upstream string `json:"upstream"`
	// State is "ok", "resting" or "unhealthy".
	State string `json:"state"`
	// Healthy reports whether new requests may be sent to it now.
	Healthy bool `json:"healthy"`
	// InFlight is the number of requests now in flight to it.
	InFlight int64 `json:"in_flight"`
	// Latency is the balancer's latency estimate (peak EWMA of successful
	// requests, to the response header); 0 if unknown.
	Latency time.Duration `json:"latency_ns"`
	// Requests and Failures count what was sent to it.
	Requests int64 `json:"requests"`
	Failures int64 `json:"failures"`
	// Until is when a resting state ends; zero if none.
	Until time.Time `json:"until,omitzero"`
}

// upstream is one target and what the pool knows about it.
type upstream struct {
	target *url.URL
	host   string

	inFlight  atomic.Int64
	restUntil atomic.Int64 // pool clock ns; resting while now < restUntil
	requests  atomic.Int64
	failures  atomic.Int64
	latency   peakEWMA // of successful requests
	cost      peakEWMA // of all requests, failures penalised: the balancer's

	mu          sync.Mutex // serialises observations
	consecutive int        // failures in a row
	strikes     int        // rests since the host last passed probation
	successes   int        // successes in a row
}

// NewPool returns a pool over targets, each an absolute http or https URL
// with a host and an optional path prefix and query (joined with the
// request's as [httputil.ProxyRequest.SetURL] does). Targets must have
// distinct hosts, since health is kept per host, and carry no user info
// or fragment. The URLs are copied.
func New(targets ...*url.URL) (*Pool, error) {
	if len(targets) == 0 {
		return nil, errors.New("pool: New: no targets")
	}
	p := &Pool{byHost: make(map[string]*upstream, len(targets)), epoch: time.Now()}
	for i, t := range targets {
		if err := checkTarget(t); err != nil {
			return nil, fmt.Errorf("pool: New: target %d: %w", i, err)
		}
		if p.byHost[gateway.UpstreamName(t)] != nil {
			return nil, fmt.Errorf("pool: New: target %d: host %s appears twice", i, gateway.UpstreamName(t))
		}
		c := *t
		u := &upstream{target: &c, host: gateway.UpstreamName(&c)}
		p.ups = append(p.ups, u)
		p.byHost[u.host] = u
	}
	return p, nil
}

func checkTarget(t *url.URL) error {
	switch {
	case t == nil:
		return errors.New("nil URL")
	case t.Scheme != "http" && t.Scheme != "https":
		return fmt.Errorf("%q: scheme must be http or https", t.Redacted())
	case t.Opaque != "" || t.Host == "":
		return fmt.Errorf("%q: no host", t.Redacted())
	case t.User != nil:
		return fmt.Errorf("%q: user info is not forwarded; set credentials in a Rewrite", t.Redacted())
	case t.Fragment != "" || strings.HasSuffix(t.Host, ":"):
		return fmt.Errorf("%q: fragment or empty port", t.Redacted())
	}
	return nil
}

func (p *Pool) now() int64 {
	if p.clock != nil {
		return p.clock()
	}
	return int64(time.Since(p.epoch))
}

// Rewrite is a ReverseProxy Rewrite function: it picks a target and routes
// the outbound request to it with [httputil.ProxyRequest.SetURL] — scheme
// and host replaced, the target's path prefix joined with the request's
// path, queries merged, and the outbound Host header set to the target's
// host. Like SetURL it sets no X-Forwarded-* headers; to add them, wrap it:
//
//	Rewrite: func(pr *httputil.ProxyRequest) { pool.Rewrite(pr); pr.SetXForwarded() }
//
// The pick is recorded in the request's [gateway.Trail], if its context carries
// one (a retry layer's), so that the next attempt goes elsewhere.
//
// When every host is unhealthy, Rewrite cannot fail the request itself: it
// marks the outbound request instead, and the pool's [Pool.Transport]
// answers it with a [gateway.ClassNoUpstream] failure without dialing. Without the
// pool's Transport in the chain, the mark makes the base transport fail
// the request (unsupported protocol scheme, classified internal).
func (p *Pool) Rewrite(pr *httputil.ProxyRequest) {
	trail := gateway.TrailFrom(pr.In.Context())
	u := p.pick(trail, p.now())
	if u == nil {
		pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = noUpstreamScheme, "", ""
		return
	}
	if trail != nil {
		trail.Add(u.host)
	}
	pr.SetURL(u.target)
}

// Transport returns a RoundTripper that records, for each of the pool's
// hosts, the requests in flight, the latency to the response header and
// the failures, and answers the requests Rewrite marked as having no
// upstream with a [gateway.ClassNoUpstream] failure. It must wrap whatever reaches
// the network, breakers included, so that it sees their outcomes; a nil
// next means http.DefaultTransport. Requests to hosts outside the pool
// pass through unobserved.
//
// A failure is an error whose class counts as one ([gateway.Class.CountsAsFailure])
// or an upstream response of 502, 503 or 504. A client that went away, an
// open breaker and an empty pool count for nothing.
func (p *Pool) Transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &poolTransport{p: p, next: next}
}

type poolTransport struct {
	p    *Pool
	next http.RoundTripper
}

var errNoUpstream = errors.New("every upstream is unhealthy")

// RoundTrip implements http.RoundTripper.
func (t *poolTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	p := t.p
	if req.URL.Scheme == noUpstreamScheme {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		f := gateway.NewFailure(gateway.ClassNoUpstream, gateway.TrailFrom(req.Context()).Last(), errNoUpstream)
		f.RetryAfter = p.noUpstreamRetryAfter()
		return nil, f
	}
	u := p.byHost[gateway.UpstreamName(req.URL)]
	if u == nil {
		return t.next.RoundTrip(req)
	}
	u.inFlight.Add(1)
	start := p.now()
	res, err := t.next.RoundTrip(req)
	end := p.now()
	u.inFlight.Add(-1)
	switch {
	case err != nil:
		c := gateway.Classify(err)
		if c.CountsAsFailure() && !errors.Is(req.Context().Err(), context.Canceled) {
			p.observe(u, true, end-start, end)
		}
	default:
		p.observe(u, gateway.IsFailureStatus(res.StatusCode), end-start, end)
	}
	return res, err
}

// CloseIdleConnections closes next's idle connections, if it can.
func (t *poolTransport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (p *Pool) decay() float64 {
	if p.Decay > 0 {
		return float64(p.Decay)
	}
	return float64(DefaultDecay)
}

// observe records one outcome of u at now: latency, the balancer's cost,
// and passive health. For the cost a failure is a sample of failurePenalty
// times the largest of its own latency and every host's latency of
// successes: a failure never looks faster than the slowest success in the
// pool, so failing fast does not attract traffic; and however many
// failures come in a row the penalty stays bounded, so it wears off within
// about Decay·ln(failurePenalty) once the host stops failing.
func (p *Pool) observe(u *upstream, failed bool, rtt, now int64) {
	u.requests.Add(1)
	ph := p.Passive.withDefaults()
	tau := p.decay()
	var rest time.Duration
	u.mu.Lock()
	if !failed {
		u.latency.observe(now, float64(rtt), tau)
		u.cost.observe(now, float64(rtt), tau)
		u.consecutive = 0
		if u.successes++; u.successes >= ph.Probation {
			u.strikes = 0
		}
		u.mu.Unlock()
		return
	}
	u.failures.Add(1)
	slowest := float64(rtt)
	for _, v := range p.ups {
		slowest = max(slowest, v.latency.value(now, tau))
	}
	u.cost.observe(now, failurePenalty*slowest, tau)
	u.consecutive++
	u.successes = 0
	if ph.RestAfter > 0 && u.consecutive >= ph.RestAfter && now >= u.restUntil.Load() {
		u.strikes++ // reset to 0 by Probation successes in a row
		rest = ph.Rest
		for i := 1; i < u.strikes && rest < ph.MaxRest; i++ {
			rest *= 2
		}
		rest = min(rest, ph.MaxRest)
		u.restUntil.Store(now + int64(rest))
		u.consecutive = 0
	}
	strikes := u.strikes
	u.mu.Unlock()
	if rest > 0 {
		logger := p.Logger
		if logger == nil {
			logger = slog.Default()
		}
		logger.LogAttrs(context.Background(), slog.LevelWarn, "pool: upstream resting after failures",
			slog.String("upstream", u.host), slog.Duration("rest", rest), slog.Int("strikes", strikes))
	}
}

func (ph PassiveHealth) withDefaults() PassiveHealth {
	if ph.RestAfter == 0 {
		ph.RestAfter = DefaultRestAfter
	}
	if ph.Rest <= 0 {
		ph.Rest = DefaultRest
	}
	if ph.MaxRest <= 0 {
		ph.MaxRest = DefaultMaxRest
	}
	ph.MaxRest = max(ph.MaxRest, ph.Rest)
	if ph.Probation <= 0 {
		ph.Probation = DefaultProbation
	}
	return ph
}

// allows reports whether Health allows host.
func (p *Pool) allows(host string) bool { return p.Health == nil || p.Health.Allows(host) }

// noUpstreamRetryAfter is the shortest time until an unhealthy host may be
// usable, per RetryAfter, or DefaultNoUpstreamRetry.
func (p *Pool) noUpstreamRetryAfter() time.Duration {
	best := time.Duration(0)
	if p.Health != nil {
		for _, u := range p.ups {
			if d := p.Health.OpenFor(u.host); d > 0 && (best == 0 || d < best) {
				best = d
			}
		}
	}
	if best == 0 {
		best = DefaultNoUpstreamRetry
	}
	return best
}

// Status returns the state of every host, in target order, for a
// [status.View] (View.Upstreams = pool.Status). State is "ok",
// "resting" or "unhealthy" (Health does not allow it: a breaker is open).
func (p *Pool) Status() []HostStatus {
	now := p.now()
	tau := p.decay()
	out := make([]HostStatus, len(p.ups))
	for i, u := range p.ups {
		s := HostStatus{
			Upstream: u.host,
			State:    "ok",
			Healthy:  p.allows(u.host),
			InFlight: u.inFlight.Load(),
			Latency:  time.Duration(u.latency.value(now, tau)),
			Requests: u.requests.Load(),
			Failures: u.failures.Load(),
		}
		if until := u.restUntil.Load(); now < until {
			s.State, s.Until = "resting", p.epoch.Add(time.Duration(until))
		}
		if !s.Healthy {
			s.State = "unhealthy"
		}
		out[i] = s
	}
	return out
}
