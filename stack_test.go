package proxykit

import (
	"context"
	"encoding/json"
	"io"
	"net"
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
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
	"github.com/proxykit/proxykit/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewRequiresUpstreams(t *testing.T) {
	_, err := New(Config{})
	assert.Error(t, err)
}

// TestNewNamesTheUpstream: a bad upstream is named by the user's field,
// Config.Upstreams[i], not by the pool's own numbering.
func TestNewNamesTheUpstream(t *testing.T) {
	ok, _ := url.Parse("http://127.0.0.1:1")
	for want, ups := range map[string][]*url.URL{
		"proxykit: Config.Upstreams[0]: nil URL":                          {nil},
		"proxykit: Config.Upstreams[1]: nil URL":                          {ok, nil},
		`proxykit: Config.Upstreams[1]: "ftp://127.0.0.1:2": scheme must`: {ok, {Scheme: "ftp", Host: "127.0.0.1:2"}},
		`proxykit: Config.Upstreams[1]: "http://LOCALHOST:1" is the same host localhost:1 as the target at index 0 ("http://localhost:1")`: {
			{Scheme: "http", Host: "localhost:1"}, {Scheme: "http", Host: "LOCALHOST:1"}},
	} {
		_, err := New(Config{Upstreams: ups})
		if assert.Error(t, err, want) {
			assert.True(t, strings.HasPrefix(err.Error(), want), err.Error())
			assert.NotContains(t, err.Error(), "target 0")
		}
	}
}

// TestStack: with one of two upstreams down, every request succeeds; with
// both down the client gets a classified problem document, and the status
// view shows it all.
func TestStack(t *testing.T) {
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(ok.URL), mustParse(down.URL)}, Logger: quiet, Pages: errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}}})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st.Handler)
	defer front.Close()

	for i := 0; i < 10; i++ {
		res, err := front.Client().Get(front.URL + "/")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.NotEmpty(t, res.Header.Get("X-Request-Id"))
	}

	require.NoError(t, ok.SetFault(gatewaytest.Refused))
	st.Hosts.Allows(ok.Addr)
	res, err := front.Client().Get(front.URL + "/orders")
	require.NoError(t, err)
	var problem map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&problem))
	res.Body.Close()
	assert.Contains(t, []int{502, 503}, res.StatusCode)
	assert.Equal(t, "application/problem+json", res.Header.Get("Content-Type"))
	assert.Contains(t, []any{"refused", "no_upstream"}, problem["class"])
	assert.Equal(t, res.Header.Get("X-Request-Id"), problem["request_id"])

	rec := httptest.NewRecorder()
	st.Status.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	var rep status.Report
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep))
	assert.Len(t, rep.Upstreams, 2)
	require.NotNil(t, rep.Traffic)
	assert.EqualValues(t, 11, rep.Traffic.Requests)
	assert.EqualValues(t, 10, rep.Traffic.ByStatus["2xx"])
}

func mustParse(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestRequestTimeout: a hung upstream under Config.RequestTimeout ends in
// the stack's own branded 504 (class timeout), in about the timeout.
func TestRequestTimeout(t *testing.T) {
	hung := gatewaytest.NewServer(gatewaytest.Hang)
	defer hung.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(hung.URL)}, Logger: quiet, RequestTimeout: 150 * time.Millisecond})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()
	req, _ := http.NewRequest("GET", front.URL+"/", nil)
	req.Header.Set("Accept", "application/json")
	start := time.Now()
	res, err := front.Client().Do(req)
	require.NoError(t, err)
	var problem map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&problem))
	res.Body.Close()
	assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
	assert.Equal(t, "timeout", problem["class"])
	assert.Less(t, time.Since(start), 5*time.Second, "bounded by the request timeout, not the transport's")

	_, err = New(Config{Upstreams: []*url.URL{mustParse(hung.URL)}, RequestTimeout: -1})
	assert.Error(t, err)
}

