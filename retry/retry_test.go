package retry

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestGETFailsOverFromRefused: a GET whose first pick refuses the
// connection succeeds on the next upstream, and the balancer skipped the
// refused host thanks to the trail.
func TestGETFailsOverFromRefused(t *testing.T) {
	refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(nil)
	closeLater(t, refused, healthy)
	var rec retries
	rt := mustNew(t, Options{OnRetry: rec.hook})
	front := serve(t, rt.Wrap(newProxy(t, ordered(t, refused, healthy))))

	res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL+"/x", nil))
	require.NoError(t, res.err)
	assert.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, "ok\n", res.body)
	assert.Equal(t, healthy.Addr, res.header.Get("X-Upstream"))
	assert.Equal(t, int64(1), healthy.Requests())
	assert.Equal(t, []gateway.Class{gateway.ClassRefused}, rec.classes())
	c := rec.get()[0]
	assert.Equal(t, 2, c.attempt, "OnRetry names the attempt about to start")
	assert.Equal(t, 1, c.failure.Attempts)
	assert.False(t, c.failure.Sent)
	assert.Equal(t, refused.Addr, c.failure.Upstream)
	assert.Less(t, c.delay, 2*time.Millisecond)
}

// TestEveryMethodSurvivesOneRefusingUpstream: with one of two upstreams
// refusing, round robin, every request of every method succeeds.
func TestEveryMethodSurvivesOneRefusingUpstream(t *testing.T) {
	refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(hashUpstream())
	closeLater(t, refused, healthy)
	// This naive balancer never rests the refusing host, so half of the
	// requests need a retry: more than the budget allows (that is tested
	// on its own). Take it out of the way.
	rt := mustNew(t, Options{BudgetRatio: math.Inf(1)})
	front := serve(t, rt.Wrap(newProxy(t, roundRobin(t, refused, healthy))))
	for _, m := range []string{"GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "LOCK"} {
		for range 4 {
			res := do(t, front, newRequest(t, t.Context(), m, front.URL, strings.NewReader("body")))
			assert.Equal(t, http.StatusOK, res.status, m)
		}
	}
	assert.Equal(t, int64(28), healthy.Requests())
	assert.Positive(t, rt.Stats().TotalRetries)
}

// TestNonIdempotentRetriedOnlyWhenNotSent: a POST to a refused host is
// retried (nothing was sent); a POST that an upstream read and then reset
// is not (it may have been applied), and that upstream saw it once. A GET
// in the same situation is retried; so is a POST with an Idempotency-Key
// when the user trusts the key.
func TestNonIdempotentRetriedOnlyWhenNotSent(t *testing.T) {
	t.Run("POST refused is retried", func(t *testing.T) {
		refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(hashUpstream())
		closeLater(t, refused, healthy)
		front := serve(t, mustNew(t, Options{}).Wrap(newProxy(t, ordered(t, refused, healthy))))
		res := do(t, front, newRequest(t, t.Context(), http.MethodPost, front.URL, strings.NewReader("hello")))
		assert.Equal(t, http.StatusOK, res.status)
		assert.Equal(t, "5", res.header.Get("X-Body-Len"))
		assert.Equal(t, int64(1), healthy.Requests())
	})

	cases := []struct {
		name    string
		method  string
		key     string
		trust   bool
		retried bool
	}{
		{"POST sent is not retried", http.MethodPost, "", false, false},
		{"PATCH sent is not retried", http.MethodPatch, "", false, false},
		{"POST with key, untrusted, is not retried", http.MethodPost, "k-1", false, false},
		{"POST with key, trusted, is retried", http.MethodPost, "k-1", true, true},
		{"GET sent is retried", http.MethodGet, "", false, true},
		{"PUT sent is retried", http.MethodPut, "", false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reset, healthy := gatewaytest.NewServer(gatewaytest.ResetAfterRequest), gatewaytest.NewHealthy(nil)
			closeLater(t, reset, healthy)
			o := &outer{}
			o.next = mustNew(t, Options{TrustIdempotencyKey: c.trust}).Wrap(newProxy(t, ordered(t, reset, healthy)))
			front := serve(t, o)
			req := newRequest(t, t.Context(), c.method, front.URL, strings.NewReader("charge=100"))
			if c.key != "" {
				req.Header.Set("Idempotency-Key", c.key)
			}
			res := do(t, front, req)
			assert.Equal(t, int64(1), reset.Requests(), "the resetting upstream read the request exactly once")
			if c.retried {
				assert.Equal(t, http.StatusOK, res.status)
				assert.Equal(t, int64(1), healthy.Requests())
				return
			}
			assert.Equal(t, http.StatusBadGateway, res.status)
			assert.Equal(t, int64(0), healthy.Requests(), "a request that may have been applied must not go anywhere else")
			assert.True(t, o.requireFailure(t, gateway.ClassReset, 1).Sent)
		})
	}
}

