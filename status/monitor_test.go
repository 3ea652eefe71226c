package status_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/status"
)

// TestMonitorCountsAndLogsOnce: behind a Monitor, a failed request is
// logged exactly once (by the Monitor, with its duration), the ErrorHandler
// stays quiet, and outcomes are counted by status family and class.
func TestMonitorCountsAndLogsOnce(t *testing.T) {
	refused := gatewaytest.NewServer(gatewaytest.Refused)
	defer refused.Close()
	busy := gatewaytest.NewStatus(503, "5")
	defer busy.Close()
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()

	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil)) // info and up
	targets := map[string]string{"/refused": refused.URL, "/busy": busy.URL, "/ok": ok.URL}
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			u, _ := url.Parse(targets[pr.In.URL.Path])
			pr.SetURL(u)
		},
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
	var hooked atomic.Int32
	m := &status.Monitor{Logger: logger, OnFailure: func(r *http.Request, f *gateway.Failure, d time.Duration) {
		hooked.Add(1)
		assert.Positive(t, d)
	}}
	front := httptest.NewServer(gateway.RequestID(m.Wrap(proxy)))
	defer front.Close()

	for _, p := range []string{"/refused", "/busy", "/ok", "/ok"} {
		res, err := front.Client().Get(front.URL + p)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	m.ObserveRetry(2, nil, time.Millisecond)

	s := m.Snapshot()
	assert.EqualValues(t, 4, s.Requests)
	assert.EqualValues(t, 0, s.InFlight)
	assert.EqualValues(t, 1, s.Retries)
	assert.EqualValues(t, 2, s.ByStatus["2xx"])
	assert.EqualValues(t, 2, s.ByStatus["5xx"])
	assert.EqualValues(t, 1, s.Failures["refused"])
	assert.EqualValues(t, 1, s.Failures["upstream_status"])
	assert.EqualValues(t, 0, s.Failures["dns"])
	assert.Len(t, s.Failures, len(gateway.Classes()))
	assert.EqualValues(t, 2, hooked.Load())

	lines := logs.Lines()
	require.Len(t, lines, 2, "one line per failed request: %v", lines)
	var first map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &first))
	assert.Equal(t, "refused", first["class"])
	assert.Equal(t, "WARN", first["level"])
	assert.Contains(t, first, "duration")
	assert.Contains(t, first, "request_id")
	assert.Equal(t, refused.Addr, first["upstream"])
}

func TestMonitorNoAllocsWhenHealthy(t *testing.T) {
	m := &status.Monitor{}
	h := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	req := httptest.NewRequest("GET", "/", nil)
	w := &discardWriter{h: http.Header{}}
	h.ServeHTTP(w, req) // warm the pool
	allocs := testing.AllocsPerRun(200, func() { h.ServeHTTP(w, req) })
	assert.LessOrEqual(t, allocs, 0.1)
}

