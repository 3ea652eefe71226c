// Package breaker is circuit breaking for reverse proxies, on
// github.com/sony/gobreaker/v2 (its TwoStepCircuitBreaker).
//
// It has two seats with one policy ([Settings]):
//
//   - [Breaker] is handler middleware that guards what it wraps: one breaker
//     by default, or one per key of a [Settings.Key] function, with a hard
//     cap on the number of keys (a key taken from a request is
//     attacker-controlled, so keys beyond the cap fail open rather than
//     share a breaker).
//   - [Hosts] wraps the proxy's Transport with one breaker per upstream
//     host, so that a pool keeps serving through its healthy members;
//     [Hosts.Allows] and [Hosts.OpenFor] make it a pool's health source
//     (package gateway/pool).
//
// A breaker counts the failure classes of the gateway taxonomy
// ([gateway.Class.CountsAsFailure]) and an upstream's own 502, 503 and 504
// as failures; 2xx, 3xx and 4xx as successes; a client that went away, an
// inner breaker that is open and an empty pool not at all. For [Hosts], an
// upstream's own failure answers are evidence about a route, not the
// host: they take a host out only when they are nearly all of its traffic
// (see [HostHealth]). While open it
// answers at once with a [gateway.ClassOpen] failure — 503 with Retry-After
// set to the time left open, rounded up — without touching the upstream.
//
// Every breaker is local to the process, like every Envoy or nginx
// instance's: nothing shared sits on the request path.
package breaker

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/proxykit/proxykit/gateway/pool"
)

// Defaults of [Settings]. 5 consecutive failures is Envoy's outlier
// threshold; the first open period is short (1 s) because repeated trips
// double it up to MaxTimeout (Envoy multiplies its base ejection time by
// the number of ejections), and a host that is back is probed back.
const (
	defaultConsecutiveFailures = 5
	defaultFailureRatio        = 0.5
	defaultMinRequests         = 20
	defaultInterval            = 10 * time.Second
	defaultBucketPeriod        = time.Second
	defaultTimeout             = 1 * time.Second
	defaultMaxTimeout          = 30 * time.Second
	defaultMaxRequests         = 3
	defaultMaxKeys             = 1024
)

// maxBuckets bounds the rolling window's buckets, and with them the memory
// of one breaker (24 bytes a bucket).
const maxBuckets = 1000