// TestStackHedging: the stack hedges a stalled GET by default (two
// upstreams or more), and the attempt that lost is nobody's failure: not
// the per-host breaker's, not the pool's, not the Monitor's. A POST is not
// hedged; Retry.Hedges < 0 turns hedging off.
func TestStackHedging(t *testing.T) {
	var stallNext atomic.Bool
	var canceled atomic.Int64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stallNext.CompareAndSwap(true, false) {
			select {
			case <-r.Context().Done():
				canceled.Add(1)
				return
			case <-time.After(5 * time.Second):
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	var ups []*url.URL
	for range 3 {
		s := gatewaytest.NewHealthy(handler)
		defer s.Close()
		ups = append(ups, mustParse(s.URL))
	}
	var sent, won atomic.Int64
	// The hedge delay gives the first attempt time to reach its host (and
	// take the stall) before the hedge leaves, also on a busy machine.
	st, err := New(Config{Upstreams: ups, Logger: quiet, Retry: retry.Options{HedgeDelay: 200 * time.Millisecond,
		OnHedge: func(e retry.HedgeEvent, _ int, _ time.Duration) {
			switch e {
			case retry.HedgeSent:
				sent.Add(1)
			case retry.HedgeWon:
				won.Add(1)
			}
		}}})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()

	for range 10 {
		stallNext.Store(true)
		start := time.Now()
		res, err := front.Client().Get(front.URL + "/")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Less(t, time.Since(start), 2*time.Second, "the hedge answered")
	}
	assert.Eventually(t, func() bool { return canceled.Load() == 10 }, 5*time.Second, time.Millisecond,
		"every stalled attempt was cancelled")
	assert.EqualValues(t, 10, sent.Load())
	assert.EqualValues(t, 10, won.Load())
	assert.EqualValues(t, 10, st.Retry.Stats().HedgesWon)

	snap := st.Monitor.Snapshot()
	assert.EqualValues(t, 10, snap.ByStatus["2xx"])
	assert.EqualValues(t, 10, snap.Hedges, "the Monitor counts the hedges sent")
	assert.EqualValues(t, 10, snap.HedgesWon, "and those that won")
	for class, n := range snap.Failures {
		assert.Zero(t, n, "Monitor: %s", class)
	}
	for _, hs := range st.Pool.Status() {
		assert.Zero(t, hs.Failures, "pool: %s", hs.Upstream)
		assert.True(t, hs.Allowed, hs.Upstream)
		assert.Equal(t, pool.StateServing, hs.State, hs.Upstream)
	}
	for _, bs := range st.Hosts.States() {
		assert.Zero(t, bs.Counts.Failures, "breaker: %s", bs.Key)
		if !bs.Overflow {
			assert.Equal(t, pool.StateServing, bs.HostState, bs.Key)
		}
	}

	// A POST is not hedged: it waits for its stalled attempt.
	stallNext.Store(true)
	hurry, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(hurry, http.MethodPost, front.URL+"/", http.NoBody)
	_, err = front.Client().Do(req)
	assert.Error(t, err, "not hedged: still stalled when the client gave up")
	assert.EqualValues(t, 10, sent.Load())
	stallNext.Store(false)

	off, err := New(Config{Upstreams: ups, Logger: quiet, Retry: retry.Options{Hedges: -1}})
	require.NoError(t, err)
	defer off.Close()
	_, err = New(Config{Upstreams: ups, Logger: quiet, Retry: retry.Options{Attempts: 1}})
	require.NoError(t, err, "one attempt: no room for a hedge, and no error for it")
}

// TestClientForwardingHeadersStripped: an X-Real-IP the client sends does
// not reach the upstream, as X-Forwarded-For and Forwarded do not, unless
// the user's Rewrite sets it; with a Director all three pass, as
// ReverseProxy passes them.
func TestClientForwardingHeadersStripped(t *testing.T) {
	var got atomic.Pointer[http.Header]
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		got.Store(&h)
	}))
	defer up.Close()
	target, _ := url.Parse(up.URL)
	send := func(t *testing.T, cfg Config) http.Header {
		t.Helper()
		cfg.Logger = quiet
		st, err := New(cfg)
		require.NoError(t, err)
		defer st.Close()
		front := httptest.NewServer(st)
		defer front.Close()
		req, _ := http.NewRequest(http.MethodGet, front.URL+"/", nil)
		req.Header.Set("X-Real-IP", "6.6.6.6")
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		req.Header.Set("Forwarded", "for=6.6.6.6")
		res, err := front.Client().Do(req)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
		return *got.Load()
	}

	h := send(t, Config{Upstreams: []*url.URL{target}})
	assert.Empty(t, h.Values("X-Real-Ip"), "the client's X-Real-IP is stripped")
	assert.Empty(t, h.Values("X-Forwarded-For"))
	assert.Empty(t, h.Values("Forwarded"))

	h = send(t, Config{Upstreams: []*url.URL{target}, Proxy: &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		ip, _, _ := net.SplitHostPort(pr.In.RemoteAddr)
		pr.Out.Header.Set("X-Real-IP", ip)
		pr.SetXForwarded()
	}}})
	assert.Equal(t, []string{"127.0.0.1"}, h.Values("X-Real-Ip"), "the Rewrite's own")
	assert.Equal(t, []string{"127.0.0.1"}, h.Values("X-Forwarded-For"))

	h = send(t, Config{Proxy: &httputil.ReverseProxy{Director: func(r *http.Request) {
		r.URL.Scheme, r.URL.Host = target.Scheme, target.Host
	}}})
	assert.Equal(t, []string{"6.6.6.6"}, h.Values("X-Real-Ip"), "a Director's convention: passed")
	assert.Equal(t, []string{"6.6.6.6, 127.0.0.1"}, h.Values("X-Forwarded-For"))
}