func TestStatusView(t *testing.T) {
	m := &status.Monitor{}
	h := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	until := time.Date(2026, 11, 22, 12, 0, 10, 0, time.UTC)
	v := &status.View{
		Monitor: m,
		Now:     func() time.Time { return until.Add(-5 * time.Second) },
		Admission: func() []admission.HostStatus {
			return []admission.HostStatus{
				{Upstream: "10.0.0.5:8080", Limit: 12, InFlight: 12, Queued: 3, Shed: 40, Baseline: 2 * time.Millisecond},
				{Upstream: "10.0.0.8:8080"},
			}
		},
		Maintenance: func() admission.MaintenanceState {
			return admission.MaintenanceState{On: true, Since: until.Add(-time.Hour), Until: until}
		},
		Upstreams: func() []pool.HostStatus {
			return []pool.HostStatus{
				{Upstream: "10.0.0.5:8080", State: pool.StateServing, Allowed: true, Latency: 3 * time.Millisecond, Requests: 10},
				{Upstream: "10.0.0.6:8080", State: pool.StateResting, Allowed: true, Failures: 4},
				{Upstream: "10.0.0.8:8080", State: pool.StateOut, Until: until},
			}
		},
		Breakers: func() []breaker.Status {
			return []breaker.Status{
				{Name: "routes", Key: "/api", State: breaker.StateOpen, Counts: breaker.Counts{ConsecutiveFailures: 5}, OpenUntil: until},
				{Name: "hosts", Key: "10.0.0.6:8080", State: breaker.StateClosed, HostState: pool.StateResting, RestUntil: until.Add(time.Second)},
				{Name: "hosts", Key: "10.0.0.7:8080", State: breaker.StateClosed, HostState: pool.StateWarming, Share: 0.4},
				{Name: "hosts", Key: "10.0.0.8:8080", State: breaker.StateOpen, HostState: pool.StateOut, LastClass: "refused",
					Since: until.Add(-time.Minute), NextProbe: until, OpenUntil: until},
				{Name: "hosts", Overflow: true, Counts: breaker.Counts{Requests: 3}},
			}
		},
	}

	rec := httptest.NewRecorder()
	v.ServeHTTP(rec, httptest.NewRequest("GET", "/status", nil))
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var rep status.Report
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep))
	require.NotNil(t, rep.Traffic)
	assert.EqualValues(t, 1, rep.Traffic.Requests)
	assert.Len(t, rep.Upstreams, 3)
	assert.Equal(t, breaker.StateOpen, rep.Breakers[0].State)
	require.Len(t, rep.Admission, 2)
	assert.EqualValues(t, 12, rep.Admission[0].Limit)
	require.NotNil(t, rep.Maintenance)
	assert.True(t, rep.Maintenance.On)
	assert.Equal(t, until, rep.Breakers[0].OpenUntil)

	req := httptest.NewRequest("GET", "/status", nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	rec = httptest.NewRecorder()
	v.ServeHTTP(rec, req)
	body := rec.Body.String()
	assert.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
	assert.Contains(t, rec.Header().Get("Content-Security-Policy"), "default-src 'none'")
	for _, s := range []string{"10.0.0.5:8080", "resting", "3.0 ms", "connect_timeout", "12:00:10Z", "routes: /api", "Planned maintenance",
		"12 (at its limit)", "<td>40</td>", "share 40%", "since 11:59:10Z · last failure: refused · next probe 12:00:10Z · until 12:00:10Z",
		"until 12:00:11Z", "unguarded", `lang="en"`} {
		assert.Contains(t, body, s)
	}
	// One host, one word: 10.0.0.8 is out in every table, whatever its
	// breaker's own state; its limit table shows the same word.
	for _, row := range strings.Split(body, "<tr>") {
		if strings.Contains(row, "10.0.0.8:8080") {
			assert.Contains(t, row, `class="bad">out<`, row)
			assert.NotContains(t, row, "probing")
			assert.NotContains(t, row, ">serving<")
		}
	}
	for _, word := range []string{"probing", "half-open", "at-limit", "healthy", "(overflow)"} {
		assert.NotContains(t, body, word)
	}
	assert.NotContains(t, body, "<script")

	req.URL.RawQuery = "format=json"
	rec = httptest.NewRecorder()
	v.ServeHTTP(rec, req)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))

	empty := &status.View{}
	rec = httptest.NewRecorder()
	empty.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	assert.JSONEq(t, `{"time":"`+rep.Time.Format(time.RFC3339Nano)+`","upstreams":[],"breakers":[]}`,
		strings.Replace(rec.Body.String(), extractTime(rec.Body.String()), rep.Time.Format(time.RFC3339Nano), 1))
}

func extractTime(doc string) string {
	var v struct {
		Time string `json:"time"`
	}
	_ = json.Unmarshal([]byte(doc), &v)
	return v.Time
}

// TestMonitorCountsAbortedResponses: an upstream body that breaks mid-copy
// makes ReverseProxy panic with http.ErrAbortHandler; the Monitor counts and
// logs it, keeps its in-flight count right, and lets the panic go on.
func TestMonitorCountsAbortedResponses(t *testing.T) {
	up := gatewaytest.NewServer(gatewaytest.CloseMidBody)
	defer up.Close()
	u, _ := url.Parse(up.URL)
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	var logs gatewaytest.SafeBuffer
	m := &status.Monitor{Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	h := m.Wrap(&httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: &gateway.Transport{Base: base},
		ErrorLog:  log.New(io.Discard, "", 0),
	})
	front := httptest.NewServer(h)
	defer front.Close()
	res, err := front.Client().Get(front.URL)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	assert.Error(t, err, "the client sees the body break")
	require.Eventually(t, func() bool { return m.Snapshot().InFlight == 0 }, 5*time.Second, 5*time.Millisecond)
	s := m.Snapshot()
	assert.EqualValues(t, 1, s.ByStatus["none"])
	assert.EqualValues(t, 1, s.Failures["reset"])
	assert.Contains(t, logs.String(), "response aborted")
}

// discardWriter is a reusable ResponseWriter, so that the recorder's own
// allocations do not blur the count.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestMonitorOnRequest: the hook hears every finished request once, with
// the status the client got and the Failure, if any.
func TestMonitorOnRequest(t *testing.T) {
	type call struct {
		status int
		class  string
	}
	var calls []call
	m := &status.Monitor{Logger: slog.New(slog.DiscardHandler), OnRequest: func(r *http.Request, st int, f *gateway.Failure, d time.Duration) {
		c := call{status: st}
		if f != nil {
			c.class = f.Class.String()
		}
		assert.GreaterOrEqual(t, d, time.Duration(0))
		calls = append(calls, c)
	}}
	ok := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	ok.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	failing := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gateway.RecordFailure(w, gateway.NewFailure(gateway.ClassRefused, "10.0.0.5:80", nil))
		w.WriteHeader(http.StatusBadGateway)
	}))
	failing.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	upstream503 := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	upstream503.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	assert.Equal(t, []call{{200, ""}, {502, "refused"}, {503, "upstream_status"}}, calls)
}

