package retry

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Defaults used for the zero fields of [Options].
const (
	// DefaultAttempts is the number of attempts per request, the first one
	// included: 1 try + 2 retries, the SRE book's per-request cap.
	DefaultAttempts = 3
	// DefaultBaseDelay is the base of the exponential backoff (Envoy's
	// default).
	DefaultBaseDelay = 25 * time.Millisecond
	// DefaultMaxDelay caps the exponential backoff (Envoy's default).
	DefaultMaxDelay = 250 * time.Millisecond
	// DefaultMaxRetryAfter is the longest upstream Retry-After that is
	// waited out before a retry. A longer one sends the response to the
	// client as it is: a proxy should not hold a request for long.
	DefaultMaxRetryAfter = 1 * time.Second
	// DefaultMaxReplayBytes is how much of a request body is kept for
	// replay: 1 MiB.
	DefaultMaxReplayBytes = 1 << 20
	// DefaultMaxReplayTotal is how much memory the replay buffers of all
	// requests in flight through one Retry may hold together: 64 MiB, 64
	// bodies at DefaultMaxReplayBytes. Past it, bodies stream without
	// replay, so hostile clients (stalled uploads) cannot grow the
	// process without bound.
	DefaultMaxReplayTotal = 64 << 20
	// DefaultBudgetRatio is the share of extra load retries may add over
	// [BudgetWindow]: 20%.
	DefaultBudgetRatio = 0.2
	// DefaultBudgetMinPerSecond is the floor of the retry budget, in
	// retries per second, so that a quiet service can still retry.
	DefaultBudgetMinPerSecond = 10.0
	// DefaultHedgeMinDelay is the floor of the adaptive hedge delay: an
	// attempt is never hedged sooner. Below a few milliseconds a hedge
	// saves little and ordinary scheduling jitter would trigger it.
	DefaultHedgeMinDelay = 5 * time.Millisecond
)

// BudgetWindow is the sliding window over which the retry budget compares
// retries with requests. It is kept in ten one-second buckets.
const BudgetWindow = budgetBuckets * time.Second

// IdempotencyKeyHeader is the request header that, when
// [Options.TrustIdempotencyKey] is set, makes a non-idempotent request
// retryable after it may have been sent.
const IdempotencyKeyHeader = "Idempotency-Key"

