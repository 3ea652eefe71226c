package proxykit

import (
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
)

// TestModifyResponseRejection: a ModifyResponse error is the user's
// decision: answered 502 once per request, never retried or hedged (each
// request reaches one upstream once), no evidence against any host, and
// one line per request at info level, class response_rejected.
func TestModifyResponseRejection(t *testing.T) {
	var hits atomic.Int64
	slow := func(d time.Duration) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			time.Sleep(d) // past the hedge delay: a hedge may start
			w.Header().Set("X-Secret", "1")
			_, _ = io.WriteString(w, "secret")
		})
	}
	a := gatewaytest.NewHealthy(slow(0))
	defer a.Close()
	b := gatewaytest.NewHealthy(slow(30 * time.Millisecond))
	defer b.Close()

	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var mu sync.Mutex
	var classes []gateway.Class
	p := &httputil.ReverseProxy{ModifyResponse: func(res *http.Response) error {
		if res.Header.Get("X-Secret") != "" {
			return errors.New("policy: secret response")
		}
		return nil
	}}
	st, err := New(Config{
		Proxy: p, Upstreams: []*url.URL{mustParse(a.URL), mustParse(b.URL)}, Logger: logger,
		OnFailure: func(_ *http.Request, f *gateway.Failure, _ time.Duration) {
			mu.Lock()
			classes = append(classes, f.Class)
			mu.Unlock()
		},
	})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()

	const n = 20
	for i := range n {
		res, body := get(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusBadGateway, res.StatusCode, "request %d", i)
		assert.NotContains(t, body, "secret")
	}
	assert.Equal(t, int64(n), hits.Load(), "one upstream request per client request: no retry, no hedge")
	mu.Lock()
	assert.Len(t, classes, n)
	for _, c := range classes {
		assert.Equal(t, gateway.ClassResponseRejected, c)
	}
	mu.Unlock()
	for _, s := range st.Hosts.States() {
		assert.Equal(t, breaker.StateClosed, s.State, s.Key)
		assert.Zero(t, s.Counts.Failures, "%s: no evidence against the host", s.Key)
	}
	for _, s := range st.Pool.Status() {
		assert.Zero(t, s.Failures, s.Upstream)
		assert.True(t, s.Allowed, s.Upstream)
		assert.Equal(t, pool.StateServing, s.State, s.Upstream)
	}
	out := logs.String()
	assert.Equal(t, n, strings.Count(out, "level=INFO msg=\"proxy: upstream failure\" class=response_rejected"),
		"one line per request, at info level: %s", out)
	assert.NotContains(t, out, "budget")
	assert.NotContains(t, out, "level=WARN")
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	res, err := c.Get(u)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, string(body)
}

// TestNewRefusesWhatReverseProxyRefuses: a proxy with both a Rewrite and a
// Director fails every request bare; New says so at once.
func TestNewRefusesWhatReverseProxyRefuses(t *testing.T) {
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	p := &httputil.ReverseProxy{Director: func(*http.Request) {}, Rewrite: func(*httputil.ProxyRequest) {}}
	_, err := New(Config{Proxy: p, Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet})
	assert.ErrorIs(t, err, ErrRewriteAndDirector)
}

// TestNewLeavesProxyAlone: New works on a copy, so the same ReverseProxy
// can back two stacks (or be served bare); a Stack's own Proxy given to New
// is refused with an error that says so.
func TestNewLeavesProxyAlone(t *testing.T) {
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	p := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.Out.Header.Set("X-Mine", "1") }}
	for range 2 {
		st, err := New(Config{Proxy: p, Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet})
		require.NoError(t, err, "the same ReverseProxy in a second stack")
		front := httptest.NewServer(st)
		res, _ := get(t, front.Client(), front.URL+"/ok")
		assert.Equal(t, http.StatusOK, res.StatusCode)
		front.Close()
		st.Close()
		assert.NotSame(t, p, st.Proxy)
		_, err = New(Config{Proxy: st.Proxy, Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet})
		assert.ErrorIs(t, err, ErrOwnErrorHandler)
		assert.ErrorContains(t, err, "already used by a proxykit stack")
	}
	assert.Nil(t, p.ErrorHandler)
	assert.Nil(t, p.Transport)
	assert.Nil(t, p.ErrorLog)
	assert.Nil(t, p.Director)
}

// TestErrorLogGetsFailureLine: a user's ErrorLog receives the one line per
// failed request that the slog Logger gets.
func TestErrorLogGetsFailureLine(t *testing.T) {
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	var lines, slogged gatewaytest.SafeBuffer
	p := &httputil.ReverseProxy{ErrorLog: log.New(&lines, "proxy: ", 0)}
	st, err := New(Config{Proxy: p, Upstreams: []*url.URL{mustParse(down.URL)},
		Logger: slog.New(slog.NewTextHandler(&slogged, nil))})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()
	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	got := lines.Lines()
	require.Len(t, got, 1, lines.String())
	assert.True(t, strings.HasPrefix(got[0], "proxy: level=WARN"), got[0])
	assert.Contains(t, got[0], "class=refused")
	assert.Contains(t, slogged.String(), "class=refused", "slog still gets it")
}

// TestModifyResponseRejectionEndsHedgeRace: a rejected answer is the
// request's outcome even while a hedge is in flight: the race ends at once
// and the other attempt is canceled, rather than awaited.
func TestModifyResponseRejectionEndsHedgeRace(t *testing.T) {
	var canceled atomic.Int64
	answerAfter := func(d time.Duration) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
				canceled.Add(1)
				return
			case <-time.After(d):
			}
			w.Header().Set("X-Secret", "1")
		})
	}
	fast := gatewaytest.NewHealthy(answerAfter(200 * time.Millisecond))
	defer fast.Close()
	slow := gatewaytest.NewHealthy(answerAfter(5 * time.Second))
	defer slow.Close()
	var hedges atomic.Int64
	p := &httputil.ReverseProxy{ModifyResponse: func(res *http.Response) error {
		if res.Header.Get("X-Secret") != "" {
			return errors.New("policy: secret response")
		}
		return nil
	}}
	st, err := New(Config{Proxy: p, Upstreams: []*url.URL{mustParse(fast.URL), mustParse(slow.URL)}, Logger: quiet,
		Retry: retry.Options{HedgeDelay: 20 * time.Millisecond, OnHedge: func(e retry.HedgeEvent, _ int, _ time.Duration) {
			if e == retry.HedgeSent {
				hedges.Add(1)
			}
		}}})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()

	start := time.Now()
	res, _ := get(t, front.Client(), front.URL)
	took := time.Since(start)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	require.Equal(t, int64(1), hedges.Load(), "the precondition: a hedge raced the first attempt")
	assert.Less(t, took, 2500*time.Millisecond, "the rejection ended the race; the slow attempt was not awaited (5 s)")
	require.Eventually(t, func() bool { return canceled.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the slow attempt was canceled")
}
