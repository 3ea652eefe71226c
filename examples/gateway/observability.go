package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/proxykit/proxykit/telemetry"
)

// serviceName is the default service.name of the gateway's telemetry;
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override it.
const serviceName = "proxykit-gateway"

// flushTimeout bounds the final export at shutdown.
const flushTimeout = 5 * time.Second

// observability is the gateway's OpenTelemetry setup: the providers, the
// exporters, and the /metrics handler.
type observability struct {
	tel     *telemetry.Telemetry
	metrics http.Handler // nil without -metrics
	mp      *sdkmetric.MeterProvider
	tp      *sdktrace.TracerProvider // nil without -otlp: tracing off
}

// newObservability sets up metrics for Prometheus (promMetrics: a
// /metrics handler on a registry of its own) and OTLP/HTTP export of
// metrics and traces (otlpURL, "" for none).
func newObservability(ctx context.Context, promMetrics bool, otlpURL string) (*observability, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(serviceName)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK())
	if err != nil {
		return nil, err
	}
	o := &observability{}
	mopts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	if promMetrics {
		reg := prometheus.NewRegistry()
		exp, err := otelprom.New(otelprom.WithRegisterer(reg))
		if err != nil {
			return nil, err
		}
		mopts = append(mopts, sdkmetric.WithReader(exp))
		o.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}
	var tp trace.TracerProvider = tracenoop.NewTracerProvider()
	if otlpURL != "" {
		base := strings.TrimSuffix(otlpURL, "/")
		texp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(base+"/v1/traces"))
		if err != nil {
			return nil, err
		}
		mexp, err := otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(base+"/v1/metrics"))
		if err != nil {
			_ = texp.Shutdown(ctx)
			return nil, err
		}
		mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(mexp)))
		o.tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(texp), sdktrace.WithResource(res))
		tp = o.tp
	}
	o.mp = sdkmetric.NewMeterProvider(mopts...)
	o.tel, err = telemetry.New(telemetry.Options{MeterProvider: o.mp, TracerProvider: tp})
	if err != nil {
		o.shutdown(slog.New(slog.DiscardHandler))
		return nil, err
	}
	return o, nil
}

// shutdown flushes and stops the providers: the last metrics and spans go
// to the collector.
func (o *observability) shutdown(logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	var err error
	if o.tp != nil {
		err = o.tp.Shutdown(ctx)
	}
	err = errors.Join(err, o.mp.Shutdown(ctx))
	if err != nil {
		logger.Warn("telemetry: flushing at shutdown failed", "error", err)
	}
}
