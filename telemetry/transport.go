package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/retry"
)

// Transport returns a RoundTripper that records each upstream attempt
// through next: http.client.request.duration, and a client span that
// carries the trace context upstream. [Telemetry.Instrument] puts it
// outermost in a stack's proxy transport, where it sees every attempt
// already classified (breaker fast-fails included); wired by hand it goes
// in the same place: the ReverseProxy's Transport, around the pool's and
// the breakers'.
//
// It writes the trace context into the outbound request's header, which
// is the ReverseProxy's own copy, made for each attempt: use it only as
// (or under) a ReverseProxy's Transport.
//
// An attempt is measured to its response header; its span ends when the
// response body is closed or read to its end (at once for an error, or a
// 101 Switching Protocols, whose body is the connection). A request the
// pool found no upstream for (an outbound URL without a host) is no
// attempt: it gets no span and no client measurement, and a "no upstream"
// event on the request's span.
func (t *Telemetry) Transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	if tt, ok := next.(*transport); ok && tt.t == t {
		return next // instrumented already
	}
	return &transport{t: t, next: next}
}

type transport struct {
	t    *Telemetry
	next http.RoundTripper
}

// CloseIdleConnections closes next's idle connections, if it can.
func (tr *transport) CloseIdleConnections() {
	if c, ok := tr.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// RoundTrip implements http.RoundTripper.
func (tr *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	t := tr.t
	ctx := req.Context()
	if req.URL == nil || req.URL.Host == "" {
		res, err := tr.next.RoundTrip(req)
		if err != nil {
			t.noUpstream(ctx, err)
		}
		return res, err
	}
	up := t.ups.forURL(req.URL)
	method := methodIndex(req.Method)
	start := t.since() // one clock read, where time.Now takes two

	var span trace.Span
	sctx := ctx
	mctx := context.Background() // for the measurement: exemplars come from sampled spans only
	if t.tracing {
		parent, start := ctx, t.clientStart
		if !trace.SpanContextFromContext(ctx).IsValid() && t.carriesContext(req.Header) {
			// No server span (no otelhttp in front): the client's trace
			// context, which ReverseProxy forwards, is continued if the
			// client is trusted, else only linked from a new trace.
			remote := t.prop.Extract(ctx, propagation.HeaderCarrier(req.Header))
			if t.public == nil || t.public(req) {
				start = []trace.SpanStartOption{start[0], trace.WithNewRoot(), trace.WithLinks(trace.LinkFromContext(remote))}
			} else {
				parent = remote
			}
		}
		name := methods[method]
		if method == 0 {
			name = "HTTP"
		}
		sctx, span = t.tracer.Start(parent, name, start...)
		if span.IsRecording() {
			kvs := make([]attribute.KeyValue, 0, 8)
			kvs = append(kvs, semconv.HTTPRequestMethodKey.String(methods[method]))
			if method == 0 {
				kvs = append(kvs, semconv.HTTPRequestMethodOriginalKey.String(req.Method))
			}
			kvs = append(kvs, hostPortAttrs(gateway.UpstreamName(req.URL))...)
			kvs = append(kvs, semconv.URLFullKey.String(fullURL(req.URL, t.queryShown)))
			span.SetAttributes(kvs...)
		}
		sc := span.SpanContext()
		t.inject(sctx, sc, req.Header)
		if sc.IsSampled() {
			mctx = sctx
		}
	}

	res, err := tr.next.RoundTrip(req)
	elapsed := t.since() - start

	status := 0
	var f *gateway.Failure
	if err != nil {
		f = gateway.ClassifyError(err, gateway.UpstreamName(req.URL), true)
	} else {
		status = res.StatusCode
	}
	attempt := attemptOf(ctx)
	rl := roleFirst
	switch {
	case t.hedged != nil && t.hedged(ctx):
		rl = roleHedge
	case attempt > 1:
		rl = roleRetry
	}
	kind, class := uint64(errNone), gateway.Class(0)
	switch {
	case f != nil:
		kind, class = errClass, f.Class
	case gateway.IsFailureStatus(status):
		kind, class = errClass, gateway.ClassUpstreamStatus
	case status >= 400:
		kind = errStatus
	}

	if up != nil {
		st := uint64(status) & 0x3ff
		key := up.idx | method<<16 | st<<20 | kind<<30 | uint64(class&0x1f)<<32 | uint64(rl)<<37
		o := t.client.get(key, func() *opts {
			kvs := make([]attribute.KeyValue, 0, 8)
			kvs = append(kvs, semconv.HTTPRequestMethodKey.String(methods[method]), AttemptRoleKey.String(roleNames[rl]))
			kvs = append(kvs, up.kvs...)
			if st != 0 {
				kvs = append(kvs, semconv.HTTPResponseStatusCodeKey.Int(int(st)))
			}
			if kv, ok := errorType(kind, class, int(st)); ok {
				kvs = append(kvs, kv)
			}
			return newOpts(kvs...)
		})
		t.clientDuration.Record(mctx, elapsed.Seconds(), o.rec...)
	}

	if span == nil {
		return res, err
	}
	if !span.IsRecording() {
		span.End()
		return res, err
	}
	kvs := make([]attribute.KeyValue, 0, 4)
	kvs = append(kvs, AttemptRoleKey.String(roleNames[rl]))
	if attempt > 1 {
		kvs = append(kvs, semconv.HTTPRequestResendCountKey.Int(attempt-1))
	}
	if status != 0 {
		kvs = append(kvs, semconv.HTTPResponseStatusCodeKey.Int(status))
	}
	if errors.Is(context.Cause(ctx), retry.ErrHedgeLost) {
		// This attempt lost a hedged race and was cancelled by the retry
		// layer: not an error, whatever its transport returned.
		span.AddEvent("hedge lost")
	} else if kv, ok := errorType(kind, class, status); ok {
		kvs = append(kvs, kv)
		desc := ""
		if f != nil {
			desc = f.Error()
		}
		span.SetStatus(codes.Error, desc)
	}
	span.SetAttributes(kvs...)
	if f != nil && f.Class == gateway.ClassOpen {
		span.AddEvent("breaker open", trace.WithAttributes(RetryAfterKey.Float64(f.RetryAfter.Seconds())))
	}
	if res == nil || status == http.StatusSwitchingProtocols || res.Body == nil || res.Body == http.NoBody {
		span.End()
		return res, err
	}
	res.Body = &spanBody{rc: res.Body, span: span}
	return res, err
}

// attemptOf returns the number of the attempt that just ran, from 1: the
// entries of the request's trail (the pool records each pick, the
// gateway's Transport each send), at least 1.
func attemptOf(ctx context.Context) int {
	return max(1, gateway.TrailFrom(ctx).Len())
}

// noUpstream marks, on the request's span, an attempt that found no
// upstream.
func (t *Telemetry) noUpstream(ctx context.Context, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	var f *gateway.Failure
	if !errors.As(err, &f) || f.Class != gateway.ClassNoUpstream {
		return
	}
	span.AddEvent("no upstream", trace.WithAttributes(
		AttemptKey.Int(gateway.TrailFrom(ctx).Len()+1),
		RetryAfterKey.Float64(f.RetryAfter.Seconds())))
}

// spanBody ends an attempt's span when its response body is done.
type spanBody struct {
	rc    io.ReadCloser
	span  trace.Span
	ended atomic.Bool
}

func (b *spanBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		b.end(err)
	}
	return n, err
}

func (b *spanBody) Close() error {
	err := b.rc.Close()
	b.end(nil)
	return err
}

// end ends the span once; a read error other than io.EOF marks it failed:
// the body broke mid-response.
func (b *spanBody) end(err error) {
	if !b.ended.CompareAndSwap(false, true) {
		return
	}
	if err != nil && err != io.EOF {
		c := gateway.ClassifyError(err, "", true).Class
		b.span.SetAttributes(semconv.ErrorTypeKey.String(c.String()))
		b.span.SetStatus(codes.Error, "response body: "+err.Error())
	}
	b.span.End()
}