// TestMonitorInsideAnotherLayer: wired inside errorpage (a mistake), the
// Monitor still counts, but leaves the failure's line to the outer layer
// and says once what is wrong: one line per failed request, not two.
func TestMonitorInsideAnotherLayer(t *testing.T) {
	var buf gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	m := &status.Monitor{Logger: logger}
	pages, err := errorpage.New(errorpage.Options{Logger: logger})
	require.NoError(t, err)
	failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gateway.NewErrorHandler(logger)(w, r, gateway.NewFailure(gateway.ClassRefused, "10.0.0.5:80", errors.New("refused")))
	})
	h := pages.Wrap(m.Wrap(failing)) // wrong order
	for range 3 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var failures, wiring int
	for _, l := range lines {
		switch {
		case strings.Contains(l, `"msg":"proxy: upstream failure"`) && strings.Contains(l, `"level":"WARN"`):
			failures++
		case strings.Contains(l, "not the outermost layer"):
			wiring++
		}
	}
	assert.Equal(t, 3, failures, "one line per failed request:\n%s", buf.String())
	assert.Equal(t, 1, wiring, "the wiring mistake is said once")
	assert.EqualValues(t, 3, m.Snapshot().Failures["refused"], "the Monitor still counts")
}

// TestMonitorAbortAfterClientLeft: a response aborted because the client
// went away mid-body is the client's doing: class canceled, at debug
// level, not an upstream reset at warn.
func TestMonitorAbortAfterClientLeft(t *testing.T) {
	var buf gatewaytest.SafeBuffer
	m := &status.Monitor{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	h := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("partial"))
		panic(http.ErrAbortHandler) // ReverseProxy, when the copy to the client fails
	}))
	serve := func(ctx context.Context) {
		defer func() { assert.Equal(t, http.ErrAbortHandler, recover(), "the abort goes on") }()
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil).WithContext(ctx))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	serve(ctx)
	assert.EqualValues(t, 1, m.Snapshot().Failures["canceled"])
	assert.Contains(t, buf.String(), `"level":"DEBUG"`)
	assert.NotContains(t, buf.String(), `"level":"WARN"`)

	serve(context.Background()) // the client is still there: the upstream's body broke
	assert.EqualValues(t, 1, m.Snapshot().Failures["reset"])
	assert.Contains(t, buf.String(), `"level":"WARN"`)
}

// TestMonitorUpgradeOutcomes: an upgrade is counted as 101; an upgrade whose
// 101 could not be written because the client went away (ReverseProxy then
// calls its ErrorHandler after the hijack, which classes the failure
// canceled) is the client's 499, as any request whose client left.
func TestMonitorUpgradeOutcomes(t *testing.T) {
	type call struct {
		status int
		class  string
	}
	calls := make(chan call, 2)
	m := &status.Monitor{Logger: slog.New(slog.DiscardHandler), OnRequest: func(r *http.Request, st int, f *gateway.Failure, _ time.Duration) {
		c := call{status: st}
		if f != nil {
			c.class = f.Class.String()
		}
		calls <- c
	}}
	errorHandler := gateway.NewErrorHandler(slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if !assert.NoError(t, err) {
			return
		}
		defer c.Close()
		if r.URL.Path == "/left" {
			ctx, cancel := context.WithCancel(r.Context())
			cancel() // the client went away before the 101 was written
			errorHandler(w, r.WithContext(ctx), errors.New("response flush: write: broken pipe"))
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	})))
	defer srv.Close()
	for _, path := range []string{"/ok", "/left"} {
		req, err := http.NewRequest("GET", srv.URL+path, nil)
		require.NoError(t, err)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "echo")
		if res, err := srv.Client().Do(req); err == nil {
			res.Body.Close()
		}
		select {
		case c := <-calls:
			if path == "/ok" {
				assert.Equal(t, call{status: http.StatusSwitchingProtocols}, c, "an upgrade is 101")
			} else {
				assert.Equal(t, call{status: 499, class: "canceled"}, c, "the client left before its 101")
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no OnRequest", path)
		}
	}
	snap := m.Snapshot()
	assert.EqualValues(t, 1, snap.ByStatus["1xx"])
	assert.EqualValues(t, 1, snap.Failures["canceled"])
}
