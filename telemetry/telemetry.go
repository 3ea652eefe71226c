package telemetry

import (
	"context"
	"errors"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/retry"
)

// ScopeName is the instrumentation scope of proxykit's meter and tracer.
const ScopeName = "github.com/proxykit/proxykit/telemetry"

// DefaultMaxUpstreams is the default of Options.MaxUpstreams.
const DefaultMaxUpstreams = 100

// durationBuckets are the semantic conventions' advised bucket boundaries
// for http.server.request.duration and http.client.request.duration, in
// seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// Options configures a [Telemetry]. The zero value is ready: the global
// providers and W3C trace context.
type Options struct {
	// MeterProvider provides the meter. Nil means otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// TracerProvider provides the tracer. Nil means
	// otel.GetTracerProvider(). A noop.TracerProvider turns tracing off:
	// no spans, and the client's trace context is forwarded untouched.
	TracerProvider trace.TracerProvider
	// Propagator writes the trace context into each attempt's request and
	// reads the client's when no span is in the request's context. Nil
	// means the global one (otel.SetTextMapPropagator) if one is set, else
	// W3C trace context (propagation.TraceContext), the fastest.
	Propagator propagation.TextMapPropagator

	// PublicEndpointFn reports whether a request comes from a client whose
	// trace context is not to be trusted, as otelhttp's option of the same
	// name does. For such a request, the trace context the client sent
	// (when no server span is in the request's context) does not become
	// the parent of the attempts' spans: they start a new trace, sampled
	// by the TracerProvider's sampler as any root is, and carry a link to
	// the client's span. So a client's sampled flag cannot force its
	// requests to be traced and exported, and a made-up trace ID does not
	// join the service's traces. For a request it returns false for, the
	// attempts continue the client's trace, honouring its sampled flag
	// (with a parent-based sampler). It is called with each attempt's
	// outbound request, which carries the client's RemoteAddr and headers.
	//
	// Default nil: every request is public. This is stricter than
	// otelhttp's default (trusted), because a proxy is usually the first
	// hop from clients it does not control; return false for callers that
	// are the service's own (by network, or by a header a trusted load
	// balancer sets), or run otelhttp.NewHandler outside the stack, whose
	// server span is then the parent and whose own option applies.
	PublicEndpointFn func(*http.Request) bool

	// URLQueryValues lists the query parameters whose values url.full
	// shows. The values of every other parameter are replaced by
	// "REDACTED" (their names are kept), since query strings carry
	// tokens, keys and personal data more often than instrumentation can
	// tell; the semantic conventions ask for the credentials of signed
	// URLs (AWSAccessKeyId, Signature, sig, X-Goog-Signature) to be
	// redacted at least, and those are redacted even when listed here.
	// Default nil: every value is redacted.
	URLQueryValues []string

	// OmitServerDuration leaves http.server.request.duration out, for a
	// stack behind otelhttp.NewHandler, which records it too (without
	// error.type). Everything else is recorded as usual.
	OmitServerDuration bool

	// MaxUpstreams caps the distinct upstreams that get their own
	// server.address and server.port on metrics; further ones are
	// recorded as server.address="_OTHER". A stack's pool targets are
	// admitted first. It caps the distinct values of
	// proxykit.upstream.source the same way (sources beyond it are
	// "_OTHER"). 0 means DefaultMaxUpstreams.
	MaxUpstreams int
}

