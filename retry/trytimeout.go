package retry

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// tryTimeoutError is the cancellation cause of an attempt whose per-try
// timeout expired. The transport reports a canceled request's cause, and
// the gateway classifies this one as a timeout (it is a
// context.DeadlineExceeded and a net.Error-style Timeout), not as a client
// that went away.
type tryTimeoutError struct{}

func (tryTimeoutError) Error() string   { return "retry: per-try timeout exceeded" }
func (tryTimeoutError) Timeout() bool   { return true }
func (tryTimeoutError) Temporary() bool { return true }

// Is makes errors.Is(err, context.DeadlineExceeded) hold.
func (tryTimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

var errTryTimeout error = tryTimeoutError{}

// tryCtx is an attempt's context under a per-try timeout. Unlike
// context.WithTimeout, its timer can be disarmed: once the attempt's
// response is passed to the client, a streamed body is no longer cut by the
// per-try timeout, only by the inbound context.
//
// The timer measures the upstream, not the client: time the transport
// spends waiting on a read of the request body (see pace) is not charged,
// and the deadline moves by it. An upload that keeps moving for longer
// than the per-try timeout is therefore not cut, as nginx's
// proxy_read_timeout starts only once the request is sent; a stalled one
// is the client's, ended by gateway.ClientBodyTimeout.
//
// It embeds a real cancel context (a child of the request's), so contexts
// derived from it attach to it without a goroutine, and context.Cause sees
// errTryTimeout. Err reports context.DeadlineExceeded after the timeout,
// like a deadline context, so that no layer mistakes it for a client that
// went away (context.Canceled).
type tryCtx struct {
	context.Context
	cancel   context.CancelCauseFunc
	timer    *time.Timer
	start    time.Time
	d        time.Duration
	expired  atomic.Bool
	disarmed atomic.Bool

	mu       sync.Mutex
	reading  int           // body reads in progress
	readFrom time.Time     // when the reads in progress began
	waited   time.Duration // spent waiting on the client's body: not charged
	late     bool          // the timer fired during a body read
	body     pacedBody
}

func newTryCtx(parent context.Context, d time.Duration) *tryCtx {
	c := &tryCtx{start: time.Now(), d: d}
	c.Context, c.cancel = context.WithCancelCause(parent)
	c.timer = time.AfterFunc(d, c.expire)
	return c
}

// expire ends the attempt when its time is up: not while the transport
// waits on the client's body, and not before the time waited on it was
// added back.
func (c *tryCtx) expire() {
	if c.disarmed.Load() || c.Context.Err() != nil {
		return
	}
	c.mu.Lock()
	if c.reading > 0 {
		c.late = true // decided when the read returns
		c.mu.Unlock()
		return
	}
	left := time.Until(c.deadlineLocked())
	if left > 0 {
		c.timer.Reset(left)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.expired.Store(true)
	c.cancel(errTryTimeout)
}

// deadlineLocked is when the per-try time is up, with the time waited on
// the client's body so far added. c.mu is held.
func (c *tryCtx) deadlineLocked() time.Time {
	return c.start.Add(c.d + c.waited)
}

// pace returns body, read through c so that the time a read waits is not
// charged to the attempt. The reader lives in c: no allocation.
func (c *tryCtx) pace(body io.ReadCloser) io.ReadCloser {
	c.body = pacedBody{c: c, rc: body}
	return &c.body
}

// pacedBody is a request body whose reads pause the per-try timer.
type pacedBody struct {
	c  *tryCtx
	rc io.ReadCloser
}

func (b *pacedBody) Read(p []byte) (int, error) {
	c := b.c
	c.mu.Lock()
	if c.reading == 0 {
		c.readFrom = time.Now()
	}
	c.reading++
	c.mu.Unlock()
	n, err := b.rc.Read(p)
	c.mu.Lock()
	c.reading--
	late := false
	if c.reading == 0 {
		c.waited += time.Since(c.readFrom)
		late, c.late = c.late, false
	}
	c.mu.Unlock()
	if late {
		c.expire() // ends the attempt now, or re-arms for the time left
	}
	return n, err
}

func (b *pacedBody) Close() error { return b.rc.Close() }

// disarm stops the per-try timer: the attempt's response was passed.
func (c *tryCtx) disarm() {
	c.disarmed.Store(true)
	c.timer.Stop()
}

// stop ends the attempt's context, releasing it from its parent.
func (c *tryCtx) stop() {
	c.timer.Stop()
	c.cancel(context.Canceled)
}

// Deadline is the per-try deadline while the timer is armed (moved by the
// time waited on the client's body so far), or the parent's if that is
// earlier or the timer was disarmed.
func (c *tryCtx) Deadline() (time.Time, bool) {
	d, ok := c.Context.Deadline()
	if c.disarmed.Load() {
		return d, ok
	}
	c.mu.Lock()
	own := c.deadlineLocked()
	c.mu.Unlock()
	if ok && d.Before(own) {
		return d, ok
	}
	return own, true
}

// Err is context.DeadlineExceeded when the per-try timeout ended the
// attempt, or a deadline of the request did through a hedgeable attempt's
// context (see attemptCtx); the embedded context's error otherwise.
func (c *tryCtx) Err() error {
	err := c.Context.Err()
	if err != nil && c.expired.Load() {
		return context.DeadlineExceeded
	}
	if err != nil {
		return deadlineErr(c.Context)
	}
	return err
}