// Options configures a [Retry]. The zero value is ready to use: every zero
// field means its documented default, and New(Options{}) never fails.
// Negative values are errors.
type Options struct {
	// Attempts is the most attempts per request, the first one included.
	// 0 means DefaultAttempts (3). 1 disables retrying and hedging; the
	// per-try duties (PerTryTimeout, AttemptHeader) still apply, and
	// without them Wrap returns the handler unchanged.
	Attempts int

	// BaseDelay and MaxDelay shape the full-jitter backoff before retry n
	// (n = 0 for the first retry): a uniform random delay in
	// [0, min(MaxDelay, BaseDelay·2ⁿ)). 0 means DefaultBaseDelay (25 ms)
	// and DefaultMaxDelay (250 ms), except that a default yields to the
	// other one when that is set alone (MaxDelay 10 ms alone means
	// BaseDelay 10 ms). BaseDelay must not exceed MaxDelay.
	BaseDelay time.Duration
	MaxDelay  time.Duration

	// PerTryTimeout bounds the time each attempt waits on the upstream
	// until its response is passed to the client (status and headers
	// decided); a streamed body after that is bounded only by the inbound
	// request's context. Time the transport spends waiting on the client's
	// request body is not counted: an upload that keeps moving is never
	// cut by it, however long it takes (a stalled one is ended by
	// gateway.ClientBodyTimeout, as the client's). An attempt that times
	// out fails as gateway.ClassTimeout (ClassConnectTimeout when a
	// connection was being dialed; ClassOverloaded when it waited for a
	// free connection under the transport's MaxConnsPerHost) and may be
	// retried. It applies with Attempts 1 too. 0 means no per-try timeout:
	// attempts are bounded by the inbound context alone.
	PerTryTimeout time.Duration

	// MaxRetryAfter is the longest Retry-After on an upstream's 503 or 429
	// that is waited out before retrying. A longer one, or one that does
	// not fit before the inbound deadline, sends the upstream's response to
	// the client as it is. 0 means DefaultMaxRetryAfter (1 s).
	MaxRetryAfter time.Duration

	// MaxReplayBytes is how many bytes of a request body are kept, as the
	// upstream reads them, so that a retry can replay them. A body longer
	// than this is retried only when no byte of it was read. 0 means
	// DefaultMaxReplayBytes (1 MiB), or MaxReplayTotal when only that is
	// set and is smaller. Bodies of requests that could only be retried
	// unread (non-idempotent methods) are never buffered.
	MaxReplayBytes int

	// MaxReplayTotal caps, in bytes, the memory that the replay buffers of
	// all requests in flight through this Retry hold together (a buffer
	// counts with its allocated capacity, from its first kept byte until
	// its request ends, however it ends). A body that would take the total
	// past the cap is not kept, or no longer kept: it still streams to the
	// upstream whole and unchanged, but its request is not retried once
	// any byte of it was read (as a body over MaxReplayBytes). 0 means
	// DefaultMaxReplayTotal (64 MiB), or MaxReplayBytes when only that is
	// set and is larger. It must not be smaller than MaxReplayBytes when
	// both are set; math.MaxInt lifts the cap.
	MaxReplayTotal int

	// TrustIdempotencyKey treats a non-idempotent request (POST, PATCH …)
	// that carries an Idempotency-Key header as idempotent, so that it may
	// be retried after it was sent. Enable it only if the upstream
	// deduplicates on that key. Default false.
	TrustIdempotencyKey bool

	// BudgetRatio is how much extra load retries may add, as a share of
	// the requests over [BudgetWindow]: 0.2 allows one retry per five
	// requests. 0 means DefaultBudgetRatio (0.2); math.Inf(1) disables the
	// budget. Retries beyond the budget are not made; the failure goes to
	// the client and a "budget exhausted" line is logged.
	BudgetRatio float64

	// BudgetMinPerSecond is the budget's floor: this many retries per
	// second are allowed whatever the ratio (a token bucket of the same
	// size), so that low-traffic services can retry at all. 0 means
	// DefaultBudgetMinPerSecond (10).
	BudgetMinPerSecond float64

	// AttemptHeader, when not "", is a request header set to the attempt
	// number ("1", "2" …) on every attempt, replacing any value the client
	// sent. Default "" (off).
	AttemptHeader string

	// OnRetry, if not nil, is called before each retry, on the request's
	// goroutine: attempt is the number of the attempt about to start (2
	// for the first retry), f the failure of the previous attempt (a copy,
	// with Attempts set, that the hook may keep), delay the wait before
	// the retry (0 after a stale_connection: it is retried at once). It
	// must be safe for concurrent use and quick: the request waits for it.
	OnRetry func(attempt int, f *gateway.Failure, delay time.Duration)

	// Hedges is how many hedges a request may have: extra copies of an
	// attempt that has been outstanding longer than the hedge delay, sent
	// to another upstream while it stays in flight; the first response
	// that is not a failure wins and the others are cancelled. A hedge is
	// an attempt: it counts in Attempts and in the budget, which it shares
	// with retries. 0 (the zero value) turns hedging off: a library sends
	// no extra load unasked. proxykit.New turns it on (1) for pools of two
	// or more upstreams. A second hedge, if allowed, follows the first
	// after another delay.
	//
	// Only requests safe to send twice at the same time are hedged (see
	// Hedgeable): by default GET, HEAD and OPTIONS, without a body. PUT and
	// DELETE are idempotent, and retried, but not hedged by default: two
	// copies in flight at once can interleave with another client's
	// request (PUT a, PUT b, then the late copy of PUT a lands last), which
	// one copy after the other cannot. A request body is sent with a hedge
	// only once it has been read whole and kept (within MaxReplayBytes);
	// an upgrade (WebSocket) is never hedged.
	Hedges int

	// HedgeDelay, when positive, is a fixed delay after which an attempt
	// is hedged. 0 means adaptive: three times the 90th percentile of the
	// latencies (to the response header) of recent successful attempts of
	// hedgeable requests through this Retry, over the last 5 to 10 s, and
	// never less than HedgeMinDelay; no hedge is sent until 50 such
	// attempts were seen. Three times p90 hedges at most 10% of attempts,
	// and under 1% of those of a service whose latency is spread like most
	// (lognormal, or a Pareto tail of index 3). It stays below a stall that
	// hits up to 10% of responses even when no hedge cuts it (while
	// warming up, or after any spell in which hedging stopped), so it never
	// learns the stall it exists to cut; p95 would, from 5% on, and would
	// then keep itself there. Attempts that lose to a hedge are not
	// counted.
	HedgeDelay time.Duration

	// HedgeMinDelay is the floor of the adaptive hedge delay. 0 means
	// DefaultHedgeMinDelay (5 ms).
	HedgeMinDelay time.Duration

	// Hedgeable, if not nil, reports whether a request may be hedged, in
	// place of the default: GET, HEAD or OPTIONS. Use it to hedge other
	// methods (only if two copies of the request in flight at once are
	// harmless), or to keep some requests unhedged (a route, a header the
	// client sends). Whatever it says, upgrades and bodies not kept whole
	// are never hedged. It must be safe for concurrent use and quick.
	Hedgeable func(r *http.Request) bool

	// OnHedge, if not nil, is called when a hedge is sent (HedgeSent),
	// when it wins (HedgeWon), and when one was due but the budget refused
	// it (HedgeDenied); attempt is the hedge's attempt number, delay how
	// long the attempt it hedges had been outstanding. It runs on the
	// hedge's goroutine, must be safe for concurrent use and quick.
	OnHedge func(e HedgeEvent, attempt int, delay time.Duration)

	// Logger receives a debug line per retry, a warn line (at most one a
	// second) when the budget is exhausted, and the one line for a failed
	// request when no enclosing layer took the failure. Nil means
	// slog.Default() at the time of each call.
	Logger *slog.Logger
}

