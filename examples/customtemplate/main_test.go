package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestCustomPages: a real refused upstream renders default.html; an open
// breaker renders open.html's headline inside default.html's layout.
func TestCustomPages(t *testing.T) {
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	u, _ := url.Parse(down.URL)
	h, cleanup, err := newHandler(u, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer cleanup()

	req := httptest.NewRequest("GET", "/menu", nil)
	req.Header.Set("Accept", "text/html")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body := rec.Body.String()
	assert.Equal(t, http.StatusBadGateway, rec.Code)
	assert.Contains(t, body, "Georgia", "the custom template, not the built-in page")
	assert.Contains(t, body, "502 · Bad Gateway")
	assert.Contains(t, body, rec.Header().Get("X-Request-Id"))
	assert.NotContains(t, body, down.Addr)
	assert.Contains(t, body, "<h1>We can&#39;t reach the service right now</h1>")
	assert.NotContains(t, body, "The kitchen is taking a short break",
		"open.html's headline stays on the open page")

	// An open breaker: the class template overrides the headline only.
	open := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := gateway.NewFailure(gateway.ClassOpen, "10.0.0.5:8080", nil)
		gateway.RecordFailure(w, f)
		w.WriteHeader(f.StatusCode())
	})
	pages, err := newPages(slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	rec = httptest.NewRecorder()
	pages.Wrap(open).ServeHTTP(rec, req)
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Contains(t, rec.Body.String(), "The kitchen is taking a short break")
	assert.Contains(t, rec.Body.String(), "Georgia")
}
