package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Transport is an http.RoundTripper that measures how far each request got
// and turns every error into a classified *Failure.
//
// It attaches an httptrace.ClientTrace to each request (composed with any
// trace already on the context, such as ReverseProxy's own) and records
// whether a connection was obtained, whether request headers were written
// (Failure.Sent) and whether a response byte arrived. Responses pass through
// unchanged, whatever their status; classifying an upstream's own 502/503/504
// is left to the layers that see the response (see [ClassifyStatus]). The
// upstream each request goes out to is recorded in the request's [Trail],
// when its context carries one, so those layers can name it.
//
// An error reading the request's body — for a proxy, the client's body: a
// malformed chunked encoding, an upload that stalled past its read deadline
// (see [ClientBodyTimeout]), a body over an http.MaxBytesReader limit — is
// the client's fault, whatever the transport made of it: a Failure of class
// [ClassClientBody] with status 400 (408 when the read timed out, 413 over a
// size limit), or [ClassCanceled] when the client went away. So is a
// request whose context deadline (a plain one, as context.WithTimeout
// sets: its cause is context.DeadlineExceeded) passed while the transport
// was still waiting on its body (an upload that keeps moving, slower than
// the deadline allows): [ClassClientBody], 408. It never counts against
// the upstream.
//
// A request whose deadline passed while it waited for a free connection
// (the Base's MaxConnsPerHost reached), with no dial started for it, is a
// limit of the gateway's own: [ClassOverloaded], 503, never the host's
// [ClassConnectTimeout]. Telling the two apart needs a Base that reports
// its dials, as [NewHTTPTransport]'s does; with any other, such a wait is
// a connect timeout.
//
// # Resends by net/http
//
// net/http's Transport sends a request again by itself, on another
// connection, when it failed on a reused keep-alive connection and looks
// replayable: no body (ReverseProxy drops an empty one) and GET, HEAD,
// OPTIONS or TRACE, or any method with an Idempotency-Key or
// X-Idempotency-Key header. That resend cannot be switched off, and it
// happens behind any retry policy: a body-less POST with an Idempotency-Key
// that the upstream read before closing the connection is applied twice,
// and a GET may go out once per idle connection.
//
// When Base is an *http.Transport (such as [NewHTTPTransport]'s), Transport
// stops those resends: when net/http asks for a connection a second time
// within one RoundTrip after an HTTP/1 connection, it cancels the request
// and makes any connection it is handed refuse the write (a write deadline
// in the past, so no byte of the resend reaches the wire). RoundTrip then
// returns a Failure of class [ClassStaleConn], whose Sent says whether the
// first pass wrote the request headers; a retry layer decides whether to
// send it again, within its attempt cap and budget. HTTP/2 resends are let
// through, and counted in [Transport.Resends]: net/http's HTTP/2 transport
// makes them when a connection turned out unusable before the request went
// out, when the server refused the stream unprocessed (REFUSED_STREAM, or
// beyond a GOAWAY's last stream: RFC 9113 §8.7 guarantees it was not
// processed), or, rarely, when the server reset it with PROTOCOL_ERROR.
//
// With any other Base (a RoundTripper wrapping an *http.Transport, or one
// of a different kind), resends cannot be prevented; each one (a connection
// obtained again within one RoundTrip) is counted in [Transport.Resends]
// and recorded in the request's [Trail], so logs count it as an attempt.
// Such a Base can apply a request twice behind the retry policy's back.
//
// A Transport must not be copied after first use.
type Transport struct {
	// Base performs the requests. Nil means a transport of the Transport's
	// own from [NewHTTPTransport], made on first use: sized for a proxy,
	// and one whose resends Transport can stop. Set Base to adjust it
	// (Base: t where t := gateway.NewHTTPTransport(), then t's fields).
	Base http.RoundTripper

	trackers sync.Pool // of *tracker
	resends  atomic.Int64
	// dials is set once the Base was seen telling this Transport that it
	// dials (see noteDial): from then on, a request that got no
	// connection and saw no dial of its own waited for a connection slot.
	dials   atomic.Bool
	ownOnce sync.Once
	own     *http.Transport              // the Base when Base is nil
	name    atomic.Pointer[upstreamName] // the last name computed with an allocation
}