// Settings configures a [Breaker] or [Hosts]. Field names follow gobreaker's
// Settings. The zero value is the documented default throughout:
//
//   - trip on 5 consecutive failures, or on ≥ 50% failures over ≥ 20
//     completed requests in a 10 s rolling window of 1 s buckets;
//   - stay open 1 s, then half-open: up to 3 probe requests at a time;
//     3 consecutive successful probes close the breaker, a failed one
//     reopens it for twice as long as the last open period, up to 30 s;
//     a breaker that stayed closed a whole Interval (10 s) since it last
//     closed starts again from 1 s;
//   - for [Hosts], the host-health defaults of [HostHealth];
//   - 500 and 501 are successes (the application's own answers);
//   - client cancellations are excluded from the counts;
//   - with a Key function (or per host), at most 1024 breakers; beyond
//     them, least-recently-used ones are evicted, at most 1024 a window,
//     and requests that still get none pass unguarded;
//   - transitions logged at warn level to slog.Default().
//
// Invalid settings (negative values, a ratio outside (0, 1], an Interval
// that is not a multiple of BucketPeriod) make the constructors fail.
type Settings struct {
	// Name labels the breakers in logs and [Status]. Default "breaker".
	Name string

	// ConsecutiveFailures trips the breaker when that many requests in a
	// row failed. Default 5.
	ConsecutiveFailures uint32
	// FailureRatio and MinRequests trip the breaker when, in the rolling
	// window, at least MinRequests requests completed (successes plus
	// failures; excluded ones do not count) and the share of failures among
	// them is at least FailureRatio. Defaults 0.5 and 20.
	FailureRatio float64
	MinRequests  uint32
	// ReadyToTrip, if set, replaces the three thresholds above. It gets the
	// window's counts after each failure while closed, under the breaker's
	// lock: it must be quick and must not call back into the breaker.
	ReadyToTrip func(Counts) bool

	// Interval is the length of the rolling window. Default 10 s.
	Interval time.Duration
	// BucketPeriod is the window's granularity: counts age out one bucket
	// at a time. Interval must be a multiple of it. Default 1 s; when
	// Interval is set to a length that 1 s does not divide, a tenth of
	// Interval (or Interval itself, if a tenth does not divide it).
	BucketPeriod time.Duration

	// Timeout is the first open period: how long the breaker stays open
	// before it lets probes through. Each further trip without a healthy
	// spell in between (a whole Interval closed) doubles it, up to
	// MaxTimeout, as Envoy multiplies its base ejection time by the number
	// of ejections. Default 1 s: a short first period costs little, since
	// a breaker that trips again at once waits twice as long.
	Timeout time.Duration
	// MaxTimeout caps the growing open period. Default 30 s (at least
	// Timeout).
	MaxTimeout time.Duration
	// MaxRequests is how many probes may be in flight while half-open, and
	// how many consecutive successes close the breaker. Default 3.
	MaxRequests uint32

	// CountServerErrors makes 500 Internal Server Error and 501 Not
	// Implemented count as failures. Off by default: they are usually the
	// application's answer to one request, not a sign that the upstream is
	// down. 502, 503 and 504 always count.
	CountServerErrors bool

	// Key, for [New] only, maps a request to the breaker that guards it
	// (a route, a tenant). Nil means one breaker for everything. Keys come
	// from requests and are attacker-controlled: see MaxKeys.
	Key func(*http.Request) string
	// MaxKeys caps the number of breakers (one per key of Key, or per host
	// for [Hosts]), so that memory stays bounded (about 1 KiB a breaker
	// with the default window). Default 1024.
	//
	// At the cap, a new key takes the place of a least recently used
	// breaker (approximated by a clock sweep: a breaker used since the
	// sweep last passed it is spared once) that no request is in flight on
	// and that is closed, or whose open period ended a whole Interval ago.
	// So busy keys cannot hold every place for ever, while a tripped
	// breaker keeps its place: a flood of new keys cannot reset it. Making
	// room is rationed to MaxKeys attempts per Interval, so that a flood of
	// new keys costs bounded work.
	//
	// A request whose key gets no breaker (the ration is spent, nothing
	// can be evicted, or the key is longer than 256 bytes) fails open: it
	// passes unguarded, is never fast-failed, and is counted in the
	// overflow entry of States (reported while there are such requests),
	// which never trips. Overflow therefore
	// cannot become a shared outage; it is logged at warn level at most
	// once per Interval.
	MaxKeys int

	// Health configures the host-health model of [Hosts] (probing, resting,
	// slow start); [New] ignores it.
	Health HostHealth

	// OnStateChange, if set, is called after each transition with the
	// breaker's key ("" for a single breaker, the host:port for [Hosts]).
	// Calls for one breaker are serialised and in order; they run on a
	// request's goroutine after the breaker's lock is released, so the hook
	// may read [Breaker.States] or [Hosts.Allows], but should be quick.
	OnStateChange func(name, key string, from, to State)
	// Logger receives one warn line per transition, and one when the key
	// cap turns requests away unguarded (see MaxKeys). A [Breaker] that is
	// the outermost layer to see a failure (its own open failure, or one
	// recorded below it) logs it there too, once. Default nil:
	// slog.Default().
	Logger *slog.Logger
}

const maxKeyLen = 256

// config is Settings with defaults applied.
type config struct {
	Settings
}

func (s Settings) normalize() (config, error) {
	c := config{s}
	orDefault(&c.Name, "breaker")
	orDefault(&c.ConsecutiveFailures, defaultConsecutiveFailures)
	orDefault(&c.FailureRatio, defaultFailureRatio)
	orDefault(&c.MinRequests, defaultMinRequests)
	orDefault(&c.Interval, defaultInterval)
	if c.BucketPeriod == 0 && c.Interval > 0 && c.Interval%defaultBucketPeriod != 0 {
		// Interval set alone to something the default period does not
		// divide: one bucket per tenth of it if that divides, else one.
		c.BucketPeriod = c.Interval
		if c.Interval%10 == 0 {
			c.BucketPeriod = c.Interval / 10
		}
	}
	orDefault(&c.BucketPeriod, min(defaultBucketPeriod, c.Interval))
	orDefault(&c.Timeout, defaultTimeout)
	orDefault(&c.MaxTimeout, defaultMaxTimeout)
	c.MaxTimeout = max(c.MaxTimeout, c.Timeout)
	orDefault(&c.MaxRequests, defaultMaxRequests)
	orDefault(&c.MaxKeys, defaultMaxKeys)
	var errs []error
	if math.IsNaN(c.FailureRatio) || c.FailureRatio <= 0 || c.FailureRatio > 1 {
		errs = append(errs, fmt.Errorf("FailureRatio %v is not in (0, 1]", s.FailureRatio))
	}
	negative := false
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Interval", s.Interval}, {"BucketPeriod", s.BucketPeriod}, {"Timeout", s.Timeout},
		{"MaxTimeout", s.MaxTimeout}} {
		if d.v < 0 {
			negative = true
			errs = append(errs, fmt.Errorf("negative %s %v", d.name, d.v))
		}
	}
	switch {
	case negative: // the window's checks need positive periods
	case c.Interval%c.BucketPeriod != 0:
		errs = append(errs, fmt.Errorf("BucketPeriod %v does not divide Interval %v", c.BucketPeriod, c.Interval))
	case c.Interval/c.BucketPeriod > maxBuckets:
		errs = append(errs, fmt.Errorf("BucketPeriod %v cuts Interval %v into more than %d buckets", c.BucketPeriod, c.Interval, maxBuckets))
	}
	errs = append(errs, c.Health.validate()...)
	c.Health = c.Health.withDefaults(c.MinRequests)
	if c.MaxKeys < 0 {
		errs = append(errs, fmt.Errorf("negative MaxKeys %d", c.MaxKeys))
	}
	if err := errors.Join(errs...); err != nil {
		return config{}, fmt.Errorf("breaker: invalid settings: %w", err)
	}
	return c, nil
}

