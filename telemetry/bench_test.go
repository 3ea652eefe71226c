package telemetry

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// discardWriter is a reusable ResponseWriter, so that a recorder's own
// allocations do not blur the comparison.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

var quiet = slog.New(slog.DiscardHandler)

// discardExporter is a span exporter that drops what it is given: the
// cost of sampled traces up to the export, without an exporter's own.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkTelemetry measures what telemetry adds to the recommended stack
// (proxykit.New, the in-memory upstream of the root BenchmarkStack) per
// request on the happy path, with every setup in the same run:
//
//   - off: proxykit.New alone;
//
//   - metrics: an SDK MeterProvider (sdk/metric) with a ManualReader,
//     tracing off (trace/noop);
//
//   - metrics+unsampled: the same, and an SDK TracerProvider (sdk/trace)
//     whose sampler drops every trace (ParentBased(NeverSample)), with no
//     parent span: spans are started, not recorded, and the trace context
//     is still sent upstream. This is the setup of the budget
//     (≤ +0.5 µs, ≤ +3 allocations over off);
//
//   - metrics+sampled: every trace sampled (AlwaysSample) through a
//     BatchSpanProcessor into an exporter that drops the spans;
//
//   - metrics+sampled-otelhttp-parent: as sampled, under a server span
//     already in the request's context, as behind otelhttp.
//
//     go test -run '^$' -bench BenchmarkTelemetry -benchmem -count 6 ./telemetry/
func BenchmarkTelemetry(b *testing.B) {
	up := gatewaytest.InMemory{Body: "ok\n"}
	u, _ := url.Parse("http://upstream.test")
	cfg := proxykit.Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: up}

	type setup struct {
		name    string
		handler func(b *testing.B) http.Handler
		ctx     func(b *testing.B) context.Context
	}
	withTelemetry := func(tp trace.TracerProvider) func(b *testing.B) http.Handler {
		return func(b *testing.B) http.Handler {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
			tel, err := New(Options{MeterProvider: mp, TracerProvider: tp})
			if err != nil {
				b.Fatal(err)
			}
			st, err := tel.NewStack(cfg)
			if err != nil {
				b.Fatal(err)
			}
			return st
		}
	}
	sampled := func(b *testing.B) *sdktrace.TracerProvider {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithBatcher(discardExporter{}))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return tp
	}
	background := func(*testing.B) context.Context { return context.Background() }
	setups := []setup{
		{"off", func(b *testing.B) http.Handler {
			st, err := proxykit.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			return st
		}, background},
		{"metrics", withTelemetry(tracenoop.NewTracerProvider()), background},
		{"metrics+unsampled", func(b *testing.B) http.Handler {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			return withTelemetry(tp)(b)
		}, background},
		{"metrics+sampled", func(b *testing.B) http.Handler { return withTelemetry(sampled(b))(b) }, background},
	}
	for _, s := range setups {
		b.Run(s.name, func(b *testing.B) {
			h := s.handler(b)
			w := &discardWriter{h: http.Header{}}
			req := httptest.NewRequest("GET", "http://gateway.test/path", nil).WithContext(s.ctx(b))
			req.Header.Set("X-Request-Id", "bench-request-1")
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
				if w.status != 0 && w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}

// okTransport answers 200 with no body and no work: what remains is the
// telemetry transport's own cost.
type okTransport struct{ res http.Response }

func (t *okTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := t.res
	return &r, nil
}

// BenchmarkHooks measures telemetry's own work per request, apart from
// the stack: the attempt through Transport (over a RoundTripper that does
// nothing) and the request through ObserveRequest, with the SDK setups of
// BenchmarkTelemetry.
//
//	go test -run '^$' -bench BenchmarkHooks -benchmem ./telemetry/
func BenchmarkHooks(b *testing.B) {
	for _, c := range []struct {
		name string
		tp   func(b *testing.B) trace.TracerProvider
	}{
		{"metrics", func(*testing.B) trace.TracerProvider { return tracenoop.NewTracerProvider() }},
		{"metrics+unsampled", func(b *testing.B) trace.TracerProvider {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			return tp
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
			tel, err := New(Options{MeterProvider: mp, TracerProvider: c.tp(b)})
			if err != nil {
				b.Fatal(err)
			}
			rt := tel.Transport(&okTransport{res: http.Response{StatusCode: 200, Body: http.NoBody}})
			in := httptest.NewRequest("GET", "http://gateway.test/path", nil)
			out := in.Clone(in.Context())
			out.URL, _ = url.Parse("http://upstream.test/path")
			b.ReportAllocs()
			for b.Loop() {
				clear(out.Header)
				if _, err := rt.RoundTrip(out); err != nil {
					b.Fatal(err)
				}
				tel.ObserveRequest(in, 200, nil, time.Millisecond)
			}
		})
	}
}

// BenchmarkTelemetryPaired is BenchmarkTelemetry's comparison made robust
// to a busy machine: the stack without telemetry and with it serve
// alternating rounds of requests in the same process, each round measured
// in the process's CPU time (which other processes do not add to), and
// each reports its cheapest round. It reports off-ns/op, on-ns/op,
// added-ns/op and added-allocs/op for each telemetry setup of
// BenchmarkTelemetry (CPU ns: on an idle machine they match wall ns).
//
//	go test -run '^$' -bench BenchmarkTelemetryPaired -benchtime 300x ./telemetry/
//
// (each of the -benchtime iterations is one pair of rounds of 2,000
// requests: short rounds, many of them, so that some fall in quiet spells.)
func BenchmarkTelemetryPaired(b *testing.B) {
	up := gatewaytest.InMemory{Body: "ok\n"}
	u, _ := url.Parse("http://upstream.test")
	cfg := proxykit.Config{Upstreams: []*url.URL{u}, Logger: quiet, Transport: up}
	off, err := proxykit.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer off.Close()
	for _, c := range []struct {
		name string
		tp   func() (trace.TracerProvider, func())
	}{
		{"metrics", func() (trace.TracerProvider, func()) { return tracenoop.NewTracerProvider(), func() {} }},
		{"metrics+unsampled", func() (trace.TracerProvider, func()) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
			return tp, func() { _ = tp.Shutdown(context.Background()) }
		}},
		{"metrics+sampled", func() (trace.TracerProvider, func()) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(discardExporter{}))
			return tp, func() { _ = tp.Shutdown(context.Background()) }
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			defer func() { _ = mp.Shutdown(context.Background()) }()
			tp, stop := c.tp()
			defer stop()
			tel, err := New(Options{MeterProvider: mp, TracerProvider: tp})
			if err != nil {
				b.Fatal(err)
			}
			on, err := tel.NewStack(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer on.Close()
			const round = 2_000
			w := &discardWriter{h: http.Header{}}
			req := httptest.NewRequest("GET", "http://gateway.test/path", nil)
			req.Header.Set("X-Request-Id", "bench-request-1")
			serve := func(h http.Handler, n int) time.Duration {
				start := cpuTime()
				for range n {
					clear(w.h)
					h.ServeHTTP(w, req)
				}
				return cpuTime() - start
			}
			serve(off, round) // warm both
			serve(on, round)
			bestOff, bestOn := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
			b.ResetTimer()
			for b.Loop() {
				bestOff = min(bestOff, serve(off, round))
				bestOn = min(bestOn, serve(on, round))
			}
			b.StopTimer()
			allocsOff := testing.AllocsPerRun(1000, func() { clear(w.h); off.ServeHTTP(w, req) })
			allocsOn := testing.AllocsPerRun(1000, func() { clear(w.h); on.ServeHTTP(w, req) })
			nsOff, nsOn := float64(bestOff)/round, float64(bestOn)/round
			b.ReportMetric(nsOff, "off-ns/op")
			b.ReportMetric(nsOn, "on-ns/op")
			b.ReportMetric(nsOn-nsOff, "added-ns/op")
			b.ReportMetric(allocsOn-allocsOff, "added-allocs/op")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkSDKStartUnsampled is the OpenTelemetry SDK's own cost of one
// span that is started and not recorded (ParentBased(NeverSample), no
// parent), as Transport starts one per attempt: the part of the
// unsampled-tracing cost that any OpenTelemetry instrumentation pays.
//
//	go test -run '^$' -bench BenchmarkSDKStartUnsampled -benchmem ./telemetry/
func BenchmarkSDKStartUnsampled(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	tr := tp.Tracer(ScopeName)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, s := tr.Start(ctx, "GET", opts...)
		s.End()
	}
}