// upstreamName caches UpstreamName for a URL without a port, whose name
// costs an allocation: a Transport usually sends to one upstream.
type upstreamName struct{ scheme, host, name string }

// upstream returns UpstreamName(u), without allocating for the upstream
// named last.
func (t *Transport) upstream(u *url.URL) string {
	if u == nil {
		return ""
	}
	if c := t.name.Load(); c != nil && c.host == u.Host && c.scheme == u.Scheme {
		return c.name
	}
	name := UpstreamName(u)
	if name != u.Host { // built: keep it
		t.name.Store(&upstreamName{scheme: u.Scheme, host: u.Host, name: name})
	}
	return name
}

// errStaleConn is the cause of a ClassStaleConn Failure: net/http's own
// error is gone once its resend was stopped.
var errStaleConn = errors.New("the upstream closed a reused keep-alive connection without answering; the transport's automatic resend was stopped")

// errBodyArriving is the cause of a ClassClientBody Failure whose
// request's deadline passed while its body was still arriving.
var errBodyArriving = errors.New("the request's deadline passed while its body was still arriving from the client")

// connSlotRetryAfter is the Retry-After of a request that found no free
// connection: a connection is freed as soon as a response in flight ends.
const connSlotRetryAfter = time.Second

// errConnSlot is the cause of a ClassOverloaded Failure of a request that
// waited for a connection slot until its deadline.
var errConnSlot = errors.New("waited for a free connection to the upstream (the transport's MaxConnsPerHost) until the request's deadline; no connection was dialed for it")

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	t.ownOnce.Do(func() { t.own = NewHTTPTransport() })
	return t.own
}

// RoundTrip implements http.RoundTripper. A non-nil error is always a
// *Failure wrapping the Base's error.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tr, _ := t.trackers.Get().(*tracker)
	if tr == nil {
		tr = newTracker()
	}
	base := t.base()
	ctx := req.Context()
	tr.reset(t, TrailFrom(ctx))
	if tr.trail != nil {
		tr.name = t.upstream(req.URL)
		tr.trail.sent(tr.name)
	}
	out := req.WithContext(tr.attach(ctx))
	if req.Body != nil && req.Body != http.NoBody {
		tr.body.rc = req.Body
		out.Body = &tr.body
	}
	if h, ok := base.(*http.Transport); ok {
		tr.stopper, tr.out = h, out
	}
	res, err := base.RoundTrip(out)
	if err != nil {
		// Not recycled: RoundTrip may return (write error, header timeout,
		// HTTP/2 cancellation) while the read loop can still fire
		// GotFirstResponseByte on this tracker, or the write loop read the
		// body.
		return nil, tr.failure(req, err)
	}
	if tr.sent.Load() && (tr.body.rc == nil || tr.body.closed.Load()) {
		// A response was read, the headers were written and the body (if
		// any) closed: every hook we set has fired and none fires again,
		// nothing reads the body any more, so the tracker can serve
		// another request. (A server may answer before reading; then the
		// write loop could still call WroteHeaders or read the body: let
		// GC have it.)
		tr.out, tr.stopper, tr.trail, tr.conn, tr.body.rc = nil, nil, nil, nil, nil
		t.trackers.Put(tr)
	}
	res.Request = req // the caller's request, not our traced copy
	return res, nil
}

// Resends returns how many times the Base sent a request again by itself
// (a connection obtained again within one RoundTrip), since t was created:
// requests that reached the upstream more often than any retry policy
// decided. With an *http.Transport as Base, HTTP/1 resends are prevented
// instead, and only HTTP/2's (see [Transport]) are counted.
func (t *Transport) Resends() int64 { return t.resends.Load() }

// CloseIdleConnections closes the idle connections of the Base (of
// its own transport when Base is nil), if it can.
func (t *Transport) CloseIdleConnections() {
	type closeIdler interface{ CloseIdleConnections() }
	if c, ok := t.base().(closeIdler); ok {
		c.CloseIdleConnections()
	}
}