// orDefault sets *p to d if it is the zero value.
func orDefault[T comparable](p *T, d T) {
	var zero T
	if *p == zero {
		*p = d
	}
}

// readyToTrip applies the thresholds to the window's counts.
func (c *config) readyToTrip(n Counts) bool {
	if c.ReadyToTrip != nil {
		return c.ReadyToTrip(n)
	}
	if n.ConsecutiveFailures >= c.ConsecutiveFailures {
		return true
	}
	done := uint64(n.Successes) + uint64(n.Failures)
	return done >= uint64(c.MinRequests) && float64(n.Failures) >= c.FailureRatio*float64(done)
}

// State is a breaker's state. It encodes as "closed", "half-open" or "open".
type State uint8

// The states.
const (
	StateClosed State = iota
	StateHalfOpen
	StateOpen
)

func stateOf(s gobreaker.State) State {
	switch s {
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	}
	return StateClosed
}

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	}
	return "closed"
}

// MarshalText implements encoding.TextMarshaler.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Counts are a breaker's counts: over the rolling window while closed,
// since the transition while half-open, zero while open. Requests includes
// requests still in flight.
type Counts struct {
	Requests             uint32 `json:"requests"`
	Successes            uint32 `json:"successes"`
	Failures             uint32 `json:"failures"`
	Exclusions           uint32 `json:"exclusions"`
	ConsecutiveSuccesses uint32 `json:"consecutive_successes"`
	ConsecutiveFailures  uint32 `json:"consecutive_failures"`
}

func countsOf(c gobreaker.Counts) Counts {
	return Counts{
		Requests:             c.Requests,
		Successes:            c.TotalSuccesses,
		Failures:             c.TotalFailures,
		Exclusions:           c.TotalExclusions,
		ConsecutiveSuccesses: c.ConsecutiveSuccesses,
		ConsecutiveFailures:  c.ConsecutiveFailures,
	}
}

// Status is one breaker's state for a status view.
type Status struct {
	// Name is Settings.Name.
	Name string `json:"name"`
	// Key is the breaker's key: "" for a single breaker, the host's
	// canonical name (host:port) for [Hosts]. It is "" for the overflow
	// entry too.
	Key string `json:"key"`
	// Overflow marks the entry that counts the requests that had no
	// breaker of their own and passed unguarded (see Settings.MaxKeys):
	// reported only while there are such requests. It never trips.
	Overflow bool   `json:"overflow,omitempty"`
	State    State  `json:"state"`
	Counts   Counts `json:"counts"`
	// OpenUntil is when an open breaker may let a request through again,
	// as of the report (for a host out until a probe passes, its next
	// probe at the earliest); zero unless open.
	OpenUntil time.Time `json:"open_until,omitzero"`

	// The host-health model's view, for [Hosts] only (see [HostHealth]).
	// HostState is the host's one state (serving, resting, warming, out or
	// trial); the fields above and below are its details.
	HostState pool.State `json:"host_state,omitempty"`
	// Share is the host's share of new requests, 0–1 (warming ramps it).
	Share float64 `json:"share,omitempty"`
	// Since is when the host left service (resting or out), until it is
	// back (a success, or its breaker closing); zero while it serves.
	Since time.Time `json:"since,omitzero"`
	// LastClass is the class of the host's last failure, while Since is
	// set.
	LastClass string `json:"last_class,omitempty"`
	// NextProbe is when the next probe is due; zero if none is waiting
	// (one may be in flight).
	NextProbe time.Time `json:"next_probe,omitzero"`
	// RestUntil is when a resting host's rest ends; zero unless resting.
	RestUntil time.Time `json:"rest_until,omitzero"`
}