// Telemetry records OpenTelemetry metrics and traces for a proxykit stack
// from its hooks. Create it with [New]; wire it with [Telemetry.NewStack],
// or with [Telemetry.Apply] before proxykit.New and [Telemetry.Instrument]
// after. It is safe for concurrent use.
type Telemetry struct {
	tracer  trace.Tracer
	tracing bool
	prop    propagation.TextMapPropagator
	w3c     bool     // prop is propagation.TraceContext: the fast path
	fields  []string // prop's header keys, canonical

	serverDuration metric.Float64Histogram // nil when omitted
	clientDuration metric.Float64Histogram
	retries        metric.Int64Counter
	transitions    metric.Int64Counter
	withoutUp      metric.Int64Counter
	hostState      metric.Int64ObservableGauge
	active         metric.Int64ObservableUpDownCounter
	denials        metric.Int64ObservableCounter
	changes        metric.Int64Counter
	hosts          metric.Int64ObservableGauge
	meter          metric.Meter

	epoch   time.Time // for since
	ups     *upstreams
	sources *sourceNames // values of proxykit.upstream.source
	server  optCache     // http.server.request.duration
	client  optCache     // http.client.request.duration
	misc    optCache     // the counters

	clientStart []trace.SpanStartOption
	public      func(*http.Request) bool // nil: every request is public
	queryShown  map[string]bool          // url.full keeps these parameters' values

	// hedged reports whether an attempt's context marks a hedge:
	// retry.IsHedge (tests replace it).
	hedged func(context.Context) bool
}