// failure classifies err, the Base's error for req.
func (tr *tracker) failure(req *http.Request, err error) *Failure {
	name := tr.name
	if name == "" {
		name = tr.t.upstream(req.URL)
	}
	ctxErr := req.Context().Err()
	canceled := errors.Is(ctxErr, context.Canceled)
	if berr := tr.body.error(); berr != nil {
		// The client's body broke first: the transport's error is a
		// consequence (net/http may report a canceled context, since a
		// failed read on the client's connection cancels it).
		return clientBodyFailure(berr, name, tr.sent.Load(), canceled)
	}
	if errors.Is(ctxErr, context.DeadlineExceeded) && context.Cause(req.Context()) == context.DeadlineExceeded &&
		tr.body.arriving(req.Context()) {
		// The request's deadline passed while the transport waited on the
		// client's body: the client's pace, not the upstream's. Only a
		// plain deadline (context.WithTimeout's cause): a timer with a
		// cause of its own, such as retry's per-try timeout, measures the
		// upstream already (it pauses while the body arrives).
		return clientBodyFailure(fmt.Errorf("%w: %w", errBodyArriving, ctxErr), name, tr.sent.Load(), false)
	}
	var f *Failure
	switch {
	case errors.As(err, &f):
		return f // the Base classified it already (a breaker, a pool)
	case tr.stopped:
		f = &Failure{Class: ClassStaleConn, Status: ClassStaleConn.Status(), Upstream: name,
			Sent: tr.staleSent, Err: errStaleConn}
	case tr.gets > 0 && !tr.connected.Load() && tr.mark != nil && !tr.mark.dialed.Load() && tr.t.dials.Load() &&
		errors.Is(ctxErr, context.DeadlineExceeded):
		// No connection, and none was dialed for this request: it waited
		// for a connection slot (the Base's MaxConnsPerHost) until its
		// deadline. A limit of the gateway's own, not the host's
		// connect timeout.
		f = &Failure{Class: ClassOverloaded, Status: ClassOverloaded.Status(), Upstream: name,
			RetryAfter: connSlotRetryAfter, Err: fmt.Errorf("%w: %w", errConnSlot, err)}
	default:
		f = newFailure(err, name, tr.progress())
	}
	if canceled {
		f.Class, f.Status = ClassCanceled, ClassCanceled.Status()
	}
	return f
}

// clientBodyFailure is the Failure for err, an error reading the request
// body: the client's.
func clientBodyFailure(err error, upstream string, sent, canceled bool) *Failure {
	f := &Failure{Class: ClassClientBody, Status: http.StatusBadRequest, Upstream: upstream, Sent: sent,
		Err: fmt.Errorf("reading the client's request body: %w", err)}
	var tooBig *http.MaxBytesError
	switch {
	case isTimeout(err):
		f.Status = http.StatusRequestTimeout
	case canceled:
		// The client went away mid-body (its connection closed or reset).
		f.Class, f.Status = ClassCanceled, ClassCanceled.Status()
	case errors.As(err, &tooBig):
		f.Status = http.StatusRequestEntityTooLarge
	}
	return f
}

// tracker records one request's progress. It sets no TLS or dial hooks on
// purpose: the transport may run those from a background dial after
// RoundTrip returned, when the tracker already serves another request.
// Its hook funcs are bound once, at creation, so that reusing a tracker
// costs no closure allocations.
type tracker struct {
	// Set by hooks that may run on the transport's goroutines.
	connected, sent, responded atomic.Bool
	// mark learns whether the Base started a dial for this request
	// (noteDial). It lives in the request's context, not here: a dial
	// may reach it after the tracker serves another request.
	mark *dialMark

	// Owned by the RoundTrip goroutine: net/http calls GetConn and GotConn
	// synchronously from its resend loop (HTTP/2's too).
	t       *Transport
	trail   *Trail
	name    string          // the upstream's name, when needed
	stopper *http.Transport // the Base, when it is one: resends can be stopped
	out     *http.Request   // the request given to stopper
	gets    int             // GetConn calls in this RoundTrip
	conns   int             // GotConn calls in this RoundTrip
	conn    net.Conn        // the connection of the last GotConn
	stopped bool            // a resend was stopped: a stale connection
	// staleSent is whether the headers were written before the resend
	// was stopped: the pass that failed on the stale connection.
	staleSent bool

	body trackedBody

	getConn      func(string)
	gotConn      func(httptrace.GotConnInfo)
	wroteHeaders func()
	gotFirstByte func()
}

