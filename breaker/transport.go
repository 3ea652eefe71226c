package breaker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// Hosts is the transport seat: one circuit breaker per upstream host, so
// that a pool keeps serving through its healthy members. Hosts are keyed by
// their canonical name, [gateway.UpstreamName] of the outbound request's
// URL: host:port, the scheme's default port filled in ("svc" over http is
// "svc:80"), the name a pool asks [Hosts.Allows] and [Hosts.OpenFor] about.
// At most Settings.MaxKeys hosts get their own breaker; requests to any
// further host pass unguarded (see Settings.MaxKeys). It is safe for
// concurrent use.
//
// Wire it in user code (gateway does not import breaker):
//
//	hosts, err := breaker.PerHost(breaker.Settings{})
//	p.Health = hosts // a *pool.Pool
//	proxy.Transport = hosts.Transport(&gateway.Transport{})
//	err = p.Attach(proxy)
//
// Hosts is also the host-health model (see [HostHealth]): one state per
// host, which a pool reads through Allows (or AllowsRequest), OpenFor,
// Share and HostState. A host is taken out only by evidence about the
// host: connection-level failures, resets and timeouts count toward both
// rules of Settings (ConsecutiveFailures and the ratio of the host's whole
// traffic), while an upstream's own 502, 503 and 504 take it out only when
// failures are nearly all of its traffic (HostHealth.StatusFailureRatio,
// 90%), so that one failing route beside healthy ones cannot take the host
// out, while a host that fails everything still is. One client request
// counts once per host however many attempts it makes there (its
// [gateway.Trail] tells). A host out is sent no request until a probe
// proves it back, when it can be probed (see [HostHealth]). Call
// [Hosts.Close] to stop its probes.
type Hosts struct {
	set *set
}

// PerHost returns a Hosts with settings s, or an error if s is invalid or
// sets Key (hosts are the key).
func PerHost(s Settings) (*Hosts, error) {
	if s.Key != nil {
		return nil, errKeyPerHost
	}
	c, err := s.normalize()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var d net.Dialer
	p := &prober{ctx: ctx, cancel: cancel, dial: d.DialContext}
	return &Hosts{set: newSetWith(c, true, p)}, nil
}

// Close stops the probes and health checks and waits for those in flight
// to end. Hosts keeps guarding requests; a host that is out stays out
// until its open period ends.
func (h *Hosts) Close() {
	p := h.set.prober
	p.mu.Lock()
	p.closed.Store(true)
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}

// Share returns host's share of new requests, in [0, 1], for a pool's
// balancer: 1 normally; 0 while it rests after failures (use it only when
// no other host is left); between 0.1 and 1 while it warms up after a
// return (see HostHealth.SlowStart). A host that is not allowed, or that
// Hosts does not know, has share 1.
func (h *Hosts) Share(host string) float64 {
	e := h.set.lookup(host)
	if e == nil || e.host == nil || State(e.state.Load()) != StateClosed {
		return 1
	}
	return e.share(h.set.now())
}

// HostState returns host's state (see [HostHealth]): serving, resting,
// warming, out or trial; serving for a host Hosts does not know. It
// implements [pool.HostStater].
func (h *Hosts) HostState(host string) pool.State {
	e := h.set.lookup(host)
	if e == nil || e.host == nil {
		return pool.StateServing
	}
	st, _ := e.hostHealth(h.set.now())
	return st
}

var errKeyPerHost = errors.New("breaker: invalid settings: Key is for New; PerHost keys by host")

// Transport returns a RoundTripper that guards next with the breaker of
// each request's upstream, named by [gateway.UpstreamName] (the outbound
// URL and Host header are left as they are). next is typically a [gateway.Transport], whose
// errors are classified *gateway.Failure values; other errors are
// classified with [gateway.ClassifyError]. A nil next means
// http.DefaultTransport.
//
// While a host's breaker is open, RoundTrip returns at once, without
// touching next, a *gateway.Failure of class [gateway.ClassOpen]: status
// 503, Retry-After the time left open (1 s while half-open with every probe
// slot taken), Sent false. [gateway.NewErrorHandler] turns it into the
// response.
//
// Outcomes are counted from the response header: a response that breaks
// mid-body is not seen.
func (h *Hosts) Transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	h.set.prober.rt.Store(&roundTripper{next}) // the health check's
	return &transport{set: h.set, next: next}
}

type transport struct {
	set  *set
	next http.RoundTripper
	name atomic.Pointer[hostName] // the last name that cost an allocation
}

// hostName caches gateway.UpstreamName of a URL without a port, whose
// name is built: a proxy mostly sends to a few hosts.
type hostName struct{ scheme, host, name string }

// upstream returns gateway.UpstreamName(u) without allocating for the
// host named last.
func (t *transport) upstream(u *url.URL) string {
	if c := t.name.Load(); c != nil && c.host == u.Host && c.scheme == u.Scheme {
		return c.name
	}
	name := gateway.UpstreamName(u)
	if name != u.Host {
		t.name.Store(&hostName{scheme: u.Scheme, host: u.Host, name: name})
	}
	return name
}

