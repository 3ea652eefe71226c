package gateway

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// defaultClientBodyIdle is ClientBodyTimeout's idle timeout when none is
// given.
const defaultClientBodyIdle = 30 * time.Second

// ClientBodyTimeout returns middleware that bounds how long a client may
// leave its request body idle: the read deadline of the client's connection
// is set to idle from now when the request has a body, and pushed forward
// by idle after every read that returns data, so an upload that keeps
// moving is never cut, however long it takes, while one that stalls for
// idle is ended. It is nginx's client_body_timeout. A zero or negative idle
// means 30 s: half nginx's 60 s default, far longer than any gap in a
// moving upload, and short enough that a stalled client does not hold an
// upstream connection and a request slot for minutes.
//
// Behind it, a body that stalls fails its read with a timeout, which
// [Transport] classifies as the client's fault: [ClassClientBody] with
// status 408, never an upstream timeout, and the upstream request is ended,
// releasing its connection. The deadline is cleared as soon as the body is
// read to its end or closed: a read deadline left on the connection would
// fire in the background read that net/http starts once the body is
// consumed, and cancel the request's context while the response is still
// streaming. After a failed read, or once the handler returned, it is left
// as it is, so that net/http's discarding of an unread rest cannot wait on
// a stalled client; the connection then serves no other request, or gets
// its deadlines reset for the next one. Requests without a body (WebSocket
// upgrades, server-sent event streams) are passed through untouched;
// responses are never bounded, so long downloads are unaffected.
//
// It sets the deadline as http.ResponseController does, so every
// ResponseWriter wrapper between it and the server must support that
// (Unwrap); where SetReadDeadline is not supported it does nothing. The
// deadline replaces any set by http.Server.ReadTimeout for the body. A
// request body meant to idle longer than idle (a bidirectional stream)
// needs a longer idle. The layers inside see a shallow copy of the request
// with the body wrapped; net/http keeps its own, so that a client that sent
// "Expect: 100-continue" and is answered before its body is read (an
// upstream that failed) gets that answer at once, as from a bare
// ReverseProxy, and is never read from for its unsent body. Wrap it outside
// any layer that keeps the body (retry).
func ClientBodyTimeout(next http.Handler, idle time.Duration) http.Handler {
	if idle <= 0 {
		idle = defaultClientBodyIdle
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		if err := setReadDeadline(w, time.Now().Add(idle)); err != nil {
			next.ServeHTTP(w, r) // no deadlines through this writer
			return
		}
		// A shallow copy carries the wrapped body: the server's own
		// request keeps its body, whose type net/http reads after the
		// handler (a client still waiting for 100 Continue is not read
		// from, only its connection closed; an unread rest is
		// discarded under the deadline). Copy and body are one
		// allocation.
		in := &idleRequest{req: *r, body: idleBody{rc: r.Body, w: w, idle: idle}}
		in.req.Body = &in.body
		defer in.body.stop() // w is not ours once the handler returned
		next.ServeHTTP(w, &in.req)
	})
}

// idleRequest is the request the layers behind ClientBodyTimeout see, with
// its body.
type idleRequest struct {
	req  http.Request
	body idleBody
}

// errNoReadDeadline: no writer in the chain sets read deadlines.
var errNoReadDeadline = errors.New("gateway: the ResponseWriter does not support read deadlines")

// setReadDeadline does what http.ResponseController's SetReadDeadline
// does — the first writer down the Unwrap chain that sets read deadlines
// sets it — without allocating a controller, since it runs on every read
// of a moving body.
func setReadDeadline(w http.ResponseWriter, t time.Time) error {
	for {
		switch v := w.(type) {
		case interface{ SetReadDeadline(time.Time) error }:
			return v.SetReadDeadline(t)
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return errNoReadDeadline
		}
	}
}

// idleBody pushes its connection's read deadline forward while it is read.
// The transport may read and close it on its own goroutines, even after the
// handler returned; once stopped, it no longer touches the ResponseWriter.
type idleBody struct {
	rc   io.ReadCloser
	w    http.ResponseWriter
	idle time.Duration

	mu      sync.Mutex
	stopped bool // the deadline is left alone from now on
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.clear()
	case err != nil:
		// A failure, the deadline's own included. The deadline stays: the
		// connection will not serve another request (its body was not read
		// to the end), and whatever reads on (net/http discarding the rest)
		// must fail fast rather than wait for a stalled client.
		b.stop()
	case n > 0:
		b.mu.Lock()
		if !b.stopped {
			_ = setReadDeadline(b.w, time.Now().Add(b.idle))
		}
		b.mu.Unlock()
	}
	return n, err
}

// Close closes the body, which for a server's request body reads on to
// discard what is left (still under the deadline, so a stalled client
// cannot hold it), then clears the deadline.
func (b *idleBody) Close() error {
	err := b.rc.Close()
	b.clear()
	return err
}

// clear clears the deadline, unless stopped, and stops.
func (b *idleBody) clear() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.stopped {
		b.stopped = true
		_ = setReadDeadline(b.w, time.Time{})
	}
}

// stop leaves the deadline as it is, for good.
func (b *idleBody) stop() {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
}