// New creates the instruments. It fails only if the MeterProvider refuses
// one.
func New(o Options) (*Telemetry, error) {
	mp := o.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	prop := o.Propagator
	if prop == nil {
		prop = otel.GetTextMapPropagator()
		if len(prop.Fields()) == 0 {
			prop = propagation.TraceContext{}
		}
	}
	limit := o.MaxUpstreams
	if limit <= 0 {
		limit = DefaultMaxUpstreams
	}
	t := &Telemetry{
		epoch:       time.Now(),
		prop:        prop,
		ups:         newUpstreams(limit),
		sources:     newSourceNames(limit),
		clientStart: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)},
		hedged:      retry.IsHedge,
		public:      o.PublicEndpointFn,
	}
	for _, k := range o.URLQueryValues {
		if !slices.Contains(sensitiveQuery[:], k) {
			if t.queryShown == nil {
				t.queryShown = make(map[string]bool, len(o.URLQueryValues))
			}
			t.queryShown[k] = true
		}
	}
	_, t.w3c = prop.(propagation.TraceContext)
	for _, f := range prop.Fields() {
		t.fields = append(t.fields, textproto.CanonicalMIMEHeaderKey(f))
	}
	if _, off := tp.(tracenoop.TracerProvider); !off {
		t.tracing = true
		t.tracer = tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL))
	}

	m := mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	t.meter = m
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	if !o.OmitServerDuration {
		t.serverDuration, err = m.Float64Histogram("http.server.request.duration",
			metric.WithUnit("s"), metric.WithDescription("Duration of HTTP server requests."),
			metric.WithExplicitBucketBoundaries(durationBuckets...))
		check(err)
	}
	t.clientDuration, err = m.Float64Histogram("http.client.request.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of HTTP client requests: one per upstream attempt, to the response header."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	t.retries, err = m.Int64Counter("proxykit.retries",
		metric.WithUnit("{retry}"), metric.WithDescription("Retries decided, by the failure class (error.type) and upstream of the attempt that failed."))
	check(err)
	t.transitions, err = m.Int64Counter("proxykit.breaker.transitions",
		metric.WithUnit("{transition}"), metric.WithDescription("Circuit breaker state changes, per upstream host."))
	check(err)
	t.withoutUp, err = m.Int64Counter("proxykit.requests.without_upstream",
		metric.WithUnit("{request}"), metric.WithDescription("Requests answered without reaching an upstream: no_upstream (none available) or open (its breaker is open)."))
	check(err)
	t.hostState, err = m.Int64ObservableGauge("proxykit.upstream.state",
		metric.WithUnit("{state}"), metric.WithDescription("1 for each upstream's current state (serving, warming, resting, trial, out, draining, drained), 0 for the others."))
	check(err)
	t.active, err = m.Int64ObservableUpDownCounter("http.client.active_requests",
		metric.WithUnit("{request}"), metric.WithDescription("Number of active HTTP requests, per upstream."))
	check(err)
	t.denials, err = m.Int64ObservableCounter("proxykit.retry.budget.denials",
		metric.WithUnit("{retry}"), metric.WithDescription("Retries the retry budget refused."))
	check(err)
	t.changes, err = m.Int64Counter("proxykit.upstream.changes",
		metric.WithUnit("{host}"), metric.WithDescription("Hosts that joined (added) or left (removed) the pool's set of upstreams, by source."))
	check(err)
	t.hosts, err = m.Int64ObservableGauge("proxykit.upstream.hosts",
		metric.WithUnit("{host}"), metric.WithDescription("Hosts in the pool's set of upstreams, by source."))
	check(err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

// NewStack is proxykit.New with telemetry: [Telemetry.Apply] on cfg, then
// proxykit.New, then [Telemetry.Instrument]. The observers it registers
// live as long as the MeterProvider.
func (t *Telemetry) NewStack(cfg proxykit.Config) (*proxykit.Stack, error) {
	t.Apply(&cfg)
	st, err := proxykit.New(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := t.Instrument(st); err != nil {
		return nil, err
	}
	return st, nil
}

// Apply sets cfg's hooks to record telemetry, keeping any hook already
// set (it runs after ours): OnRequest (http.server.request.duration,
// proxykit.requests.without_upstream), Retry.OnRetry (proxykit.retries),
// Breaker.OnStateChange (proxykit.breaker.transitions) and
// OnUpstreamChange (proxykit.upstream.changes). Apply a Config once: twice
// counts twice.
func (t *Telemetry) Apply(cfg *proxykit.Config) {
	if user := cfg.OnRequest; user != nil {
		cfg.OnRequest = func(r *http.Request, status int, f *gateway.Failure, elapsed time.Duration) {
			t.ObserveRequest(r, status, f, elapsed)
			user(r, status, f, elapsed)
		}
	} else {
		cfg.OnRequest = t.ObserveRequest
	}
	if user := cfg.Retry.OnRetry; user != nil {
		cfg.Retry.OnRetry = func(attempt int, f *gateway.Failure, delay time.Duration) {
			t.ObserveRetry(attempt, f, delay)
			user(attempt, f, delay)
		}
	} else {
		cfg.Retry.OnRetry = t.ObserveRetry
	}
	if user := cfg.Breaker.OnStateChange; user != nil {
		cfg.Breaker.OnStateChange = func(name, key string, from, to breaker.State) {
			t.ObserveBreaker(name, key, from, to)
			user(name, key, from, to)
		}
	} else {
		cfg.Breaker.OnStateChange = t.ObserveBreaker
	}
	t.applyUpstreamChange(cfg)
}

// ObserveRequest records one finished request: its signature is
// proxykit.Config.OnRequest's (status.Monitor.OnRequest's), which
// [Telemetry.Apply] sets.
//
// http.server.request.duration gets http.request.method (_OTHER for
// methods outside the semantic conventions' list), url.scheme,
// http.response.status_code (absent when the response was aborted
// mid-body; 499 for a client that went away) and error.type: the failure
// class, or for a 5xx that is no gateway failure the status code.
func (t *Telemetry) ObserveRequest(r *http.Request, status int, f *gateway.Failure, elapsed time.Duration) {
	kind, class := uint64(errNone), gateway.Class(0)
	switch {
	case f != nil:
		kind, class = errClass, f.Class
	case status >= 500:
		kind = errStatus
	}
	if f != nil && (f.Class == gateway.ClassNoUpstream || f.Class == gateway.ClassOpen) {
		o := t.misc.get(miscWithoutUpstream|uint64(f.Class)<<8, func() *opts {
			return newOpts(semconv.ErrorTypeKey.String(f.Class.String()))
		})
		t.withoutUp.Add(r.Context(), 1, o.add...)
	}
	if t.serverDuration == nil {
		return
	}
	method := methodIndex(r.Method)
	tls := uint64(0)
	if r.TLS != nil {
		tls = 1
	}
	st := uint64(status) & 0x3ff
	key := method | st<<4 | kind<<14 | uint64(class&0x1f)<<16 | tls<<21
	o := t.server.get(key, func() *opts {
		kvs := []attribute.KeyValue{semconv.HTTPRequestMethodKey.String(methods[method]), semconv.URLSchemeKey.String("http")}
		if tls == 1 {
			kvs[1] = semconv.URLSchemeKey.String("https")
		}
		if st != 0 {
			kvs = append(kvs, semconv.HTTPResponseStatusCodeKey.Int(int(st)))
		}
		if kv, ok := errorType(kind, class, int(st)); ok {
			kvs = append(kvs, kv)
		}
		return newOpts(kvs...)
	})
	ctx := context.Background()
	if t.tracing {
		ctx = r.Context() // exemplars: the server span's, when sampled
	}
	t.serverDuration.Record(ctx, elapsed.Seconds(), o.rec...)
}

// since returns the time since t was made, from the monotonic clock.
func (t *Telemetry) since() time.Duration { return time.Since(t.epoch) }

// Keys of the misc cache: the instrument in the low byte.
const (
	miscWithoutUpstream = iota + 1
	miscRetry
	miscTransition
)

// ObserveRetry counts one retry in proxykit.retries, with the class
// (error.type) and upstream of the attempt that failed. Its signature is
// retry.Options.OnRetry's, which [Telemetry.Apply] sets.
func (t *Telemetry) ObserveRetry(attempt int, f *gateway.Failure, delay time.Duration) {
	if f == nil {
		return
	}
	up := t.ups.named(f.Upstream)
	idx := uint64(0)
	if up != nil {
		idx = up.idx
	}
	o := t.misc.get(miscRetry|uint64(f.Class&0x1f)<<8|idx<<16, func() *opts {
		kvs := []attribute.KeyValue{semconv.ErrorTypeKey.String(f.Class.String())}
		if up != nil {
			kvs = append(kvs, up.kvs...)
		}
		return newOpts(kvs...)
	})
	t.retries.Add(context.Background(), 1, o.add...)
}

// ObserveBreaker counts one breaker transition in
// proxykit.breaker.transitions, with the new and previous states and, for
// a per-host breaker (key host:port), server.address and server.port. Its
// signature is breaker.Settings.OnStateChange's, which [Telemetry.Apply]
// sets. Keys that are not host:port (a route breaker's, from breaker.New)
// are left out of the attributes: a key set that evicts would grow the
// series without bound.
func (t *Telemetry) ObserveBreaker(_, key string, from, to breaker.State) {
	var up *upstream
	if isHostPort(key) {
		up = t.ups.named(key)
	}
	idx := uint64(0)
	if up != nil {
		idx = up.idx
	}
	o := t.misc.get(miscTransition|uint64(from&0xf)<<8|uint64(to&0xf)<<12|idx<<16, func() *opts {
		kvs := []attribute.KeyValue{BreakerStateKey.String(breakerState(to)), BreakerPreviousStateKey.String(breakerState(from))}
		if up != nil {
			kvs = append(kvs, up.kvs...)
		}
		return newOpts(kvs...)
	})
	t.transitions.Add(context.Background(), 1, o.add...)
}

// breakerState names a breaker state as an attribute value.
func breakerState(s breaker.State) string {
	switch s {
	case breaker.StateOpen:
		return "open"
	case breaker.StateHalfOpen:
		return "half_open"
	}
	return "closed"
}

// isHostPort reports whether key looks like a canonical upstream name.
func isHostPort(key string) bool {
	i := len(key) - 1
	for i >= 0 && key[i] >= '0' && key[i] <= '9' {
		i--
	}
	if i <= 0 || i == len(key)-1 || key[i] != ':' {
		return false
	}
	_, err := strconv.Atoi(key[i+1:])
	return err == nil
}
