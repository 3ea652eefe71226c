package breaker

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/proxykit/proxykit/gateway"
)

// Breaker is the handler seat: middleware that guards the handler it wraps
// (usually a ReverseProxy) with one circuit breaker, or one per
// [Settings.Key]. It is safe for concurrent use.
type Breaker struct {
	set     *set
	key     func(*http.Request) string
	onError func(http.ResponseWriter, *http.Request, error)
	pool    sync.Pool // of *observer
}

// New returns a Breaker with settings s, or an error if s is invalid.
func New(s Settings) (*Breaker, error) {
	c, err := s.normalize()
	if err != nil {
		return nil, err
	}
	return &Breaker{
		set:     newSet(c, s.Key != nil),
		key:     s.Key,
		onError: gateway.NewErrorHandler(c.Logger),
	}, nil
}

// Wrap returns next guarded by b. While the request's breaker is open,
// next is not called: the client gets the [gateway.ClassOpen] failure (503,
// Retry-After), handed first to any enclosing [gateway.FailureRecorder]
// (a retry or errorpage layer) as [gateway.NewErrorHandler] does.
//
// The outcome is observed through a [gateway.Interceptor] that passes
// every response: a [gateway.Failure] recorded below (by the proxy's
// ErrorHandler) decides by its class; otherwise the status does (502, 503,
// 504 fail; 500 and 501 if Settings.CountServerErrors). A handler that
// panics counts as a failure, unless the client went away (excluded), and
// the panic goes on; a ReverseProxy panics with http.ErrAbortHandler when
// an upstream's body breaks midway, so that failure is counted too.
//
// A Failure recorded below travels on outward. When no enclosing layer
// takes it, b is the outermost layer to see it and does what that layer
// must ([gateway.HandOff]): it logs the Failure once ([gateway.LogFailure],
// to Settings.Logger), and when nothing was written — the client went
// away, and the ErrorHandler writes nothing then — it aborts the response
// instead of letting net/http finish it with an empty 200. A handler that
// recorded any other Failure without writing gets it written
// ([gateway.WriteFailure]).
func (b *Breaker) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := ""
		if b.key != nil {
			key = b.key(r)
		}
		e := b.set.acquire(key)
		done, f := e.allow("")
		if f != nil {
			b.onError(w, r, f)
			return
		}
		o, _ := b.pool.Get().(*observer)
		if o == nil {
			o = new(observer)
		}
		o.b, o.e, o.done, o.status, o.reported = b, e, done, 0, false
		o.i.Reset(w, o)
		finished := false
		defer func() {
			if !finished && !o.reported { // next panicked before a status
				outcome := errFailure
				if clientGone(r) {
					outcome = errExcluded
				}
				o.report(outcome)
			}
		}()
		next.ServeHTTP(&o.i, r)
		finished = true
		if !o.reported {
			o.report(b.outcome(o, r))
		}
		f, committed, forwarded := o.i.Failure(), o.i.Committed(), o.i.Forwarded()
		*o = observer{} // drop references to this request
		b.pool.Put(o)
		if f != nil && !forwarded {
			b.handOut(w, r, f, committed)
		}
	})
}

// handOut is the outermost layer's duty for f, a Failure recorded below
// that was not forwarded when its response passed (see gateway.HandOff).
func (b *Breaker) handOut(w http.ResponseWriter, r *http.Request, f *gateway.Failure, committed bool) {
	gateway.HandOff(w, r, f, committed, nil, func() {
		// No duration, as from gateway.NewErrorHandler's: a clock read on
		// every request would cost more than the rest of this duty.
		gateway.LogFailure(b.set.c.Logger, r, f, 0)
	})
}

// observer is the per-request state of Wrap: the Interceptor, and the
// Decider that watches it. The outcome is reported as soon as it is known
// (the status is decided, or the connection is upgraded), not when the
// handler returns, so that a long-lived response (a stream, a WebSocket)
// does not hold one of the few half-open probe slots for its whole life.
type observer struct {
	i        gateway.Interceptor
	b        *Breaker
	e        *entry
	done     func(error)
	status   int
	reported bool
}

// Decide implements gateway.Decider: it reports the outcome and passes.
func (o *observer) Decide(status int, _ http.Header, f *gateway.Failure) gateway.Decision {
	o.status = status
	if f != nil {
		o.report(failureOutcome(f))
	} else {
		o.report(statusOutcome(status, o.b.set.c.CountServerErrors))
	}
	return gateway.Pass
}

// Committed implements gateway.CommitObserver: an upgrade succeeded.
func (o *observer) Committed() { o.report(nil) }

func (o *observer) report(outcome error) {
	if o.reported {
		return
	}
	o.reported = true
	o.e.finish(o.done, outcome)
}

func (b *Breaker) outcome(o *observer, r *http.Request) error {
	if f := o.i.Failure(); f != nil {
		return failureOutcome(f)
	}
	if o.status == 0 && clientGone(r) {
		return errExcluded // nothing written, client gone
	}
	return statusOutcome(o.status, b.set.c.CountServerErrors)
}

// clientGone reports a request whose client went away. A deadline (the
// inbound one, or a retry layer's per-try timeout) is not that: an upstream
// too slow for it has failed.
func clientGone(r *http.Request) bool {
	return errors.Is(r.Context().Err(), context.Canceled)
}

// failureOutcome maps a classified failure to a breaker outcome.
func failureOutcome(f *gateway.Failure) error {
	if f.Class.CountsAsFailure() {
		return errFailure
	}
	return errExcluded // canceled, open, no_upstream: not this upstream's fault
}

// statusOutcome maps a response status to a breaker outcome.
func statusOutcome(status int, serverErrors bool) error {
	if gateway.IsFailureStatus(status) ||
		(serverErrors && (status == http.StatusInternalServerError || status == http.StatusNotImplemented)) {
		return errFailure
	}
	return nil
}

// States returns the state of every breaker, sorted by key; with a Key
// function the overflow entry comes last while requests with keys beyond
// Settings.MaxKeys pass unguarded (within the last Settings.Interval).
func (b *Breaker) States() []Status { return b.set.states() }
