package retry

import (
	"net/http"

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
	case gateway.ClassCanceled, gateway.ClassNoUpstream:
		// The client went away; or nothing is left to try.
		return false
	case gateway.ClassOpen:
		// The breaker answered without contacting the upstream: another
		// host may be picked.
		return true
	}
	// Not sent (measured): nothing can have been applied, any method may
	// go again. Sent, or perhaps sent: only a repeatable request.
	return !f.Sent || repeatable
}

// honoursRetryAfter reports whether the Retry-After of a response with
// this status is a wait before a retry (RFC 9110 §10.2.3, RFC 6585 §4).
func honoursRetryAfter(status int) bool {
	return status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests
}