// RoundTrip implements http.RoundTripper.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := t.upstream(req.URL)
	e := t.set.lookup(host)
	if e == nil {
		if e = t.set.admit(host); e.host != nil {
			e.setTarget(req.URL)
		}
	}
	e = t.set.pinned(e, host)
	done, f := e.allow(host)
	if f == nil && e.host != nil && State(e.state.Load()) != StateClosed {
		f = e.trial(req, done, host)
	}
	if f != nil {
		if req.Body != nil {
			_ = req.Body.Close() // RoundTrip must close the body, even on error
		}
		return nil, f
	}
	res, err := t.next.RoundTrip(req)
	if err != nil {
		f := gateway.ClassifyError(err, host, true)
		outcome := failureOutcome(f)
		if clientGone(req) {
			outcome = errExcluded // the client went away; whatever broke is a consequence
		}
		if outcome == errFailure && e.host != nil && !e.hostFailure(req, f.Class) {
			outcome = errExcluded // counted once for this request already
		}
		e.finish(done, outcome)
		return nil, err
	}
	outcome := statusOutcome(res.StatusCode, t.set.c.CountServerErrors)
	if e.host != nil {
		switch {
		case outcome == nil:
			e.hostSuccess()
		case State(e.state.Load()) == StateHalfOpen &&
			gateway.Class(e.host.cause.Load()) != gateway.ClassUpstreamStatus:
			// A trial request answered: the host is back from what took
			// it out. Whether its answers are nearly all failures is the
			// status rule's business, once closed.
			outcome = nil
		case !e.hostStatusFailure(req):
			outcome = errExcluded
		}
	}
	e.finish(done, outcome)
	return res, nil
}

// trial vets a request that a host not closed let through (a half-open
// trial): a request of a method that is not idempotent is refused while
// the host's trials are kept for idempotent ones (HostHealth.SafeFirst).
// A refused request's slot is given back.
func (e *entry) trial(req *http.Request, done func(error), host string) *gateway.Failure {
	if safeMethod(req.Method) || State(e.state.Load()) != StateHalfOpen || e.admitsUnsafe(e.set.now()) {
		return nil
	}
	done(errExcluded)
	e.notify()
	f := e.refuse(host, gobreaker.ErrTooManyRequests, e.set.now())
	f.RetryAfter = time.Second
	return f
}

// CloseIdleConnections closes next's idle connections, if it can.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Allows reports whether the breaker of host, a canonical name
// ([gateway.UpstreamName]: host:port), would let a request through now:
// true when closed, false while open, and while half-open true only if a
// probe slot is free. It takes no probe slot and creates no breaker: a
// host without a breaker of its own is allowed. With OpenFor it makes
// Hosts a pool's health source.
func (h *Hosts) Allows(host string) bool {
	if e := h.set.lookup(host); e != nil {
		return e.allows()
	}
	return true
}

// AllowsRequest is Allows for one request: a half-open host keeps its
// trial requests for idempotent methods a while (HostHealth.SafeFirst), so
// it does not allow a POST then while another host serves. A pool that
// finds it on its Health uses it instead of Allows.
func (h *Hosts) AllowsRequest(host string, r *http.Request) bool {
	e := h.set.lookup(host)
	if e == nil || State(e.state.Load()) == StateClosed {
		return true
	}
	if !e.allows() {
		return false
	}
	if e.host == nil || r == nil || safeMethod(r.Method) || State(e.state.Load()) != StateHalfOpen {
		return true
	}
	return e.admitsUnsafe(h.set.now())
}

// Watch tells Hosts about a host before any request to it: target's
// scheme and host (the path is ignored). A pool calls it for each of its
// targets, so that an always-on health check (HostHealth.Check.Always)
// watches them from the start, and checks use the right scheme. It creates
// the host's breaker, within Settings.MaxKeys.
func (h *Hosts) Watch(target *url.URL) {
	if target == nil || target.Host == "" {
		return
	}
	host := gateway.UpstreamName(target)
	e := h.set.lookup(host)
	if e == nil {
		e = h.set.admit(host)
	}
	if e.host != nil {
		e.setTarget(target)
	}
}

// OpenFor returns how long the breaker of host, a canonical name
// ([gateway.UpstreamName]: host:port), stays open, or 0 if it is not open
// or host has no breaker of its own. A pool uses it for the Retry-After of
// a no_upstream failure.
func (h *Hosts) OpenFor(host string) time.Duration {
	if e := h.set.lookup(host); e != nil {
		return e.openFor(h.set.now())
	}
	return 0
}

// States returns the state of every host's breaker, sorted by host; the
// overflow entry comes last while requests to hosts beyond
// Settings.MaxKeys pass unguarded (within the last Settings.Interval).
func (h *Hosts) States() []Status { return h.set.states() }
