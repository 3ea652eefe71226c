package retry

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestOneAttemptKeepsPerTryDuties: Attempts 1 turns retrying off, not the
// per-try timeout nor the attempt header: a hung upstream is answered
// after PerTryTimeout (0.3 s), not after the transport's 30 s
// response-header timeout, and the upstream sees attempt 1.
func TestOneAttemptKeepsPerTryDuties(t *testing.T) {
	hung := gatewaytest.NewServer(gatewaytest.Hang)
	closeLater(t, hung)
	rt := mustNew(t, Options{Attempts: 1, PerTryTimeout: 300 * time.Millisecond})
	o := &outer{next: rt.Wrap(newProxy(t, ordered(t, hung)))}
	front := serve(t, o)
	client := &http.Client{Timeout: 10 * time.Second} // 30× the per-try timeout
	start := time.Now()
	res, err := client.Get(front.URL + "/")
	require.NoError(t, err, "answered before the client gave up")
	res.Body.Close()
	elapsed := time.Since(start)
	assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
	f := o.requireFailure(t, gateway.ClassTimeout, 1)
	assert.Equal(t, hung.Addr, f.Upstream)
	assert.Less(t, elapsed, 3*time.Second, "bounded by the per-try timeout (10×), not the transport's 30 s")
	assert.Equal(t, int64(1), hung.Requests(), "never retried")

	seen := make(chan string, 1)
	ok := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("X-Attempt")
	}))
	closeLater(t, ok)
	rt = mustNew(t, Options{Attempts: 1, AttemptHeader: "X-Attempt"})
	front = serve(t, rt.Wrap(newProxy(t, ordered(t, ok))))
	got := do(t, front, newRequest(t, t.Context(), "GET", front.URL, nil))
	assert.Equal(t, http.StatusOK, got.status)
	assert.Equal(t, "1", <-seen, "the attempt header is set with one attempt too")
}

// TestOneAttemptKeepsNoReplay: with Attempts 1 no attempt can be retried
// or hedged, so a repeatable request's body is streamed, never kept for a
// replay that cannot happen.
func TestOneAttemptKeepsNoReplay(t *testing.T) {
	var rt *Retry
	held := make(chan int64, 1)
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		held <- rt.Stats().ReplayBytes // while the request is in flight
	}))
	closeLater(t, up)
	rt = mustNew(t, Options{Attempts: 1, PerTryTimeout: 5 * time.Second})
	front := serve(t, rt.Wrap(newProxy(t, ordered(t, up))))
	body := strings.Repeat("x", 64<<10)
	got := do(t, front, newRequest(t, t.Context(), http.MethodPut, front.URL, strings.NewReader(body)))
	assert.Equal(t, http.StatusOK, got.status)
	assert.Zero(t, <-held, "no replay buffer held for a request that cannot be retried")
}
