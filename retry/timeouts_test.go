package retry

import (
	"context"
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

// withDeadline gives every inbound request a deadline d from its arrival,
// as an outer timeout middleware would.
func withDeadline(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// TestRetryAfter: an upstream 503 or 429 with a Retry-After is retried after
// that delay when it is within MaxRetryAfter and fits the deadline; else its
// response reaches the client as it is. A 503 without Retry-After is
// retried with backoff; a 429 without it is passed; a sent POST never.
func TestRetryAfter(t *testing.T) {
	cases := []struct {
		name       string
		status     int
		retryAfter string
		method     string
		deadline   time.Duration
		retried    bool
		delay      time.Duration // wanted OnRetry delay when exact
	}{
		{"503 Retry-After 1 s within the max", 503, "1", "GET", 0, true, time.Second},
		{"429 Retry-After 1 s within the max", 429, "1", "GET", 0, true, time.Second},
		{"503 Retry-After beyond the max", 503, "5", "GET", 0, false, 0},
		{"503 Retry-After beyond the deadline", 503, "1", "GET", 500 * time.Millisecond, false, 0},
		{"503 without Retry-After", 503, "", "GET", 0, true, 0},
		{"502 Retry-After is not a wait", 502, "5", "GET", 0, true, 0},
		{"429 without Retry-After", 429, "", "GET", 0, false, 0},
		{"503 Retry-After, sent POST", 503, "1", "POST", 0, false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			busy, healthy := gatewaytest.NewStatus(c.status, c.retryAfter), gatewaytest.NewHealthy(nil)
			closeLater(t, busy, healthy)
			var rec retries
			var h http.Handler = mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, busy, healthy)))
			if c.deadline > 0 {
				h = withDeadline(c.deadline, h)
			}
			front := serve(t, h)
			start := time.Now()
			res := do(t, front, newRequest(t, t.Context(), c.method, front.URL, strings.NewReader("x")))
			elapsed := time.Since(start)
			assert.Equal(t, int64(1), busy.Requests())
			if !c.retried {
				assert.Equal(t, c.status, res.status, "passed through as it is")
				assert.Equal(t, c.retryAfter, res.header.Get("Retry-After"))
				assert.Equal(t, http.StatusText(c.status)+" from upstream\n", res.body)
				assert.Equal(t, int64(0), healthy.Requests())
				assert.Empty(t, rec.get())
				if c.deadline > 0 {
					assert.Less(t, elapsed, c.deadline, "no wait that cannot fit was started")
				}
				return
			}
			assert.Equal(t, http.StatusOK, res.status)
			assert.Equal(t, int64(1), healthy.Requests())
			require.Len(t, rec.get(), 1)
			call := rec.get()[0]
			assert.Equal(t, c.status, call.failure.Status)
			if c.delay > 0 {
				assert.Equal(t, c.delay, call.delay)
				assert.GreaterOrEqual(t, elapsed, c.delay, "the wait happened")
			} else {
				assert.Less(t, call.delay, 2*time.Millisecond, "plain backoff")
			}
		})
	}
}

// TestDeadlineStopsRetries: with a 1 s inbound deadline and a 400 ms
// per-try timeout against an upstream that never answers in time, no
// attempt starts that could not finish before the deadline: one or two
// attempts are made of the five allowed, and the client gets a 504 before
// the deadline runs out.
func TestDeadlineStopsRetries(t *testing.T) {
	slow := gatewaytest.NewServer(gatewaytest.SlowHeaders)
	slow.Delay = 10 * time.Second
	closeLater(t, slow)
	var rec retries
	o := &outer{}
	o.next = mustNew(t, Options{Attempts: 5, PerTryTimeout: 400 * time.Millisecond, OnRetry: rec.hook}).
		Wrap(newProxy(t, ordered(t, slow)))
	front := serve(t, withDeadline(time.Second, o))
	start := time.Now()
	res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
	elapsed := time.Since(start)
	assert.Equal(t, http.StatusGatewayTimeout, res.status)
	n := slow.Requests()
	assert.GreaterOrEqual(t, n, int64(1))
	assert.LessOrEqual(t, n, int64(2), "a third 400 ms attempt cannot fit in 1 s")
	assert.Len(t, rec.get(), int(n-1))
	o.requireFailure(t, gateway.ClassTimeout, int(n))
	assert.Less(t, elapsed, 5*time.Second)
}

// TestPerTryTimeout: an attempt that gets no response in PerTryTimeout
// fails as a timeout (sent); a GET goes on to the next upstream, a POST
// does not.
func TestPerTryTimeout(t *testing.T) {
	for _, c := range []struct {
		method string
		status int
	}{{http.MethodGet, http.StatusOK}, {http.MethodPost, http.StatusGatewayTimeout}} {
		t.Run(c.method, func(t *testing.T) {
			slow, healthy := gatewaytest.NewServer(gatewaytest.SlowHeaders), gatewaytest.NewHealthy(nil)
			slow.Delay = 10 * time.Second
			closeLater(t, slow, healthy)
			var rec retries
			o := &outer{}
			o.next = mustNew(t, Options{PerTryTimeout: 200 * time.Millisecond, OnRetry: rec.hook}).
				Wrap(newProxy(t, ordered(t, slow, healthy)))
			front := serve(t, o)
			res := do(t, front, newRequest(t, t.Context(), c.method, front.URL, strings.NewReader("x")))
			assert.Equal(t, c.status, res.status)
			assert.Equal(t, int64(1), slow.Requests())
			if c.status == http.StatusOK {
				require.Len(t, rec.get(), 1)
				assert.Equal(t, gateway.ClassTimeout, rec.get()[0].failure.Class)
				assert.True(t, rec.get()[0].failure.Sent)
				return
			}
			assert.Empty(t, rec.get())
			// A per-try timeout is not a client that went away.
			o.requireFailure(t, gateway.ClassTimeout, 1)
		})
	}
}

// TestPerTryTimeoutSparesStreams: the per-try timeout bounds an attempt
// until its response is passed; a body streamed for longer than that
// arrives whole.
func TestPerTryTimeoutSparesStreams(t *testing.T) {
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		for i := range 4 {
			_, _ = io.WriteString(w, "chunk\n")
			http.NewResponseController(w).Flush()
			if i < 3 {
				time.Sleep(200 * time.Millisecond)
			}
		}
	}))
	closeLater(t, up)
	front := serve(t, mustNew(t, Options{PerTryTimeout: 150 * time.Millisecond}).Wrap(newProxy(t, ordered(t, up))))
	res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
	require.NoError(t, res.err)
	assert.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, strings.Repeat("chunk\n", 4), res.body)
}