func newTracker() *tracker {
	tr := new(tracker)
	tr.getConn = tr.onGetConn
	tr.gotConn = tr.onGotConn
	tr.wroteHeaders = func() { tr.sent.Store(true) }
	tr.gotFirstByte = func() { tr.responded.Store(true) }
	return tr
}

// onGetConn runs each time the transport looks for a connection. A second
// time in one RoundTrip after an HTTP/1 connection was used is net/http
// about to send the request again on its own: stop it, when Base is an
// *http.Transport.
func (tr *tracker) onGetConn(string) {
	tr.gets++
	if tr.gets == 1 || tr.conns == 0 || tr.stopped || tr.stopper == nil || isHTTP2(tr.conn) {
		// The first pass; or no connection was used yet (HTTP/2's pool had
		// none cached: nothing was sent); or HTTP/2 retrying a stream the
		// server refused unprocessed; or nothing can stop it (GotConn
		// counts it).
		return
	}
	tr.stopped = true
	tr.staleSent = tr.sent.Load()
	// Cancel the transport's request: its resend loop checks the
	// cancellation before each pass and while waiting for a connection.
	// CancelRequest is deprecated in favour of contexts, but the context
	// is ours only by allocating a cancelable one per request; net/http
	// maps CancelRequest to its own per-request context already. Should it
	// ever become a no-op, the write refusal in onGotConn still keeps the
	// resend off the wire (net/http then gives up after a fresh connection
	// refuses too).
	//lint:ignore SA1019 the one cancellation that costs nothing per request; see above
	tr.stopper.CancelRequest(tr.out)
}

// onGotConn runs each time the transport hands a connection to the request.
func (tr *tracker) onGotConn(info httptrace.GotConnInfo) {
	tr.connected.Store(true)
	tr.conns++
	if tr.conns > 1 {
		if tr.stopped {
			// getConn may hand over an idle connection despite the
			// cancellation, and the write would race it: make the write
			// fail before any byte leaves. The connection is closed after
			// the failed write. Never on an HTTP/2 connection, which other
			// requests share.
			if info.Conn != nil && !isHTTP2(info.Conn) {
				_ = info.Conn.SetWriteDeadline(time.Unix(1, 0))
			}
			return
		}
		// A resend that could not be stopped: it reaches the upstream.
		tr.t.resends.Add(1)
		if tr.trail != nil {
			tr.trail.resent(tr.name)
		}
	}
	tr.conn = info.Conn
}

// isHTTP2 reports whether c carries HTTP/2: a TLS connection that
// negotiated h2, or one whose handshake never ran (net/http's wrapper for
// unencrypted HTTP/2).
func isHTTP2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return false
	}
	cs := tc.ConnectionState()
	return !cs.HandshakeComplete || cs.NegotiatedProtocol == "h2"
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
		tr.mark = &dialMark{t: tr.t}
		return context.WithValue(httptrace.WithClientTrace(ctx, trace), dialKey{}, tr.mark)
	}
	c := &tracedContext{Context: ctx, old: old, trace: *old, mark: dialMark{t: tr.t}}
	tr.install(&c.trace)
	tr.mark = &c.mark
	return c
}

// dialMark records that the Base dialed for one request. It belongs to
// the request's context, so a dial that starts late (net/http may start
// one for a request that got another connection meanwhile) marks only that
// request, whenever it runs.
type dialMark struct {
	t      *Transport
	dialed atomic.Bool
}

// dialKey is the context key under which a request's dialMark answers,
// for noteDial.
type dialKey struct{}