// TestFinalFailureCarriesAttemptsAndIsLoggedOnce: when every attempt fails,
// the client gets the last failure; the Failure reaching the enclosing layer
// carries the attempt count; without an enclosing layer, retry logs exactly
// one warn line for it, plus a debug line per retry.
func TestFinalFailureCarriesAttemptsAndIsLoggedOnce(t *testing.T) {
	a, b := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewServer(gatewaytest.Refused)
	closeLater(t, a, b)

	t.Run("outermost", func(t *testing.T) {
		logs := &logRecorder{}
		rt := mustNew(t, Options{Logger: slog.New(logs)})
		front := serve(t, rt.Wrap(newProxy(t, ordered(t, a, b))))
		res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL+"/p", nil))
		assert.Equal(t, http.StatusBadGateway, res.status)
		warn := logs.lines(slog.LevelWarn, "proxy: upstream failure")
		require.Len(t, warn, 1)
		assert.Equal(t, "refused", warn[0]["class"])
		assert.Equal(t, "3", warn[0]["attempts"])
		assert.Equal(t, "/p", warn[0]["path"])
		assert.Len(t, logs.lines(slog.LevelDebug, "retry: retrying"), 2)
	})

	t.Run("inside an enclosing layer", func(t *testing.T) {
		logs := &logRecorder{}
		o := &outer{}
		o.next = mustNew(t, Options{Logger: slog.New(logs)}).Wrap(newProxy(t, ordered(t, a, b)))
		front := serve(t, o)
		res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
		assert.Equal(t, http.StatusBadGateway, res.status)
		o.requireFailure(t, gateway.ClassRefused, 3)
		assert.Empty(t, logs.lines(slog.LevelWarn, "proxy: upstream failure"), "the enclosing layer logs it")
	})
}

// TestReplay200KiB: a 200 KiB body reaches the upstream byte-exact after a
// failure, whether the failed attempt read none of it (refused), all of it
// (an upstream that read it and reset, for a PUT), or part of it (an
// upstream that answered 503 early), with and without a Content-Length.
func TestReplay200KiB(t *testing.T) {
	const size = 200 << 10
	want := sha(size)
	partial := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	cases := []struct {
		name   string
		method string
		first  func() *gatewaytest.Server
	}{
		{"POST after refused (not sent)", http.MethodPost, func() *gatewaytest.Server { return gatewaytest.NewServer(gatewaytest.Refused) }},
		{"PUT after reset_after_request (all read)", http.MethodPut, func() *gatewaytest.Server { return gatewaytest.NewServer(gatewaytest.ResetAfterRequest) }},
		{"PUT after an early 503 (part read)", http.MethodPut, func() *gatewaytest.Server { return gatewaytest.NewHealthy(partial) }},
	}
	for _, c := range cases {
		for _, chunked := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/chunked=%t", c.name, chunked), func(t *testing.T) {
				first, healthy := c.first(), gatewaytest.NewHealthy(hashUpstream())
				closeLater(t, first, healthy)
				var rec retries
				front := serve(t, mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, first, healthy))))
				var body io.Reader = &pattern{n: size}
				req := newRequest(t, t.Context(), c.method, front.URL, body)
				if !chunked {
					req.ContentLength = size
				}
				res := do(t, front, req)
				require.Equal(t, http.StatusOK, res.status)
				assert.Equal(t, want, res.header.Get("X-Body-Sha256"))
				assert.Equal(t, fmt.Sprint(size), res.header.Get("X-Body-Len"))
				assert.Len(t, rec.get(), 1)
			})
		}
	}
}

