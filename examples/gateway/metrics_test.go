package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// running is a gateway started by start.
type running struct {
	base, admin string // http://ADDR of the listeners
	out, errs   *gatewaytest.SafeBuffer
	stop        func() error // SIGINT, then run's error
}

var statusView = regexp.MustCompile(`status view on (http://\S+)`)

// start runs the gateway with args (listening on free ports) until stop
// or the end of the test.
func start(t *testing.T, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{out: &gatewaytest.SafeBuffer{}, errs: &gatewaytest.SafeBuffer{}}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0"}, args...), r.out, r.errs)
	}()
	var once sync.Once
	var err error
	r.stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = r.stop() })
	require.Eventually(t, func() bool {
		m, a := listening.FindStringSubmatch(r.out.String()), statusView.FindStringSubmatch(r.out.String())
		if m != nil && a != nil {
			r.base, r.admin = m[1], a[1]
		}
		return r.base != ""
	}, 10*time.Second, 10*time.Millisecond, "stderr: %s", r.errs.String())
	return r
}

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  string
}

var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// scrape fetches /metrics from the admin listener and parses it.
func scrape(t *testing.T, admin string) []sample {
	t.Helper()
	res, err := http.Get(admin + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Contains(t, res.Header.Get("Content-Type"), "text/plain")
	var out []sample
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := sample{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			s.name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndex(rest, "}")
			require.Positive(t, end, "line %q", line)
			for _, m := range labelPair.FindAllStringSubmatch(rest[1:end], -1) {
				s.labels[m[1]] = m[2]
			}
			rest = rest[end+1:]
		}
		s.value = strings.TrimSpace(rest)
		out = append(out, s)
	}
	require.NoError(t, sc.Err())
	return out
}

// find returns the samples named name whose labels include want.
func find(samples []sample, name string, want map[string]string) []sample {
	var out []sample
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range want {
			if s.labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// TestMetricsEndpoint: with -metrics, the admin listener serves /metrics in
// the Prometheus text format, behind the same guard as the status view,
// with the series of the requests just served.
func TestMetricsEndpoint(t *testing.T) {
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	g := start(t, "-metrics", "-upstream", ok.URL, "-upstream", dead.URL)
	assert.Contains(t, g.out.String(), "metrics on "+g.admin+"/metrics")

	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for range 10 {
		res, err := client.Get(g.base + "/some/path")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		require.Equal(t, 200, res.StatusCode)
	}

	var samples []sample
	require.Eventually(t, func() bool {
		samples = scrape(t, g.admin)
		s := find(samples, "http_server_request_duration_seconds_count", map[string]string{
			"http_request_method": "GET", "http_response_status_code": "200", "url_scheme": "http"})
		return len(s) == 1 && s[0].value == "10"
	}, 5*time.Second, 20*time.Millisecond, "the ten requests, once OnRequest ran")
	okHost, okPort, _ := strings.Cut(ok.Addr, ":")
	assert.NotEmpty(t, find(samples, "http_client_request_duration_seconds_count", map[string]string{
		"server_address": okHost, "server_port": okPort, "http_response_status_code": "200"}))
	assert.NotEmpty(t, find(samples, "http_client_request_duration_seconds_bucket", map[string]string{
		"server_address": okHost, "le": "0.005"}), "the semantic conventions' buckets")
	_, deadPort, _ := strings.Cut(dead.Addr, ":")
	assert.Len(t, find(samples, "proxykit_upstream_state", map[string]string{"server_port": deadPort}), 7,
		"one series per state")
	assert.Len(t, find(samples, "proxykit_upstream_state", map[string]string{"server_port": okPort, "proxykit_upstream_state": "serving"}), 1)
	assert.Len(t, find(samples, "http_client_active_requests", map[string]string{"server_port": okPort}), 1)
	assert.Len(t, find(samples, "proxykit_retry_budget_denials_total", nil), 1)
	assert.NotEmpty(t, find(samples, "target_info", map[string]string{"service_name": "proxykit-gateway"}))

	// The admin guard covers /metrics: read-only, its own Host names only.
	res, err := client.Post(g.admin+"/metrics", "text/plain", nil)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
	req, _ := http.NewRequest("GET", g.admin+"/metrics", nil)
	req.Host = "evil.example"
	res, err = client.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusMisdirectedRequest, res.StatusCode)
	// The status view is still there.
	res, err = client.Get(g.admin + "/")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	require.NoError(t, g.stop())
}

// TestNoMetricsWithoutFlag: without -metrics, /metrics is the status
// view's, not an exposition.
func TestNoMetricsWithoutFlag(t *testing.T) {
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errs gatewaytest.SafeBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0", "-upstream", ok.URL}, &out, &errs)
	}()
	var admin string
	require.Eventually(t, func() bool {
		if m := statusView.FindStringSubmatch(out.String()); m != nil && listening.MatchString(out.String()) {
			admin = m[1]
		}
		return admin != ""
	}, 10*time.Second, 10*time.Millisecond)
	res, err := http.Get(admin + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.NotContains(t, string(body), "http_server_request_duration_seconds")
	assert.NotContains(t, out.String(), "metrics on")
	cancel()
	require.NoError(t, <-done)
}

// TestOTLPExport: with -otlp, traces and metrics reach the collector over
// OTLP/HTTP, the last of them when the gateway shuts down.
func TestOTLPExport(t *testing.T) {
	var mu sync.Mutex
	got := map[string]string{}
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		got[r.Method+" "+r.URL.Path] = r.Header.Get("Content-Type")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	g := start(t, "-otlp", collector.URL, "-upstream", ok.URL)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	res, err := client.Get(g.base + "/")
	require.NoError(t, err)
	res.Body.Close()
	require.NoError(t, g.stop())

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, "application/x-protobuf", got["POST /v1/traces"], "spans: %v", got)
	assert.Equal(t, "application/x-protobuf", got["POST /v1/metrics"], "metrics: %v", got)
}
