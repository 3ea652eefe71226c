package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

// headerSink is an upstream that keeps the trace headers it was sent.
type headerSink struct {
	mu      sync.Mutex
	parents []string
	states  []string
}

func (h *headerSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.parents = append(h.parents, r.Header.Get("Traceparent"))
	h.states = append(h.states, r.Header.Get("Tracestate"))
	h.mu.Unlock()
	_, _ = io.WriteString(w, "ok")
}

func (h *headerSink) got() ([]string, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.parents...), append([]string(nil), h.states...)
}

// serverSpan stands for otelhttp.NewHandler: a server span around h.
func serverSpan(tp trace.TracerProvider, h http.Handler) http.Handler {
	tr := tp.Tracer("test/otelhttp")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := tr.Start(r.Context(), "GET /", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

func attrMap(kvs []attribute.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

func traceparent(sc trace.SpanContext) string {
	flags := "00"
	if sc.IsSampled() {
		flags = "01"
	}
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + flags
}

// TestSpansPerAttempt: behind a server span (as under otelhttp), a request
// retried once gets one client span per attempt, both children of the
// server span, with the semantic conventions' attributes; the upstream
// receives the second attempt's span as its parent.
func TestSpansPerAttempt(t *testing.T) {
	r := newRig(t, sampling(sdktrace.AlwaysSample()))
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	sink := &headerSink{}
	ok := gatewaytest.NewHealthy(sink)
	defer ok.Close()
	st := r.stack(t, proxykit.Config{
		Upstreams: []*url.URL{mustURL(t, dead.URL), mustURL(t, ok.URL)},
		Policy:    1, // pool.RoundRobin: the dead upstream first
	})
	fr := front(t, serverSpan(r.tp, st))
	require.Equal(t, 200, get(t, fr.Client(), fr.URL+"/orders?id=7&token=abc&flag&empty=&sig=secret").StatusCode)

	spans := r.spans.Ended()
	require.Len(t, spans, 3, "the server span and one client span per attempt")
	server := spans[2]
	require.Equal(t, trace.SpanKindServer, server.SpanKind())
	for i, s := range spans[:2] {
		assert.Equal(t, trace.SpanKindClient, s.SpanKind(), "span %d", i)
		assert.Equal(t, "GET", s.Name())
		assert.Equal(t, server.SpanContext().SpanID(), s.Parent().SpanID(), "child of the server span")
		assert.Equal(t, server.SpanContext().TraceID(), s.SpanContext().TraceID())
		assert.Equal(t, ScopeName, s.InstrumentationScope().Name)
	}
	a1, a2 := attrMap(spans[0].Attributes()), attrMap(spans[1].Attributes())
	deadAddr, okAddr := hostPort(t, dead.Addr), hostPort(t, ok.Addr)
	assert.Equal(t, map[string]any{
		"http.request.method":   "GET",
		"server.address":        deadAddr[0].Value.AsString(),
		"server.port":           deadAddr[1].Value.AsInt64(),
		"url.full":              dead.URL + "/orders?id=REDACTED&token=REDACTED&flag&empty=&sig=REDACTED",
		"proxykit.attempt.role": "first",
		"error.type":            "refused",
	}, a1)
	assert.Equal(t, codes.Error, spans[0].Status().Code)
	assert.Contains(t, spans[0].Status().Description, "refused")
	assert.Equal(t, map[string]any{
		"http.request.method":       "GET",
		"server.address":            okAddr[0].Value.AsString(),
		"server.port":               okAddr[1].Value.AsInt64(),
		"url.full":                  ok.URL + "/orders?id=REDACTED&token=REDACTED&flag&empty=&sig=REDACTED",
		"proxykit.attempt.role":     "retry",
		"http.request.resend_count": int64(1),
		"http.response.status_code": int64(200),
	}, a2)
	assert.Equal(t, codes.Unset, spans[1].Status().Code)

	parents, _ := sink.got()
	assert.Equal(t, []string{traceparent(spans[1].SpanContext())}, parents,
		"W3C trace context upstream: the attempt's span is the upstream's parent")
}

// TestContinuesClientTrace: with no server span in the context, the
// attempt's span continues the trace the client sent (traceparent and
// tracestate), and the upstream gets it with the attempt's span as parent.
func TestContinuesClientTrace(t *testing.T) {
	r := newRig(t, sampling(sdktrace.ParentBased(sdktrace.NeverSample())), trusting)
	sink := &headerSink{}
	up := gatewaytest.NewHealthy(sink)
	defer up.Close()
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}})
	fr := front(t, st)

	const clientParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req, _ := http.NewRequest("GET", fr.URL+"/", nil)
	req.Header.Set("Traceparent", clientParent)
	req.Header.Set("Tracestate", "vendor=abc")
	res, err := fr.Client().Do(req)
	require.NoError(t, err)
	res.Body.Close()

	spans := r.spans.Ended()
	require.Len(t, spans, 1, "sampled: the client's flag, with a parent-based sampler")
	s := spans[0]
	assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.SpanContext().TraceID().String())
	assert.Equal(t, "00f067aa0ba902b7", s.Parent().SpanID().String())
	assert.True(t, s.Parent().IsRemote())
	parents, states := sink.got()
	assert.Equal(t, []string{traceparent(s.SpanContext())}, parents)
	assert.Equal(t, []string{"vendor=abc"}, states)
}

