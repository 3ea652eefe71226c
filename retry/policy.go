package retry

import (
	"net/http"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// idempotentMethod reports whether method is idempotent by RFC 9110
// §9.2.2: repeating it has the same effect as sending it once. Methods are
// case-sensitive; anything unknown is not idempotent.
func idempotentMethod(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace,
		http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// repeatable reports whether r may be sent again after it may have been
// applied: an idempotent method, or, when the user trusts it, an
// Idempotency-Key header.
func repeatable(r *http.Request, trustKey bool) bool {
	if idempotentMethod(r.Method) {
		return true
	}
	return trustKey && r.Header.Get(IdempotencyKeyHeader) != ""
}

// eligible reports whether an attempt that failed with f may be retried at
// all, given whether the request is repeatable once sent. This is the
// taxonomy's decision table; attempts left, the body, the deadline, the
// budget and the client are checked separately.
func eligible(f *gateway.Failure, repeatable bool) bool {
	switch f.Class {
	case gateway.ClassCanceled, gateway.ClassNoUpstream, gateway.ClassClientBody, gateway.ClassMaintenance,
		gateway.ClassResponseRejected:
		// The client went away; nothing is left to try; the client's own
		// body broke, which no upstream can mend (and which cannot be read
		// again); the operator closed the service; or the proxy's own
		// ModifyResponse rejected an answer, a decision that another
		// attempt would only repeat at the upstream's expense.
		return false
	case gateway.ClassOverloaded:
		// Shed before it was sent, by the host's concurrency limit:
		// another host may have headroom (the limiter never sends a retry
		// back to a host at its limit that this request tried).
		return f.Upstream != ""
	case gateway.ClassOpen:
		// The breaker answered without contacting the upstream. One that
		// names its upstream (a per-host breaker) is retried so that the
		// balancer picks another host; one that names none guards the
		// whole route (breaker.New), and the next attempt would meet it
		// open again.
		return f.Upstream != ""
	}
	// Not sent (measured): nothing can have been applied, any method may
	// go again. Sent, or perhaps sent: only a repeatable request. A stale
	// keep-alive connection follows the same rule: if the upstream may
	// have read the request before it closed, only a repeatable one goes
	// again.
	return !f.Sent || repeatable
}

// immediate reports whether a retry of f starts at once, without the
// backoff delay: a stale keep-alive connection says nothing about the
// upstream's health, and the next attempt gets a fresh connection.
func immediate(f *gateway.Failure) bool {
	// A stale keep-alive connection says nothing about the host; a shed
	// request goes to another host at once, or not at all: its
	// Retry-After is meant for the client.
	return f.Class == gateway.ClassStaleConn || f.Class == gateway.ClassOverloaded
}

// retryDelay returns the wait before retry n (n = 0 for the first retry)
// of an attempt that failed with f, before any Retry-After is considered.
func (rt *Retry) retryDelay(f *gateway.Failure, n int) time.Duration {
	if immediate(f) {
		return 0
	}
	return rt.backoff.delay(n)
}

// honoursRetryAfter reports whether the Retry-After of a response with
// this status is a wait before a retry (RFC 9110 §10.2.3, RFC 6585 §4).
func honoursRetryAfter(status int) bool {
	return status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests
}

// final reports a failure that ends the request at once, even while other
// attempts race it: the upstream answered and the proxy's own
// ModifyResponse rejected the answer, which is the request's outcome as
// much as a success would be.
func final(f *gateway.Failure) bool { return f.Class == gateway.ClassResponseRejected }
