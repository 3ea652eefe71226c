package admission

import (
	"net/http"
	"net/url"
	"time"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// Health returns a pool's health source that adds the Limiter's view of
// each host to inner's (typically a *breaker.Hosts; nil allows every
// host):
//
//   - a draining host is not allowed (the pool sends it nothing new);
//   - a host at its limit has share 0 (see [pool.Shares]): the pool sends
//     the request to another host with headroom, and to this one only
//     when no other host is left, where the request waits in the queue or
//     is shed;
//   - a host at its limit does not allow a request that tried it already
//     (see [pool.RequestHealth] and [gateway.Trail]): a retry of a shed
//     request goes to another host, never back into the same host's
//     queue (with no other host, the pool answers no_upstream);
//   - its state (see [pool.HostStater]) is draining, then drained once
//     nothing is left in flight, or else inner's (a host at its limit is
//     still in service: its limit is a detail, see [Limiter.Status]).
//
// Everything else — OpenFor, and the optional [pool.Shares],
// [pool.RequestHealth], [pool.Watcher] and [pool.HostStater] of inner —
// is passed through. Every host the pool watches is told to the Limiter
// too (see [Limiter.Watch]).
func (l *Limiter) Health(inner pool.Health) pool.Health {
	return &health{l: l, inner: inner}
}

type health struct {
	l     *Limiter
	inner pool.Health
}

var (
	_ pool.Shares        = (*health)(nil)
	_ pool.RequestHealth = (*health)(nil)
	_ pool.Watcher       = (*health)(nil)
	_ pool.HostStater    = (*health)(nil)
)

func (h *health) draining(host string) bool {
	e := h.l.lookup(host)
	return e != nil && e.draining.Load()
}

// Allows implements pool.Health.
func (h *health) Allows(host string) bool {
	return !h.draining(host) && (h.inner == nil || h.inner.Allows(host))
}

// OpenFor implements pool.Health.
func (h *health) OpenFor(host string) time.Duration {
	if h.inner == nil {
		return 0
	}
	return h.inner.OpenFor(host)
}

// AllowsRequest implements pool.RequestHealth.
func (h *health) AllowsRequest(host string, r *http.Request) bool {
	if e := h.l.lookup(host); e != nil {
		if e.draining.Load() || (r != nil && e.atLimit() && gateway.TrailFrom(r.Context()).Tried(host)) {
			return false
		}
	}
	if rh, ok := h.inner.(pool.RequestHealth); ok {
		return rh.AllowsRequest(host, r)
	}
	return h.inner == nil || h.inner.Allows(host)
}

// Share implements pool.Shares.
func (h *health) Share(host string) float64 {
	if e := h.l.lookup(host); e != nil && e.atLimit() {
		return 0
	}
	if s, ok := h.inner.(pool.Shares); ok {
		return s.Share(host)
	}
	return 1
}

// Watch implements pool.Watcher.
func (h *health) Watch(target *url.URL) {
	h.l.Watch(target)
	if w, ok := h.inner.(pool.Watcher); ok {
		w.Watch(target)
	}
}

// HostState implements pool.HostStater.
func (h *health) HostState(host string) pool.State {
	if e := h.l.lookup(host); e != nil {
		if st := e.state(); st != pool.StateServing {
			return st
		}
	}
	if s, ok := h.inner.(pool.HostStater); ok {
		return s.HostState(host)
	}
	if h.Allows(host) {
		return pool.StateServing
	}
	return pool.StateOut
}
