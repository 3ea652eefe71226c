package telemetry

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rig is a Telemetry over an in-memory metric reader and, when tracing,
// a span recorder that samples everything.
type rig struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     trace.TracerProvider
	tel    *Telemetry
}

type rigOption func(*Options, *rig)

// sampling makes the rig trace with a span recorder and the sampler s.
func sampling(s sdktrace.Sampler) rigOption {
	return func(o *Options, r *rig) {
		r.spans = tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(s), sdktrace.WithSpanProcessor(r.spans))
		o.TracerProvider, r.tp = tp, tp
	}
}

func newRig(t *testing.T, opts ...rigOption) *rig {
	t.Helper()
	r := &rig{reader: sdkmetric.NewManualReader()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	o := Options{MeterProvider: mp, TracerProvider: tracenoop.NewTracerProvider()}
	for _, opt := range opts {
		opt(&o, r)
	}
	tel, err := New(o)
	require.NoError(t, err)
	r.tel = tel
	return r
}

// stack builds an instrumented stack; it is closed when the test ends.
func (r *rig) stack(t *testing.T, cfg proxykit.Config) *proxykit.Stack {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	st, err := r.tel.NewStack(cfg)
	require.NoError(t, err)
	t.Cleanup(st.Close)
	return st
}

// front serves h on loopback until the test ends.
func front(t *testing.T, h http.Handler) *httptest.Server {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func (r *rig) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.reader.Collect(context.Background(), &rm))
	return rm
}

// instruments returns the collected metrics by name.
func instruments(rm metricdata.ResourceMetrics) map[string]metricdata.Metrics {
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func names(ms map[string]metricdata.Metrics) []string {
	var out []string
	for n := range ms {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// enc is the canonical text of an attribute set: "k=v,k=v", sorted.
func enc(kvs ...attribute.KeyValue) string {
	s := attribute.NewSet(kvs...)
	return s.Encoded(attribute.DefaultEncoder())
}

// points returns a metric's data points as attribute set → value: the
// count for a histogram, the value for a sum or gauge.
func points(t *testing.T, rm metricdata.ResourceMetrics, name string) map[string]int64 {
	t.Helper()
	m, ok := instruments(rm)[name]
	if !ok {
		return nil
	}
	out := map[string]int64{}
	switch d := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out[p.Attributes.Encoded(attribute.DefaultEncoder())] = int64(p.Count)
		}
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out[p.Attributes.Encoded(attribute.DefaultEncoder())] = p.Value
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out[p.Attributes.Encoded(attribute.DefaultEncoder())] = p.Value
		}
	default:
		t.Fatalf("%s: unexpected data %T", name, m.Data)
	}
	return out
}

// nonZero drops the zero values of a points map.
func nonZero(p map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range p {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// hostPort splits an upstream's address into its server.address and
// server.port attributes.
func hostPort(t *testing.T, addr string) []attribute.KeyValue {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	port, err := strconv.Atoi(p)
	require.NoError(t, err)
	return []attribute.KeyValue{attribute.String("server.address", h), attribute.Int("server.port", port)}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// get fetches url and drains the response.
func get(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	res, err := c.Get(url)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

// rawExchange sends raw bytes to addr over a new TCP connection and reads
// one response.
func rawExchange(t *testing.T, addr, request string) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, request)
	require.NoError(t, err)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	_, _ = io.ReadAll(res.Body)
	res.Body.Close()
	return res
}

// waitServed waits until n requests were recorded in
// http.server.request.duration: OnRequest runs after the response reached
// the client.
func (r *rig) waitServed(t *testing.T, n int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		var total int64
		for _, c := range points(t, r.collect(t), "http.server.request.duration") {
			total += c
		}
		return total >= n
	}, 10*time.Second, 5*time.Millisecond)
}

// inMemory is an upstream without a network.
var inMemory = gatewaytest.InMemory{Body: "ok\n"}
