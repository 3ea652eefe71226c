package gateway_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestCloseIdleConnectionsDefaultBase: with a nil Base,
// RoundTrip uses the Transport's own tuned transport, so
// CloseIdleConnections must close its idle connections too.
func TestCloseIdleConnectionsDefaultBase(t *testing.T) {
	closed := make(chan struct{})
	var once sync.Once
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			once.Do(func() { close(closed) })
		}
	}
	up.Start()
	defer up.Close()
	gt := &gateway.Transport{}
	res, err := gt.RoundTrip(httptest.NewRequest(http.MethodGet, up.URL, nil))
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	require.Eventually(t, func() bool {
		gt.CloseIdleConnections() // the connection may not be idle yet
		select {
		case <-closed:
			return true
		default:
			return false
		}
	}, 5*time.Second, 5*time.Millisecond, "the idle connection of http.DefaultTransport must be closed")
}

// TestNewHTTPTransportDefaults: a response-header
// timeout and a bound on connections per host, by default.
func TestNewHTTPTransportDefaults(t *testing.T) {
	tr := gateway.NewHTTPTransport()
	assert.Equal(t, 30*time.Second, tr.ResponseHeaderTimeout)
	assert.Equal(t, 1024, tr.MaxConnsPerHost)
	assert.Greater(t, tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost)
}

// TestConnectionWaitBoundedByContext: a request waiting for a connection
// beyond MaxConnsPerHost waits as long as its context allows, and then is
// local saturation (overloaded: no dial was started for it, so it is not
// the host's connect timeout), never sent: retryable for any method.
func TestConnectionWaitBoundedByContext(t *testing.T) {
	up := gatewaytest.NewServer(gatewaytest.Hang)
	defer up.Close()
	base := gateway.NewHTTPTransport()
	base.MaxConnsPerHost = 1
	defer base.CloseIdleConnections()
	gt := &gateway.Transport{Base: base}

	first, cancelFirst := context.WithCancel(context.Background())
	defer cancelFirst()
	done := make(chan struct{})
	go func() {
		defer close(done)
		req := httptest.NewRequest(http.MethodGet, up.URL, nil).WithContext(first)
		_, _ = gt.RoundTrip(req) // holds the only connection until canceled
	}()
	require.Eventually(t, func() bool { return up.Requests() == 1 }, 5*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := gt.RoundTrip(httptest.NewRequest(http.MethodPost, up.URL, strings.NewReader("x")).WithContext(ctx))
	assert.Less(t, time.Since(start), 5*time.Second)
	var f *gateway.Failure
	require.ErrorAs(t, err, &f)
	assert.Equal(t, gateway.ClassOverloaded, f.Class, "%v", f)
	assert.False(t, f.Sent)
	assert.EqualValues(t, 1, up.Requests())
	cancelFirst()
	<-done
}

// TestUpstreamNamedWithoutPool: without a pool, an
// enclosing layer that classifies an upstream's own 503 from the status
// finds the upstream on the Trail, because Transport recorded it.
func TestUpstreamNamedWithoutPool(t *testing.T) {
	up := gatewaytest.NewStatus(503, "")
	defer up.Close()
	u := mustURL(t, up.URL)
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(quietLogger),
	}
	var named string
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, trail := gateway.WithTrail(r.Context())
		rp.ServeHTTP(w, r.WithContext(ctx))
		f := gateway.ClassifyStatus(503, nil, trail.Last(), time.Now())
		named = f.Upstream
	}))
	defer front.Close()
	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, 503, res.StatusCode)
	assert.Equal(t, up.Addr, named)
}

// TestDebugLineNamesTheAttempt: when an enclosing
// layer takes the Failure, ErrorHandler's debug line says which attempt
// failed (the Trail's length), not always attempts=1.
func TestDebugLineNamesTheAttempt(t *testing.T) {
	up := gatewaytest.NewServer(gatewaytest.Refused)
	defer up.Close()
	u := mustURL(t, up.URL)
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
	a := &attempts{n: 3, next: rp}
	front := httptest.NewServer(a)
	defer front.Close()
	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, 3, logs.String())
	for i, line := range lines {
		assert.Contains(t, line, `"level":"DEBUG"`)
		assert.Contains(t, line, `"attempts":`+string(rune('1'+i)), line)
		assert.Contains(t, line, `"upstream":"`+up.Addr+`"`)
	}
}

// TestTransportNilURL: a request without a URL is the Base's error to
// report, classified, not a panic.
func TestTransportNilURL(t *testing.T) {
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	req.URL = nil
	_, err := (&gateway.Transport{}).RoundTrip(req)
	var f *gateway.Failure
	require.ErrorAs(t, err, &f)
	assert.Empty(t, f.Upstream)
}
