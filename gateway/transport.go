package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
)

// Transport is an http.RoundTripper that measures how far each request got
// and turns every error into a classified *Failure.
//
// It attaches an httptrace.ClientTrace to each request (composed with any
// trace already on the context, such as ReverseProxy's own) and records
// whether a connection was obtained, whether request headers were written
// (Failure.Sent) and whether a response byte arrived. Responses pass through
// unchanged, whatever their status; classifying an upstream's own 502/503/504
// is left to the layers that see the response (see [ClassifyResponse]).
//
// A Transport must not be copied after first use.
type Transport struct {
	// Base performs the requests. Nil means http.DefaultTransport; prefer
	// [NewHTTPTransport], whose connection pool is sized for a proxy.
	Base http.RoundTripper

	trackers sync.Pool // of *tracker
}

// NewTransport returns a Transport over a new [NewHTTPTransport].
func NewTransport() *Transport {
	return &Transport{Base: NewHTTPTransport()}
}

// RoundTrip implements http.RoundTripper. A non-nil error is always a
// *Failure wrapping the Base's error.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tr, _ := t.trackers.Get().(*tracker)
	if tr == nil {
		tr = newTracker()
	}
	tr.reset()
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	res, err := base.RoundTrip(req.WithContext(tr.attach(req.Context())))
	p := tr.progress()
	if err != nil {
		// Not recycled: RoundTrip may return (write error, header timeout,
		// HTTP/2 cancellation) while the read loop can still fire
		// GotFirstResponseByte on this tracker.
		var inner *Failure
		if errors.As(err, &inner) {
			return nil, inner // the Base classified it already (a breaker, a pool)
		}
		f := newFailure(err, hostPort(req.URL.Scheme, req.URL.Host), p)
		if cerr := req.Context().Err(); errors.Is(cerr, context.Canceled) {
			f.Class, f.Status = ClassCanceled, ClassCanceled.Status()
		}
		return nil, f
	}
	if p.sent {
		// A response was read and the headers were written: every hook we
		// set has fired and none fires again, so the tracker can serve
		// another request. (A server may answer before reading; then the
		// write loop could still call WroteHeaders: let GC have it.)
		t.trackers.Put(tr)
	}
	res.Request = req // the caller's request, not our traced copy
	return res, nil
}

// CloseIdleConnections closes idle connections of the Base, if it can.
func (t *Transport) CloseIdleConnections() {
	type closeIdler interface{ CloseIdleConnections() }
	if c, ok := t.Base.(closeIdler); ok {
		c.CloseIdleConnections()
	}
}

// tracker records one request's progress. It sets no TLS or dial hooks on
// purpose: the transport may run those from a background dial after
// RoundTrip returned, when the tracker already serves another request.
// Its hook funcs are bound once, at
// creation, so that reusing a tracker costs no closure allocations.
type tracker struct {
	connected, sent, responded atomic.Bool

	gotConn      func(httptrace.GotConnInfo)
	wroteHeaders func()
	gotFirstByte func()
}

func newTracker() *tracker {
	tr := new(tracker)
	tr.gotConn = func(httptrace.GotConnInfo) { tr.connected.Store(true) }
	tr.wroteHeaders = func() { tr.sent.Store(true) }
	tr.gotFirstByte = func() { tr.responded.Store(true) }
	return tr
}

// attach returns ctx with tr's hooks added to its ClientTrace.
//
// httptrace.WithClientTrace composes a new trace with the one already on
// the context (ReverseProxy always sets one) by reflecting over every hook,
// which cost more than everything else here together. So when a trace is
// present, attach copies it, adds tr's hooks to the copy (chaining any hook
// both set), and returns a context that answers the lookup of the old trace
// with the copy: one allocation, no reflection.
func (tr *tracker) attach(ctx context.Context) context.Context {
	old := httptrace.ContextClientTrace(ctx)
	if old == nil {
		trace := &httptrace.ClientTrace{}
		tr.install(trace)
		return httptrace.WithClientTrace(ctx, trace)
	}
	c := &tracedContext{Context: ctx, old: old, trace: *old}
	tr.install(&c.trace)
	return c
}

func (tr *tracker) install(t *httptrace.ClientTrace) {
	if prev := t.GotConn; prev != nil {
		t.GotConn = func(i httptrace.GotConnInfo) { tr.gotConn(i); prev(i) }
	} else {
		t.GotConn = tr.gotConn
	}
	if prev := t.WroteHeaders; prev != nil {
		t.WroteHeaders = func() { tr.wroteHeaders(); prev() }
	} else {
		t.WroteHeaders = tr.wroteHeaders
	}
	if prev := t.GotFirstResponseByte; prev != nil {
		t.GotFirstResponseByte = func() { tr.gotFirstByte(); prev() }
	} else {
		t.GotFirstResponseByte = tr.gotFirstByte
	}
}

// tracedContext substitutes trace for the ClientTrace old that its parent
// carries. Only that exact trace is substituted; every other value, and
// cancellation, come from the parent.
type tracedContext struct {
	context.Context
	old   *httptrace.ClientTrace
	trace httptrace.ClientTrace
}

func (c *tracedContext) Value(key any) any {
	v := c.Context.Value(key)
	if t, ok := v.(*httptrace.ClientTrace); ok && t == c.old {
		return &c.trace
	}
	return v
}

func (tr *tracker) reset() {
	tr.connected.Store(false)
	tr.sent.Store(false)
	tr.responded.Store(false)
}

func (tr *tracker) progress() progress {
	return progress{
		known:     true,
		connected: tr.connected.Load(),
		sent:      tr.sent.Load(),
		responded: tr.responded.Load(),
	}
}
