package breaker

import (
	"errors"
	"net/http"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Hosts is the transport seat: one circuit breaker per upstream host, so
// that a pool keeps serving through its healthy members. Hosts are keyed by
// the outbound request's URL.Host, as written ("10.0.0.5:8080"), which is
// also what a [gateway.Pool] passes to its Healthy predicate. At most
// Settings.MaxKeys hosts get their own breaker; any further share the
// overflow breaker. It is safe for concurrent use.
//
// Wire it in user code (gateway does not import breaker):
//
//	hosts, err := breaker.PerHost(breaker.Settings{})
//	pool.Healthy, pool.RetryAfter = hosts.Allows, hosts.OpenFor
//	proxy.Transport = pool.Transport(hosts.Transport(gateway.NewTransport()))
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
	return &Hosts{set: newSet(c, true)}, nil
}

var errKeyPerHost = errors.New("breaker: invalid settings: Key is for New; PerHost keys by host")

// Transport returns a RoundTripper that guards next with the breaker of
// each request's host. next is typically a [gateway.Transport], whose
// errors are classified *gateway.Failure values; other errors are
// classified with [gateway.ClassifyError]. A nil next means
// http.DefaultTransport.
//
// While a host's breaker is open, RoundTrip returns at once, without
// touching next, a *gateway.Failure of class [gateway.ClassOpen]: status
// 503, Retry-After the time left open (1 s while half-open with every probe
// slot taken), Sent false. [gateway.ErrorHandler] turns it into the
// response.
//
// Outcomes are counted from the response header: a response that breaks
// mid-body is not seen.
func (h *Hosts) Transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &transport{set: h.set, next: next}
}

type transport struct {
	set  *set
	next http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	e := t.set.get(host)
	done, f := e.allow(host)
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
		e.finish(done, outcome)
		return nil, err
	}
	e.finish(done, statusOutcome(res.StatusCode, t.set.c.CountServerErrors))
	return res, nil
}

// CloseIdleConnections closes next's idle connections, if it can.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Allows reports whether host's breaker would let a request through now:
// true when closed, false while open, and while half-open true only if a
// probe slot is free. It takes no probe slot and creates no breaker (an
// unknown host is allowed), so it is the health predicate for a pool:
// pool.Healthy = hosts.Allows.
func (h *Hosts) Allows(host string) bool {
	e := h.set.lookup(host)
	if e == nil {
		if e = h.set.overflowFor(host); e == nil {
			return true
		}
	}
	return e.allows()
}

// OpenFor returns how long host's breaker stays open, or 0 if it is not
// open. It is the pool's RetryAfter hint: pool.RetryAfter = hosts.OpenFor.
func (h *Hosts) OpenFor(host string) time.Duration {
	e := h.set.lookup(host)
	if e == nil {
		if e = h.set.overflowFor(host); e == nil {
			return 0
		}
	}
	return e.openFor(time.Now())
}

// States returns the state of every host's breaker, sorted by host; the
// overflow breaker comes last.
func (h *Hosts) States() []Status { return h.set.states() }

// BreakerStatus returns States in the shape of a [gateway.StatusView]:
// StatusView.Breakers = hosts.BreakerStatus.
func (h *Hosts) BreakerStatus() []gateway.BreakerStatus { return h.set.gatewayStatus() }