// noteDial marks the request whose context is ctx (a dial's context keeps
// the request's values) as having had a connection dialed for it. The
// transport from [NewHTTPTransport] calls it from its DialContext: a
// request that got no connection and saw no dial waited for a connection
// slot, which is the gateway's limit, not the host's.
func noteDial(ctx context.Context) {
	if m, ok := ctx.Value(dialKey{}).(*dialMark); ok {
		m.dialed.Store(true)
		if !m.t.dials.Load() {
			m.t.dials.Store(true)
		}
	}
}

func (tr *tracker) install(t *httptrace.ClientTrace) {
	if prev := t.GetConn; prev != nil {
		t.GetConn = func(hp string) { tr.getConn(hp); prev(hp) }
	} else {
		t.GetConn = tr.getConn
	}
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
	mark  dialMark // answers dialKey
}

func (c *tracedContext) Value(key any) any {
	if _, ok := key.(dialKey); ok {
		return &c.mark
	}
	v := c.Context.Value(key)
	if t, ok := v.(*httptrace.ClientTrace); ok && t == c.old {
		return &c.trace
	}
	return v
}

func (tr *tracker) reset(t *Transport, trail *Trail) {
	tr.connected.Store(false)
	tr.sent.Store(false)
	tr.responded.Store(false)
	tr.mark = nil
	tr.t, tr.trail, tr.name = t, trail, ""
	tr.stopper, tr.out = nil, nil
	tr.gets, tr.conns, tr.conn = 0, 0, nil
	tr.stopped, tr.staleSent = false, false
	tr.body.reset()
}

func (tr *tracker) progress() progress {
	return progress{
		known:     true,
		connected: tr.connected.Load(),
		sent:      tr.sent.Load(),
		responded: tr.responded.Load(),
	}
}

// trackedBody wraps a request body to tell the client's read errors from
// the upstream's. It lives in the tracker, so wrapping costs no allocation;
// a tracker whose body was not closed by the time RoundTrip returned is
// never recycled, because the transport may still read it.
type trackedBody struct {
	rc     io.ReadCloser
	closed atomic.Bool

	// When the last read ended and when the body's end was read (Unix
	// nanoseconds), and whether a read is in progress: the transport
	// waits on the client then. A body has one reader at a time (the
	// transport's write loop).
	readTo, ended atomic.Int64
	reading       atomic.Bool

	mu  sync.Mutex
	err error // the first read error other than io.EOF
}

func (b *trackedBody) reset() {
	b.rc = nil
	b.readTo.Store(0)
	b.ended.Store(0)
	b.reading.Store(false)
	b.closed.Store(false)
	b.err = nil // no reader left: a tracker is recycled only once closed
}

func (b *trackedBody) Read(p []byte) (int, error) {
	b.reading.Store(true)
	n, err := b.rc.Read(p)
	now := time.Now().UnixNano()
	b.readTo.Store(now)
	if err == io.EOF {
		b.ended.Store(now)
	}
	b.reading.Store(false)
	if err != nil && err != io.EOF && !errors.Is(err, http.ErrBodyReadAfterClose) {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.rc.Close()
	b.closed.Store(true) // last: the tracker may be recycled from here on
	return err
}

// arrivingSlack is how close to a request's deadline the transport must
// have been reading the client's unfinished body for the deadline to be
// the client's: longer than the gap between two reads of a body that
// keeps moving (the write of what was read, a scheduling delay), shorter
// than an upstream that holds the upload up (its receive window full)
// keeps the transport writing.
const arrivingSlack = 10 * time.Millisecond

// arriving reports whether the client's body was still arriving when
// ctx's deadline passed: its end not read by then, and the transport
// waiting on it — a read in progress now, or one that ended after the
// deadline or at most arrivingSlack before it. (net/http may return from
// a canceled RoundTrip only once the read in progress returned.)
func (b *trackedBody) arriving(ctx context.Context) bool {
	if b.rc == nil {
		return false
	}
	dl, ok := ctx.Deadline()
	if !ok {
		return false
	}
	at := dl.UnixNano()
	if end := b.ended.Load(); end != 0 && end <= at {
		return false // sent whole before the deadline: the upstream's wait
	}
	return b.reading.Load() || b.readTo.Load() >= at-int64(arrivingSlack)
}

func (b *trackedBody) error() error {
	if b.rc == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
