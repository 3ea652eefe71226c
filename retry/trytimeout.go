package retry

import (
	"context"
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
// It embeds a real cancel context (a child of the request's), so contexts
// derived from it attach to it without a goroutine, and context.Cause sees
// errTryTimeout. Err reports context.DeadlineExceeded after the timeout,
// like a deadline context, so that no layer mistakes it for a client that
// went away (context.Canceled).
type tryCtx struct {
	context.Context
	cancel   context.CancelCauseFunc
	timer    *time.Timer
	deadline time.Time
	expired  atomic.Bool
	disarmed atomic.Bool
}

func newTryCtx(parent context.Context, d time.Duration) *tryCtx {
	c := &tryCtx{deadline: time.Now().Add(d)}
	c.Context, c.cancel = context.WithCancelCause(parent)
	c.timer = time.AfterFunc(d, c.expire)
	return c
}

func (c *tryCtx) expire() {
	if c.disarmed.Load() || c.Context.Err() != nil {
		return
	}
	c.expired.Store(true)
	c.cancel(errTryTimeout)
}

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

// Deadline is the per-try deadline while the timer is armed, or the
// parent's if that is earlier or the timer was disarmed.
func (c *tryCtx) Deadline() (time.Time, bool) {
	d, ok := c.Context.Deadline()
	if c.disarmed.Load() || (ok && d.Before(c.deadline)) {
		return d, ok
	}
	return c.deadline, true
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