// config is Options with the defaults applied.
type config struct {
	attempts       int
	base, cap      time.Duration
	perTry         time.Duration
	maxRetryAfter  time.Duration
	maxReplay      int
	maxReplayTotal int
	trustKey       bool
	ratio, floor   float64
	attemptHeader  string
	onRetry        func(int, *gateway.Failure, time.Duration)
	logger         *slog.Logger

	hedges        int
	hedgeDelay    time.Duration // fixed; 0: adaptive
	hedgeMinDelay time.Duration
	hedgeable     func(*http.Request) bool
	onHedge       func(HedgeEvent, int, time.Duration)
}

// resolve validates o and applies the defaults. Every invalid field is
// reported, each error naming it.
func (o Options) resolve() (config, error) {
	var errs []error
	c := config{
		attempts:       orDefault(&errs, "Attempts", o.Attempts, DefaultAttempts),
		base:           orDefault(&errs, "BaseDelay", o.BaseDelay, DefaultBaseDelay),
		cap:            orDefault(&errs, "MaxDelay", o.MaxDelay, DefaultMaxDelay),
		perTry:         orDefault(&errs, "PerTryTimeout", o.PerTryTimeout, 0),
		maxRetryAfter:  orDefault(&errs, "MaxRetryAfter", o.MaxRetryAfter, DefaultMaxRetryAfter),
		maxReplay:      orDefault(&errs, "MaxReplayBytes", o.MaxReplayBytes, DefaultMaxReplayBytes),
		maxReplayTotal: orDefault(&errs, "MaxReplayTotal", o.MaxReplayTotal, DefaultMaxReplayTotal),
		trustKey:       o.TrustIdempotencyKey,
		ratio:          orDefault(&errs, "BudgetRatio", o.BudgetRatio, DefaultBudgetRatio),
		floor:          orDefault(&errs, "BudgetMinPerSecond", o.BudgetMinPerSecond, DefaultBudgetMinPerSecond),
		attemptHeader:  http.CanonicalHeaderKey(o.AttemptHeader),
		onRetry:        o.OnRetry,
		logger:         o.Logger,
		hedges:         orDefault(&errs, "Hedges", o.Hedges, 0),
		hedgeDelay:     orDefault(&errs, "HedgeDelay", o.HedgeDelay, 0),
		hedgeMinDelay:  orDefault(&errs, "HedgeMinDelay", o.HedgeMinDelay, DefaultHedgeMinDelay),
		hedgeable:      o.Hedgeable,
		onHedge:        o.OnHedge,
	}
	if c.hedges > 0 && c.attempts < 2 {
		errs = append(errs, fmt.Errorf("retry: Options.Hedges (%d) needs Attempts of 2 or more: a hedge is an attempt", c.hedges))
	}
	// One of the pair set alone: the defaulted one yields to it, so that
	// Options{MaxDelay: 10 * time.Millisecond} means what it says.
	if o.BaseDelay == 0 && o.MaxDelay > 0 && c.base > c.cap {
		c.base = c.cap
	}
	if o.MaxDelay == 0 && o.BaseDelay > 0 && c.base > c.cap {
		c.cap = c.base
	}
	if o.BaseDelay >= 0 && o.MaxDelay >= 0 && c.base > c.cap {
		errs = append(errs, fmt.Errorf("retry: Options.BaseDelay (%v) exceeds MaxDelay (%v)", c.base, c.cap))
	}
	// Likewise for the replay pair: a default never contradicts the field
	// that is set.
	if o.MaxReplayBytes == 0 && o.MaxReplayTotal > 0 {
		c.maxReplay = min(c.maxReplay, c.maxReplayTotal)
	}
	if o.MaxReplayTotal == 0 && o.MaxReplayBytes > 0 {
		c.maxReplayTotal = max(c.maxReplayTotal, c.maxReplay)
	}
	if o.MaxReplayBytes > 0 && o.MaxReplayTotal > 0 && c.maxReplayTotal < c.maxReplay {
		errs = append(errs, fmt.Errorf("retry: Options.MaxReplayTotal (%d bytes) is less than MaxReplayBytes (%d bytes): no body could be kept whole", c.maxReplayTotal, c.maxReplay))
	}
	if !validHeaderName(o.AttemptHeader) {
		errs = append(errs, fmt.Errorf("retry: Options.AttemptHeader %q is not a valid header name", o.AttemptHeader))
	}
	return c, errors.Join(errs...)
}

// orDefault returns v, or def when v is zero; a negative v (or NaN) is
// recorded as an error naming the field.
func orDefault[T int | float64 | time.Duration](errs *[]error, field string, v, def T) T {
	switch {
	case v < 0 || v != v: // v != v: NaN
		*errs = append(*errs, fmt.Errorf("retry: Options.%s must not be negative, got %v", field, v))
	case v == 0:
		return def
	}
	return v
}

// validHeaderName reports whether s is "" or an RFC 9110 token.
func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '!', c == '#', c == '$', c == '%', c == '&', c == '\'', c == '*',
			c == '+', c == '-', c == '.', c == '^', c == '_', c == '`', c == '|', c == '~':
		default:
			return false
		}
	}
	return true
}
