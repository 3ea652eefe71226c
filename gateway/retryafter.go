package gateway

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// maxRetryAfter bounds a parsed Retry-After so that hostile values cannot
// overflow time.Duration arithmetic downstream. No layer waits anywhere near
// this long; it only keeps the value meaningful.
const maxRetryAfter = 24 * time.Hour

// ParseRetryAfter parses a Retry-After header value (RFC 9110 §10.2.3):
// either delay-seconds or an HTTP-date, which is taken relative to now. It
// reports false for an empty or invalid value. A date in the past yields 0.
// Results are capped at 24 hours.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" || len(v) > 64 {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		for i := 0; i < len(v); i++ {
			if v[i] < '0' || v[i] > '9' {
				return 0, false
			}
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true // all digits, just huge
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	switch {
	case d < 0:
		return 0, true
	case d > maxRetryAfter:
		return maxRetryAfter, true
	}
	return d, true
}

// retryAfterSeconds formats d as a Retry-After delay in whole seconds,
// rounded up, and at least 1: "0" would invite an immediate retry storm.
func retryAfterSeconds(d time.Duration) string {
	s := (d + time.Second - 1) / time.Second
	if s < 1 {
		s = 1
	}
	return strconv.FormatInt(int64(s), 10)
}

// SpreadRetryAfter returns the Retry-After, in whole seconds, to send with
// a failure of class c that advises waiting d; 0 when d ≤ 0. Overloaded,
// open and no_upstream answers turn many clients away within the same
// second: each such answer draws its own wait from [n, 2n] seconds, and at
// least [n, n+2] (n is d rounded up, at least 1), so that they come back
// spread over a window instead of together. Every other class gets n.
// Call it once per response and send the one value everywhere (header,
// page reload, problem document).
func SpreadRetryAfter(c Class, d time.Duration) int {
	if d <= 0 {
		return 0
	}
	n := int((min(d, maxRetryAfter) + time.Second - 1) / time.Second)
	n = max(n, 1)
	switch c {
	case ClassOverloaded, ClassOpen, ClassNoUpstream:
		hi := max(2*n, n+2)
		return n + rand.IntN(hi-n+1)
	}
	return n
}
