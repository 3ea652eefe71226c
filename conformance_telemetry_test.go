package proxykit_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/telemetry"
)

// TestConformanceTelemetry runs the conformance suite through a stack with
// telemetry: its hooks, and its Transport around the base transport (spans
// per attempt, trace context injected), every request sampled.
func TestConformanceTelemetry(t *testing.T) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	tel, err := telemetry.New(telemetry.Options{MeterProvider: mp, TracerProvider: tp})
	require.NoError(t, err)
	proxykit.RunConformance(t, "proxykit+telemetry", func(cfg proxykit.Config) (*proxykit.Stack, error) {
		base := cfg.Proxy.Transport
		if base == nil {
			base = gateway.NewHTTPTransport()
		}
		cfg.Transport = tel.Transport(base)
		return tel.NewStack(cfg)
	})
}
