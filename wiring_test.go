package proxykit

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

// opaqueWriter is a user's ResponseWriter wrapper without Unwrap: the
// mistake the rules for code between the layers warn about.
type opaqueWriter struct{ http.ResponseWriter }

// TestWrapperWithoutUnwrapIsNamed: a wrapper without Unwrap between retry
// and the proxy cuts the failure hand-off; the proxy's error handler says
// so once, naming the wrapper's type and the fix.
func TestWrapperWithoutUnwrapIsNamed(t *testing.T) {
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	target, err := url.Parse(down.URL)
	require.NoError(t, err)
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:    &gateway.Transport{},
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
	rt, err := retry.New(retry.Options{Logger: logger, MaxDelay: 1})
	require.NoError(t, err)
	h := rt.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxy.ServeHTTP(opaqueWriter{w}, r)
	}))
	for range 3 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		assert.Equal(t, http.StatusBadGateway, rec.Code)
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "has no Unwrap() http.ResponseWriter method"), logs.String())
	assert.Contains(t, logs.String(), "wrapper=proxykit.opaqueWriter")

	// Wired right, nothing is said.
	var quietLogs gatewaytest.SafeBuffer
	logger = slog.New(slog.NewTextHandler(&quietLogs, nil))
	proxy.ErrorHandler = gateway.NewErrorHandler(logger)
	right := rt.Wrap(proxy)
	for range 3 {
		right.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}
	assert.NotContains(t, quietLogs.String(), "Unwrap")
}
