package gateway

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// A Failure is a classified upstream failure: why a proxied request got no
// usable response. Transport returns it as the RoundTrip error, ErrorHandler
// records it for the enclosing layers, and those layers (retry, breaker,
// errorpage) decide from it without looking at error strings.
//
// Failure wraps the original error: errors.Is and errors.As see through it
// (errors.Is(f, syscall.ECONNREFUSED), errors.As(f, new(*net.DNSError))).
//
// Its Error text contains the upstream address and the cause. It is for
// logs and operators; never show it to an untrusted client — use
// the Explanation of its Class ([Class.Explanation]) instead.
type Failure struct {
	// Class is the failure's kind.
	Class Class

	// Status is the HTTP status for the client: the class's status, or the
	// upstream's own for ClassUpstreamStatus.
	Status int

	// Upstream is the upstream's host:port, or "" when none was chosen
	// (ClassNoUpstream before any pick).
	Upstream string

	// Sent reports whether any byte of the request may have reached the
	// upstream. It is measured with httptrace, not guessed: false means the
	// request was certainly not applied and is safe to retry whatever its
	// method. When it is unknown (an error from an uninstrumented
	// RoundTripper) it is true.
	Sent bool

	// Attempts is how many attempts the request took, counting this one.
	// Zero means one attempt: only the retry layer sets it.
	Attempts int

	// RetryAfter is how long the client should wait before trying again,
	// from the upstream's Retry-After header, a breaker's remaining open
	// time, or a pool's resting time. Zero means unknown.
	RetryAfter time.Duration

	// Err is the underlying error; nil for ClassUpstreamStatus.
	Err error
}

// Error describes the failure for logs: class, upstream, and cause.
func (f *Failure) Error() string {
	var b strings.Builder
	b.WriteString("gateway: ")
	b.WriteString(f.Class.String())
	if f.Upstream != "" {
		b.WriteString(" from ")
		b.WriteString(f.Upstream)
	}
	if f.Class == ClassUpstreamStatus {
		fmt.Fprintf(&b, ": status %d", f.Status)
	}
	if f.Err != nil {
		b.WriteString(": ")
		b.WriteString(f.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying error, for errors.Is and errors.As.
func (f *Failure) Unwrap() error { return f.Err }

// Hint returns advice for the operator, naming the upstream. It may reveal
// internal addresses: show it only to trusted viewers.
func (f *Failure) Hint() string {
	up := f.Upstream
	if up == "" {
		up = "the upstream"
	}
	return fmt.Sprintf(f.Class.info().hint, up)
}

// StatusCode returns the status for the client: f.Status if set, else the
// class's status.
func (f *Failure) StatusCode() int {
	if f.Status != 0 {
		return f.Status
	}
	return f.Class.Status()
}

// ErrRetryBudget is joined into a Failure's Err when a retry layer would
// have retried the failure but its retry budget was spent: the gateway, not
// the upstream, decided to stop. Test for it with errors.Is.
var ErrRetryBudget = errors.New("retry budget exhausted")

// NewFailure returns a Failure of class c with the class's status. It is for
// layers that create failures themselves (a breaker that is open, a pool
// with no upstream left); errors from a RoundTripper are classified with
// [ClassifyError] instead.
func NewFailure(c Class, upstream string, err error) *Failure {
	return &Failure{Class: c, Status: c.Status(), Upstream: upstream, Err: err}
}