// trusting makes the rig trust every client's trace context.
func trusting(o *Options, _ *rig) { o.PublicEndpointFn = func(*http.Request) bool { return false } }

// TestClientCannotForceSampling: by default a client's trace context is
// not trusted: under ParentBased(TraceIDRatioBased(0)) its sampled flag
// exports nothing, and the upstream gets a new trace; with a sampler that
// samples, the attempt's span is a new root linked to the client's span.
// PublicEndpointFn decides per request.
func TestClientCannotForceSampling(t *testing.T) {
	const clientParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	send := func(t *testing.T, r *rig, remote string) []string {
		sink := &headerSink{}
		up := gatewaytest.NewHealthy(sink)
		t.Cleanup(up.Close)
		st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}})
		fr := front(t, st)
		req, _ := http.NewRequest("GET", fr.URL+"/", nil)
		req.Header.Set("Traceparent", clientParent)
		req.Header.Set("X-From", remote)
		res, err := fr.Client().Do(req)
		require.NoError(t, err)
		res.Body.Close()
		parents, _ := sink.got()
		return parents
	}

	r := newRig(t, sampling(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))))
	parents := send(t, r, "internet")
	assert.Empty(t, r.spans.Ended(), "the client's sampled flag forced no export")
	require.Len(t, parents, 1)
	assert.NotContains(t, parents[0], "4bf92f3577b34da6a3ce929d0e0e4736", "a trace of the proxy's own")
	assert.True(t, strings.HasSuffix(parents[0], "-00"), "not sampled: %q", parents[0])

	r = newRig(t, sampling(sdktrace.AlwaysSample()))
	send(t, r, "internet")
	spans := r.spans.Ended()
	require.Len(t, spans, 1)
	assert.False(t, spans[0].Parent().IsValid(), "a new root")
	assert.NotEqual(t, "4bf92f3577b34da6a3ce929d0e0e4736", spans[0].SpanContext().TraceID().String())
	require.Len(t, spans[0].Links(), 1)
	assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", spans[0].Links()[0].SpanContext.TraceID().String(), "linked to the client's span")
	assert.Equal(t, "00f067aa0ba902b7", spans[0].Links()[0].SpanContext.SpanID().String())

	r = newRig(t, sampling(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))), func(o *Options, _ *rig) {
		o.PublicEndpointFn = func(req *http.Request) bool { return req.Header.Get("X-From") != "office" }
	})
	send(t, r, "internet")
	assert.Empty(t, r.spans.Ended())
	parents = send(t, r, "office")
	spans = r.spans.Ended()
	require.Len(t, spans, 1, "a trusted client's sampled flag is honoured")
	assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", spans[0].SpanContext().TraceID().String())
	assert.Equal(t, []string{traceparent(spans[0].SpanContext())}, parents)
}

// TestURLQueryValues: url.full shows the values of the parameters
// Options.URLQueryValues lists, except signed-URL credentials.
func TestURLQueryValues(t *testing.T) {
	r := newRig(t, sampling(sdktrace.AlwaysSample()), func(o *Options, _ *rig) {
		o.URLQueryValues = []string{"page", "sig", "a b"}
	})
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}})
	fr := front(t, st)
	get(t, fr.Client(), fr.URL+"/list?page=2&token=abc&sig=s3cret&a+b=c&page=3")
	spans := r.spans.Ended()
	require.Len(t, spans, 1)
	assert.Equal(t, up.URL+"/list?page=2&token=REDACTED&sig=REDACTED&a+b=c&page=3", attrMap(spans[0].Attributes())["url.full"])
}

// TestUnsampledStillPropagates: a trace that is not sampled records no
// span, yet the upstream gets a valid traceparent (sampled flag off), a
// new trace when the client sent none, the client's trace otherwise.
func TestUnsampledStillPropagates(t *testing.T) {
	r := newRig(t, sampling(sdktrace.ParentBased(sdktrace.NeverSample())), trusting)
	sink := &headerSink{}
	up := gatewaytest.NewHealthy(sink)
	defer up.Close()
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}})
	fr := front(t, st)

	get(t, fr.Client(), fr.URL+"/")
	req, _ := http.NewRequest("GET", fr.URL+"/", nil)
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	res, err := fr.Client().Do(req)
	require.NoError(t, err)
	res.Body.Close()

	assert.Empty(t, r.spans.Ended())
	parents, states := sink.got()
	require.Len(t, parents, 2)
	for _, p := range parents {
		sc := propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier{"Traceparent": {p}})
		assert.True(t, trace.SpanContextFromContext(sc).IsValid(), "valid traceparent %q", p)
		assert.True(t, strings.HasSuffix(p, "-00"), "not sampled: %q", p)
	}
	assert.NotContains(t, parents[0], "00f067aa0ba902b7")
	assert.Contains(t, parents[1], "-4bf92f3577b34da6a3ce929d0e0e4736-", "the client's trace")
	assert.NotContains(t, parents[1], "00f067aa0ba902b7", "a new span ID: the attempt's")
	assert.Equal(t, []string{"", ""}, states)
}

