package telemetry_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http/httptest"
	"net/url"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/telemetry"
)

// The stack with metrics and traces: one line of wiring.
func Example() {
	reader := sdkmetric.NewManualReader() // a Prometheus or OTLP exporter in production
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01))))
	defer tp.Shutdown(context.Background())

	tel, err := telemetry.New(telemetry.Options{MeterProvider: mp, TracerProvider: tp})
	if err != nil {
		log.Fatal(err)
	}
	upstream, _ := url.Parse("http://upstream.test")
	st, err := tel.NewStack(proxykit.Config{
		Upstreams: []*url.URL{upstream},
		Transport: gatewaytest.InMemory{Body: "ok"}, // the network, in production
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	st.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "http://gateway.test/", nil))

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		fmt.Println(m.Name, m.Unit)
	}
	// Unordered output:
	// http.server.request.duration s
	// http.client.request.duration s
	// proxykit.upstream.state {state}
	// http.client.active_requests {request}
	// proxykit.retry.budget.denials {retry}
	// proxykit.upstream.hosts {host}
}

// Wiring by hand: Apply before proxykit.New, Instrument after.
func ExampleTelemetry_Apply() {
	tel, err := telemetry.New(telemetry.Options{}) // the global providers
	if err != nil {
		log.Fatal(err)
	}
	upstream, _ := url.Parse("http://upstream.test")
	cfg := proxykit.Config{Upstreams: []*url.URL{upstream}}
	tel.Apply(&cfg)
	st, err := proxykit.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	if _, err := tel.Instrument(st); err != nil {
		log.Fatal(err)
	}
	fmt.Println("instrumented")
	// Output: instrumented
}
