package retry

import (
	"math/rand/v2"
	"time"
)

// backoff computes full-jitter exponential delays (the "Full Jitter" of
// AWS's "Exponential Backoff and Jitter"): before retry n (n = 0 for the
// first retry) it waits a uniform random time in [0, min(cap, base·2ⁿ)).
// Full jitter spreads the retries of many clients that failed together
// over the whole interval, instead of synchronising them at its end.
//
// A backoff is immutable and safe for concurrent use.
type backoff struct {
	base, cap time.Duration
	// int64n returns a uniform random int64 in [0, n), n > 0. Nil means
	// math/rand/v2's Int64N, whose source is per-goroutine state of the
	// runtime: no lock, no package-level state of ours. Tests inject a
	// deterministic one.
	int64n func(n int64) int64
}

// ceiling returns min(cap, base·2ⁿ), without overflowing.
func (b backoff) ceiling(n int) time.Duration {
	if b.base <= 0 || b.cap <= 0 {
		return 0
	}
	d := b.base
	for i := 0; i < n; i++ {
		if d >= b.cap/2 {
			return b.cap
		}
		d *= 2
	}
	return min(d, b.cap)
}

// delay returns the jittered delay before retry n (n ≥ 0).
func (b backoff) delay(n int) time.Duration {
	c := b.ceiling(n)
	if c <= 0 {
		return 0
	}
	f := b.int64n
	if f == nil {
		f = rand.Int64N
	}
	return time.Duration(f(int64(c)))
}