// TestBreakerOpenEvent: an attempt a breaker refuses gets a span with
// error.type=open and a "breaker open" event.
func TestBreakerOpenEvent(t *testing.T) {
	r := newRig(t, sampling(sdktrace.AlwaysSample()))
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	target := mustURL(t, dead.URL)
	st := r.stack(t, proxykit.Config{
		Proxy:   &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }},
		Retry:   retry.Options{Attempts: 1},
		Breaker: breaker.Settings{ConsecutiveFailures: 1, Timeout: time.Minute},
	})
	fr := front(t, serverSpan(r.tp, st))
	untilStatus(t, fr.Client(), fr.URL+"/", 503)

	var open sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient && attrMap(s.Attributes())["error.type"] == "open" {
			open = s
		}
	}
	require.NotNil(t, open, "a span for the refused attempt")
	require.Len(t, open.Events(), 1)
	ev := open.Events()[0]
	assert.Equal(t, "breaker open", ev.Name)
	ra, ok := attrMap(ev.Attributes)["proxykit.retry_after"].(float64)
	require.True(t, ok)
	assert.Positive(t, ra, "the breaker's time left open")
	assert.LessOrEqual(t, ra, 60.0)
}

// TestNoUpstreamEvent: a request the pool has no upstream for gets no
// client span, and a "no upstream" event on the server span.
func TestNoUpstreamEvent(t *testing.T) {
	r := newRig(t, sampling(sdktrace.AlwaysSample()))
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	st := r.stack(t, proxykit.Config{
		Upstreams: []*url.URL{mustURL(t, dead.URL)},
		Retry:     retry.Options{Attempts: 1},
		Breaker:   breaker.Settings{ConsecutiveFailures: 1, Timeout: time.Minute},
	})
	fr := front(t, serverSpan(r.tp, st))
	untilStatus(t, fr.Client(), fr.URL+"/", 503)

	spans := r.spans.Ended()
	spans = spans[len(spans)-1:] // the last request's
	require.Equal(t, trace.SpanKindServer, spans[0].SpanKind(), "the server span only")
	require.Equal(t, trace.SpanKindServer, r.spans.Ended()[len(r.spans.Ended())-2].SpanKind(), "no client span for the last request")
	require.Len(t, spans[0].Events(), 1)
	assert.Equal(t, "no upstream", spans[0].Events()[0].Name)
	assert.Equal(t, int64(1), attrMap(spans[0].Events()[0].Attributes)["proxykit.attempt"])
}

// TestSpanEndsWithBody: a sampled attempt's span ends when the response
// body is done, and a body that breaks mid-copy marks it failed.
func TestSpanEndsWithBody(t *testing.T) {
	r := newRig(t, sampling(sdktrace.AlwaysSample()))
	up := gatewaytest.NewServer(gatewaytest.CloseMidBody)
	defer up.Close()
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}, Retry: retry.Options{Attempts: 1}})
	fr := front(t, st)
	res, err := fr.Client().Get(fr.URL + "/")
	if err == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	require.Eventually(t, func() bool { return len(r.spans.Ended()) == 1 }, 5*time.Second, 5*time.Millisecond)
	s := r.spans.Ended()[0]
	a := attrMap(s.Attributes())
	assert.Equal(t, int64(200), a["http.response.status_code"])
	assert.Equal(t, "reset", a["error.type"], "the body broke")
	assert.Equal(t, codes.Error, s.Status().Code)
}

// TestStaleConnectionResendStillStopped: the telemetry transport sits
// outside the gateway's Transport, which therefore still sees net/http's
// *http.Transport and stops its automatic resend: the upstream reads the
// request once, and the attempt is stale_connection.
func TestStaleConnectionResendStillStopped(t *testing.T) {
	r := newRig(t, sampling(sdktrace.AlwaysSample()))
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	st := r.stack(t, proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}, Retry: retry.Options{Attempts: 1}})
	fr := front(t, st)
	c := &http.Client{}
	defer c.CloseIdleConnections()
	require.Equal(t, 200, get(t, c, fr.URL+"/").StatusCode)
	require.NoError(t, up.SetFault(gatewaytest.CloseAfterRequest))
	assert.Equal(t, 502, get(t, c, fr.URL+"/").StatusCode)
	assert.EqualValues(t, 2, up.Requests(), "no resend behind the retry policy")
	spans := r.spans.Ended()
	require.Len(t, spans, 2)
	assert.Equal(t, "stale_connection", attrMap(spans[1].Attributes())["error.type"])
}