// TestNoRetryAfterCommit: once the response's status went to the client, a
// body that breaks is not retried: the client's connection is aborted (the
// ReverseProxy's http.ErrAbortHandler panic propagates) and no other
// upstream is tried.
func TestNoRetryAfterCommit(t *testing.T) {
	broken, healthy := gatewaytest.NewServer(gatewaytest.CloseMidBody), gatewaytest.NewHealthy(nil)
	closeLater(t, broken, healthy)
	var rec retries
	front := serve(t, mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, broken, healthy))))
	res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
	assert.Equal(t, http.StatusOK, res.status)
	assert.Error(t, res.err, "the client must see the body cut, not a clean end")
	assert.Less(t, len(res.body), 1<<20)
	assert.Equal(t, int64(1), broken.Requests())
	assert.Equal(t, int64(0), healthy.Requests())
	assert.Empty(t, rec.get())
}

// TestDiscardedAttemptBodyBreakIsRecovered: an upstream 503 whose body
// breaks while the (discarded) response is drained makes ReverseProxy panic
// with http.ErrAbortHandler; nothing reached the client, so the retry goes
// on and the client gets the next upstream's answer.
func TestDiscardedAttemptBodyBreakIsRecovered(t *testing.T) {
	breaking := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100000\r\n\r\n")
		_, _ = c.Write(make([]byte, 1000))
		_ = c.Close()
	}))
	healthy := gatewaytest.NewHealthy(nil)
	closeLater(t, breaking, healthy)
	var rec retries
	front := serve(t, mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, breaking, healthy))))
	res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
	require.NoError(t, res.err)
	assert.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, "ok\n", res.body)
	require.Len(t, rec.get(), 1)
	assert.Equal(t, 503, rec.get()[0].failure.Status)
}

// TestClientCancelStopsRetries: a client that goes away is not retried for:
// the upstream sees one request, OnRetry is never called, and the enclosing
// layer learns "canceled" with one attempt.
func TestClientCancelStopsRetries(t *testing.T) {
	hang, healthy := gatewaytest.NewServer(gatewaytest.Hang), gatewaytest.NewHealthy(nil)
	closeLater(t, hang, healthy)
	var rec retries
	o := &outer{next: mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, hang, healthy)))}
	c := leave(t, o)
	require.Eventually(t, func() bool { return hang.Requests() == 1 }, 10*time.Second, 5*time.Millisecond)
	c.goAway(t)
	assert.Equal(t, int64(1), hang.Requests())
	assert.Equal(t, int64(0), healthy.Requests())
	assert.Empty(t, rec.get())
	o.requireFailure(t, gateway.ClassCanceled, 1)
}

// TestAttemptHeader: the optional attempt header carries the attempt
// number upstream, replaces a client-sent value, and the inbound request's
// header is restored afterwards.
func TestAttemptHeader(t *testing.T) {
	refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(hashUpstream())
	closeLater(t, refused, healthy)
	inner := mustNew(t, Options{AttemptHeader: "x-attempt"}).Wrap(newProxy(t, ordered(t, refused, healthy)))
	after := make(chan string, 1)
	front := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(w, r)
		after <- r.Header.Get("X-Attempt")
	}))
	req := newRequest(t, t.Context(), http.MethodGet, front.URL, nil)
	req.Header.Set("X-Attempt", "99")
	res := do(t, front, req)
	assert.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, "2", res.header.Get("X-Seen-Attempt"))
	assert.Equal(t, "99", <-after)
}

