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

// Defaults of a Pool.
const (
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
//		Transport:    &gateway.Transport{},
//		ErrorHandler: gateway.NewErrorHandler(nil),
//	}
//	err = p.Attach(proxy)
//
// With per-host circuit breakers (package breaker), the breakers go inside
// the pool's Transport, and the pool asks them which hosts may be used:
//
//	p.Health = hosts
//	proxy.Transport = hosts.Transport(&gateway.Transport{})
//	err = p.Attach(proxy)
//
// Every pick skips hosts that Health does not allow (a hard rule), and
// prefers hosts this request has not tried yet (see [gateway.Trail]) and
// hosts at their full share (see [Shares]: a host resting after failures,
// or warming up after a return, is passed over in proportion); among the
// hosts of the best preference the Policy chooses. Tried and passed-over
// hosts are used only when nothing better is left, so that a retry layer
// over a one-host pool can still retry, and neither resting nor slow
// start ever empties a pool.
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

	// Decay is the peak-EWMA's time constant: how fast a latency peak or a
	// failure is forgiven. Default 10 s (Finagle's and Linkerd's).
	Decay time.Duration

	// Logger receives one INFO line per change of the set of hosts (see
	// [Pool.SetTargets]) and a followed source's logs. Nil means
	// slog.Default().
	Logger *slog.Logger

	// OnChange, if set, is called after each change of the set of hosts,
	// one at a time, with what changed.
	OnChange func(Change)

	set     atomic.Pointer[targetSet] // nil: empty
	rr      atomic.Uint64
	watched sync.Once // the targets told to a Watcher
	epoch   time.Time
	clock   func() int64 // tests; nil: time since epoch

	// transport is the pool's Transport, whose idle connections a change
	// that removed hosts closes.
	transport atomic.Pointer[poolTransport]
	changed   atomic.Int64 // Unix ns of the last change of the set; 0 none
	changes   atomic.Int64

	setMu       sync.Mutex // serialises changes of set; guards the fields below
	contribs    []contribution
	unforgotten []string             // hosts to tell a Forgetter (again)
	forgottenAt map[string]time.Time // when each was first forgotten
	forgetTimer *time.Timer
	idleClosed  time.Time
	idleTimer   *time.Timer
	followed    []*follower
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

// Shares is an optional interface of a [Health]: the share of new
// requests a host that Allows should get, in [0, 1]. *breaker.Hosts
// implements it: 0 while a host rests after failures, a ramp while it
// warms up after a return (slow start), else 1. A pick passes a host over
// with probability 1−share — it is used then only if no host at its full
// share is left — so shares never empty a pool, and a host alone gets
// everything.
type Shares interface {
	Share(host string) float64
}

// RequestHealth is an optional interface of a [Health]: whether host may
// be sent this request now, which a pool then asks instead of Allows.
// *breaker.Hosts implements it: a half-open host keeps its few trial
// requests for idempotent methods a while, so a POST goes to a serving
// host instead.
type RequestHealth interface {
	AllowsRequest(host string, r *http.Request) bool
}

// Watcher is an optional interface of a [Health]: a pool tells it each of
// its targets before its first request, so that it can watch hosts no
// request has reached yet (*breaker.Hosts: an always-on health check).
type Watcher interface {
	Watch(target *url.URL)
}

// HostStater is an optional interface of a [Health]: a host's one
// [State], for [Pool.Status].
type HostStater interface {
	HostState(host string) State
}

// HostStatus is one host's state, as a Pool reports it.
type HostStatus struct {
	// Upstream is the host's [gateway.UpstreamName].
	Upstream string `json:"upstream"`
	// Source is where the host came from: [StaticSource] or the
	// discovery URL that resolved it (see [Target]); Weight is the
	// weight it gave (an SRV record's; not used by the balancer).
	Source string `json:"source"`
	Weight int    `json:"weight,omitempty"`
	// Joined is when the host joined the pool's set.
	Joined time.Time `json:"joined"`
	// State is the host's one state: Health's (see [HostStater]), or
	// without one serving or out, as Health allows it.
	State State `json:"state"`
	// Allowed reports whether Health allows new requests to the host now
	// ([Health.Allows]): true for a resting host too, which a pick passes
	// over while another host can take the request.
	Allowed bool `json:"allowed"`
	// InFlight is the number of requests now in flight to it.
	InFlight int64 `json:"in_flight"`
	// Latency is the balancer's latency estimate (peak EWMA of successful
	// requests, to the response header); 0 if unknown.
	Latency time.Duration `json:"latency_ns"`
	// Requests and Failures count what was sent to it.
	Requests int64 `json:"requests"`
	Failures int64 `json:"failures"`
	// Until is when a host that is not allowed may be again, as far as
	// Health knows (OpenFor): always ahead of the report's time; zero if
	// unknown.
	Until time.Time `json:"until,omitzero"`
}

// upstream is one target and what the pool knows about it.
type upstream struct {
	target *url.URL
	host   string
	source string    // Target.Source
	weight int       // Target.Weight
	joined time.Time // when it joined the set

	inFlight atomic.Int64
	requests atomic.Int64
	failures atomic.Int64
	latency  peakEWMA // of successful requests
	cost     peakEWMA // of all requests, failures penalised: the balancer's

	mu sync.Mutex // serialises observations
}

// NewPool returns a pool over targets, each an absolute http or https URL
// with a host and an optional path prefix and query (joined with the
// request's as [httputil.ProxyRequest.SetURL] does). Targets must have
// distinct hosts, since health is kept per host, and carry no user info
// or fragment. The URLs are copied. The set can change later: see
// [Pool.SetTargets] and [Pool.Follow].
func New(targets ...*url.URL) (*Pool, error) {
	if len(targets) == 0 {
		return nil, errors.New("pool: New: no targets")
	}
	ts := make([]Target, len(targets))
	for i, t := range targets {
		ts[i] = Target{URL: t}
	}
	now := time.Now()
	c := []contribution{{source: StaticSource, targets: ts}}
	s, err := buildSet(c, emptySet, now)
	if err != nil {
		return nil, err // a *targetError
	}
	p := &Pool{epoch: now, contribs: c}
	p.set.Store(s)
	return p, nil
}

// Empty returns a pool with no targets, for a set that a [Source]
// ([Pool.Follow]) or [Pool.SetTargets] fills. Until then every request
// fails with [gateway.ClassNoUpstream] (503) without dialing.
func Empty() *Pool {
	return &Pool{epoch: time.Now()}
}

// newUpstream returns the upstream of target t (copied), joining at now.
func newUpstream(t *url.URL, source string, weight int, now time.Time) *upstream {
	c := *t
	return &upstream{target: &c, host: gateway.UpstreamName(&c), source: source, weight: weight, joined: now}
}

// inherit takes over what old (the same host) measured, for a host whose
// target changed but not its name. Before u is published.
func (u *upstream) inherit(old *upstream) {
	u.joined = old.joined
	u.requests.Store(old.requests.Load())
	u.failures.Store(old.failures.Load())
	old.mu.Lock()
	u.latency.copyFrom(&old.latency)
	u.cost.copyFrom(&old.cost)
	old.mu.Unlock()
}

// targetError is an error of New about one of its targets. Its Target
// method gives the target's index, so that a caller can name the target
// in its own terms (package proxykit: Config.Upstreams[i]).
type targetError struct {
	index  int
	source string // the contribution it was given in (SetTargets, a Source)
	err    error
}

func (e *targetError) Error() string { return fmt.Sprintf("pool: New: target %d: %v", e.index, e.err) }
func (e *targetError) Unwrap() error { return e.err }
func (e *targetError) Target() int   { return e.index }

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
	p.watched.Do(p.watch)
	trail := gateway.TrailFrom(pr.In.Context())
	u := p.pick(pr.In, trail, p.now())
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
	t := &poolTransport{p: p, next: next}
	p.transport.Store(t)
	return t
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
	set := p.targets()
	u := set.byRaw[req.URL.Host] // as the target gives it: no name to build
	if u == nil {
		u = set.byHost[gateway.UpstreamName(req.URL)]
	}
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
		c := gateway.ClassifyError(err, "", true).Class
		switch {
		case errors.Is(req.Context().Err(), context.Canceled):
			u.requests.Add(1) // the client left: says nothing about the host
		case c.CountsAsFailure() || c == gateway.ClassStaleConn:
			// A dropped keep-alive connection is no evidence against the
			// host's health, but the balancer still prefers hosts that do
			// not drop them.
			p.observe(u, true, end-start, end)
		default:
			u.requests.Add(1)
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

// observe records one outcome of u at now: latency and the balancer's
// cost. For the cost a failure is a sample of failurePenalty times the
// largest of its own latency and every host's latency of successes: a
// failure never looks faster than the slowest success in the pool, so
// failing fast does not attract traffic; and however many failures come
// in a row the penalty stays bounded, so it wears off within about
// Decay·ln(failurePenalty) once the host stops failing.
func (p *Pool) observe(u *upstream, failed bool, rtt, now int64) {
	u.requests.Add(1)
	tau := p.decay()
	u.mu.Lock()
	defer u.mu.Unlock()
	if !failed {
		u.latency.observe(now, float64(rtt), tau)
		u.cost.observe(now, float64(rtt), tau)
		return
	}
	u.failures.Add(1)
	slowest := float64(rtt)
	for _, v := range p.targets().ups {
		slowest = max(slowest, v.latency.value(now, tau))
	}
	u.cost.observe(now, failurePenalty*slowest, tau)
}

// watch tells a Watcher Health the pool's targets.
func (p *Pool) watch() {
	if w, ok := p.Health.(Watcher); ok {
		for _, u := range p.targets().ups {
			w.Watch(u.target)
		}
	}
}

// allows reports whether Health allows host.
func (p *Pool) allows(host string) bool { return p.Health == nil || p.Health.Allows(host) }

// noUpstreamRetryAfter is the shortest time until an unhealthy host may be
// usable, per RetryAfter, or DefaultNoUpstreamRetry.
func (p *Pool) noUpstreamRetryAfter() time.Duration {
	best := time.Duration(0)
	if p.Health != nil {
		for _, u := range p.targets().ups {
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

// Status returns the state of every host, in target order, for a status
// view (status.View.Upstreams = pool.Status). State is Health's (see
// [HostStater]), or serving or out, as Health allows the host.
func (p *Pool) Status() []HostStatus {
	now := p.now()
	tau := p.decay()
	stater, _ := p.Health.(HostStater)
	ups := p.targets().ups
	out := make([]HostStatus, len(ups))
	for i, u := range ups {
		s := HostStatus{
			Upstream: u.host,
			Source:   u.source,
			Weight:   u.weight,
			Joined:   u.joined,
			State:    StateServing,
			Allowed:  p.allows(u.host),
			InFlight: u.inFlight.Load(),
			Latency:  time.Duration(u.latency.value(now, tau)),
			Requests: u.requests.Load(),
			Failures: u.failures.Load(),
		}
		if !s.Allowed {
			s.State = StateOut
			if d := p.Health.OpenFor(u.host); d > 0 {
				s.Until = time.Now().Add(d)
			}
		}
		if stater != nil {
			s.State = stater.HostState(u.host)
		}
		out[i] = s
	}
	return out
}