// TestStats: the counters see requests and retries.
func TestStats(t *testing.T) {
	refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(nil)
	closeLater(t, refused, healthy)
	rt := mustNew(t, Options{})
	front := serve(t, rt.Wrap(newProxy(t, ordered(t, refused, healthy))))
	for range 3 {
		assert.Equal(t, http.StatusOK, do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil)).status)
	}
	s := rt.Stats()
	assert.Equal(t, int64(3), s.Requests)
	assert.Equal(t, int64(3), s.Retries)
	assert.Equal(t, int64(3), s.TotalRetries)
	assert.Zero(t, s.BudgetExhausted)
}

// TestUpstreamStatusExhausted: an upstream's own 503 is retried while
// attempts last; the last 503 goes to the client as the upstream sent it,
// and the enclosing layer gets its Failure, naming the upstream (from the
// trail) and the attempt count.
func TestUpstreamStatusExhausted(t *testing.T) {
	a, b := gatewaytest.NewStatus(503, ""), gatewaytest.NewStatus(503, "")
	closeLater(t, a, b)
	var rec retries
	o := &outer{}
	o.next = mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, a, b)))
	front := serve(t, o)
	res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
	assert.Equal(t, http.StatusServiceUnavailable, res.status)
	assert.Equal(t, "Service Unavailable from upstream\n", res.body)
	assert.Equal(t, int64(3), a.Requests()+b.Requests())
	require.Len(t, rec.get(), 2)
	assert.Equal(t, a.Addr, rec.get()[0].failure.Upstream)
	assert.Equal(t, b.Addr, rec.get()[1].failure.Upstream)
	assert.Equal(t, 503, o.requireFailure(t, gateway.ClassUpstreamStatus, 3).Status)
}

// TestCancelDuringBackoff: a client that leaves while the middleware waits
// out a Retry-After ends the request at once: no further attempt, nothing
// written, and the enclosing layer learns "canceled".
func TestCancelDuringBackoff(t *testing.T) {
	busy, healthy := gatewaytest.NewStatus(503, "1"), gatewaytest.NewHealthy(nil)
	closeLater(t, busy, healthy)
	var rec retries
	o := &outer{next: mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, busy, healthy)))}
	c := leave(t, o)
	require.Eventually(t, func() bool { return len(rec.get()) == 1 }, 10*time.Second, time.Millisecond)
	start := time.Now()
	c.goAway(t)
	assert.Less(t, time.Since(start), 900*time.Millisecond, "the 1 s wait was cut short")
	assert.Equal(t, int64(0), healthy.Requests())
	o.requireFailure(t, gateway.ClassCanceled, 1)
}

// TestAnyHandler: the middleware works for any handler that reports its
// failures the gateway way: one that records a Failure and writes it is
// retried; one that records a Failure and writes nothing gets it written.
func TestAnyHandler(t *testing.T) {
	refused := func() *gateway.Failure {
		return gateway.NewFailure(gateway.ClassRefused, "10.0.0.5:8080", errors.New("connection refused"))
	}
	calls := 0
	flaky := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls == 1 {
			f := refused()
			gateway.RecordFailure(w, f)
			gateway.WriteFailure(w, r, f)
			return
		}
		_, _ = io.WriteString(w, "fine")
	})
	front := serve(t, mustNew(t, Options{}).Wrap(flaky))
	res := do(t, front, newRequest(t, t.Context(), http.MethodPost, front.URL, strings.NewReader("x")))
	assert.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, "fine", res.body)
	assert.Equal(t, 2, calls)

	mute := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gateway.RecordFailure(w, refused()) })
	o := &outer{next: mustNew(t, Options{}).Wrap(mute)}
	front = serve(t, o)
	res = do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
	assert.Equal(t, http.StatusBadGateway, res.status)
	assert.True(t, strings.HasPrefix(res.body, "502 Bad Gateway: "))
	o.requireFailure(t, gateway.ClassRefused, 1)
}
