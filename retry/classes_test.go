package retry

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// brokenBody is a client body that delivers data and then fails, as a
// malformed chunked body or a stalled upload past its read deadline does.
// It counts the reads that came after it failed: a retry must never read a
// broken client body again.
type brokenBody struct {
	data       []byte
	err        error
	failed     atomic.Bool
	readsAfter atomic.Int64 // reads after the first error
}

func (b *brokenBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	if !b.failed.CompareAndSwap(false, true) {
		b.readsAfter.Add(1)
	}
	return 0, b.err
}

func (b *brokenBody) Close() error { return nil }

// reporting is a handler under test that stands where a ReverseProxy would:
// each call is an attempt; fail returns the Failure the attempt reports
// through the gateway ErrorHandler, or nil to answer 200 "ok".
type reporting struct {
	calls atomic.Int64
	fail  func(attempt int64, r *http.Request) *gateway.Failure
}

func (h *reporting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.calls.Add(1)
	if f := h.fail(n, r); f != nil {
		gateway.NewErrorHandler(discard)(w, r, f)
		return
	}
	_, _ = io.WriteString(w, "ok")
}

// serveInProcess runs one request through o and returns what was written.
func serveInProcess(o *outer, req *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	o.ServeHTTP(w, req)
	return w
}

// TestClientBodyNeverRetried: an attempt that failed because the client's
// body could not be read (gateway.ClassClientBody) is passed to the client
// on the first attempt, whatever the method and the sent flag, and the
// broken body is never read again. The "unread" rows are the ones only the
// class can stop: the body reader saw no error (a wrapper outside retry
// failed the body), so the replay itself would have allowed a retry.
func TestClientBodyNeverRetried(t *testing.T) {
	bodyErr := errors.New("invalid byte in chunk length")
	for _, c := range []struct {
		name   string
		method string
		read   bool
		sent   bool
	}{
		{"PUT read, sent", http.MethodPut, true, true},
		{"PUT read, not sent", http.MethodPut, true, false},
		{"PUT unread, not sent", http.MethodPut, false, false},
		{"GET unread, not sent", http.MethodGet, false, false},
		{"POST read, not sent", http.MethodPost, true, false},
		{"POST unread, not sent", http.MethodPost, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := &brokenBody{data: []byte("part of an upload"), err: bodyErr}
			h := &reporting{fail: func(_ int64, r *http.Request) *gateway.Failure {
				err := bodyErr
				if c.read {
					_, err = io.Copy(io.Discard, r.Body)
					assert.ErrorIs(t, err, bodyErr)
				}
				f := gateway.NewFailure(gateway.ClassClientBody, "10.0.0.5:8080", err)
				f.Sent = c.sent
				return f
			}}
			var rec retries
			o := &outer{next: mustNew(t, Options{OnRetry: rec.hook}).Wrap(h)}
			req := httptest.NewRequest(c.method, "http://front.test/upload", body)
			req.ContentLength = -1

			w := serveInProcess(o, req)
			assert.Equal(t, http.StatusBadRequest, w.Code)
			assert.Equal(t, int64(1), h.calls.Load(), "one attempt only")
			assert.Empty(t, rec.get())
			o.requireFailure(t, gateway.ClassClientBody, 1)
			assert.Zero(t, body.readsAfter.Load(), "the broken client body was read again")
		})
	}
}

// TestBrokenClientBodyOnTheWireNotRetried: a malformed chunked body (issue
// 11's "zz" chunk size) sent over a real socket through retry and a
// ReverseProxy: gateway.Transport classifies it client_body (400), and the
// PUT, repeatable as it is, is not retried: no other upstream sees it.
func TestBrokenClientBodyOnTheWireNotRetried(t *testing.T) {
	a, b := gatewaytest.NewHealthy(hashUpstream()), gatewaytest.NewHealthy(hashUpstream())
	closeLater(t, a, b)
	var rec retries
	o := &outer{next: mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, a, b)))}
	front := serve(t, o)

	c, err := net.DialTimeout("tcp", front.Listener.Addr().String(), 10*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, "PUT /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n")
	require.NoError(t, err)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	res.Body.Close()

	assert.Equal(t, http.StatusBadRequest, res.StatusCode)
	assert.Empty(t, rec.get(), "a broken client body is never retried")
	assert.LessOrEqual(t, a.Requests(), int64(1))
	assert.Zero(t, b.Requests(), "no second upstream sees the request")
	o.requireFailure(t, gateway.ClassClientBody, 1)
}

// TestStaleConnectionRetriedAtOnce: an attempt that met a stale keep-alive
// connection (gateway.ClassStaleConn) is retried without the backoff delay
// when the policy allows it: always if nothing was sent, once sent only for
// a repeatable request. The backoff is made long (≥ 1 s, drawn at its
// maximum) and the request's deadline short (2 s), so that a retry that
// waited would be refused by the deadline check or show in OnRetry.
func TestStaleConnectionRetriedAtOnce(t *testing.T) {
	for _, c := range []struct {
		name    string
		method  string
		key     bool
		sent    bool
		retried bool
	}{
		{"GET sent", http.MethodGet, false, true, true},
		{"PUT sent", http.MethodPut, false, true, true},
		{"POST not sent", http.MethodPost, false, false, true},
		{"POST sent", http.MethodPost, false, true, false},
		{"POST sent, trusted Idempotency-Key", http.MethodPost, true, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := &reporting{fail: func(n int64, r *http.Request) *gateway.Failure {
				if n > 1 {
					b, err := io.ReadAll(r.Body)
					assert.NoError(t, err)
					assert.Equal(t, "body", string(b), "the retry gets the whole body")
					return nil
				}
				if c.sent {
					// The upstream read the request, then closed.
					_, _ = io.Copy(io.Discard, r.Body)
				}
				f := gateway.NewFailure(gateway.ClassStaleConn, "10.0.0.5:8080", io.EOF)
				f.Sent = c.sent
				return f
			}}
			var rec retries
			rt := mustNew(t, Options{OnRetry: rec.hook, BaseDelay: time.Second, MaxDelay: 4 * time.Second, TrustIdempotencyKey: true})
			rt.backoff.int64n = func(n int64) int64 { return n - 1 }
			o := &outer{next: rt.Wrap(h)}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			req := httptest.NewRequest(c.method, "http://front.test/", strings.NewReader("body")).WithContext(ctx)
			if c.key {
				req.Header.Set(IdempotencyKeyHeader, "k-1")
			}

			start := time.Now()
			w := serveInProcess(o, req)
			took := time.Since(start)
			if !c.retried {
				assert.Equal(t, http.StatusBadGateway, w.Code)
				assert.Equal(t, int64(1), h.calls.Load())
				assert.Empty(t, rec.get())
				o.requireFailure(t, gateway.ClassStaleConn, 1)
				return
			}
			assert.Equal(t, http.StatusOK, w.Code)
			assert.Equal(t, "ok", w.Body.String())
			assert.Equal(t, int64(2), h.calls.Load())
			require.Len(t, rec.get(), 1)
			assert.Equal(t, gateway.ClassStaleConn, rec.get()[0].failure.Class)
			assert.Zero(t, rec.get()[0].delay, "no backoff before a stale-connection retry")
			assert.Less(t, took, 500*time.Millisecond)
		})
	}
}

// TestStaleConnectionWithinCapAndBudget: immediate retries still count: the
// attempt cap ends them, and so does the budget.
func TestStaleConnectionWithinCapAndBudget(t *testing.T) {
	stale := func(int64, *http.Request) *gateway.Failure {
		f := gateway.NewFailure(gateway.ClassStaleConn, "10.0.0.5:8080", io.EOF)
		f.Sent = true
		return f
	}

	t.Run("attempt cap", func(t *testing.T) {
		h := &reporting{fail: stale}
		var rec retries
		rt := mustNew(t, Options{OnRetry: rec.hook, Attempts: 4, BudgetRatio: 1e9})
		o := &outer{next: rt.Wrap(h)}
		w := serveInProcess(o, httptest.NewRequest(http.MethodGet, "http://front.test/", nil))
		assert.Equal(t, http.StatusBadGateway, w.Code)
		assert.Equal(t, int64(4), h.calls.Load())
		o.requireFailure(t, gateway.ClassStaleConn, 4)
		for i, c := range rec.get() {
			assert.Equal(t, i+2, c.attempt)
			assert.Zero(t, c.delay)
		}
		assert.Equal(t, int64(3), rt.Stats().TotalRetries)
	})

	t.Run("budget", func(t *testing.T) {
		h := &reporting{fail: stale}
		// A budget with no ratio to speak of and a floor of one token: one
		// retry, then none.
		rt := mustNew(t, Options{BudgetRatio: 1e-9, BudgetMinPerSecond: 1e-9})
		o := &outer{next: rt.Wrap(h)}
		w := serveInProcess(o, httptest.NewRequest(http.MethodGet, "http://front.test/", nil))
		assert.Equal(t, http.StatusBadGateway, w.Code)
		assert.Equal(t, int64(2), h.calls.Load())
		f := o.requireFailure(t, gateway.ClassStaleConn, 2)
		assert.ErrorIs(t, f, gateway.ErrRetryBudget)
		assert.Equal(t, int64(1), rt.Stats().BudgetExhausted)
	})
}

// fastFail is a handler under test that stands where a breaker fast-fails:
// it answers every attempt with an open Failure naming upstream ("" as
// breaker.New does: it guards the route, not a host), through the gateway
// ErrorHandler.
func fastFail(upstream string) *reporting {
	return &reporting{fail: func(int64, *http.Request) *gateway.Failure {
		f := gateway.NewFailure(gateway.ClassOpen, upstream, errors.New("circuit breaker is open"))
		f.RetryAfter = 10 * time.Second
		return f
	}}
}

// TestOpenWithoutUpstreamNotRetried: an open Failure
// that names no upstream (a breaker guarding the whole route) is passed at
// once: no second attempt that would meet the same open breaker. One that
// names its upstream (a per-host breaker) is retried, so that another host
// may be picked. TestRouteBreakerOpenNotRetried does the same with
// breaker.New itself, and times it.
func TestOpenWithoutUpstreamNotRetried(t *testing.T) {
	for _, c := range []struct {
		upstream string
		calls    int64
	}{
		{"", 1},
		{"10.0.0.5:8080", 2},
	} {
		t.Run("upstream="+c.upstream, func(t *testing.T) {
			h := fastFail(c.upstream)
			if c.upstream != "" {
				// The retry picks another host, which answers.
				open := h.fail
				h.fail = func(n int64, r *http.Request) *gateway.Failure {
					if n > 1 {
						return nil
					}
					return open(n, r)
				}
			}
			var rec retries
			rt := mustNew(t, Options{OnRetry: rec.hook})
			o := &outer{next: rt.Wrap(h)}
			w := serveInProcess(o, httptest.NewRequest(http.MethodPost, "http://front.test/", strings.NewReader("x")))
			assert.Equal(t, c.calls, h.calls.Load())
			if c.upstream != "" {
				assert.Equal(t, http.StatusOK, w.Code)
				assert.Equal(t, []gateway.Class{gateway.ClassOpen}, rec.classes())
				return
			}
			assert.Equal(t, http.StatusServiceUnavailable, w.Code)
			assert.Contains(t, []string{"10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "20"},
				w.Header().Get("Retry-After"), "10 s, spread over [10, 20] s")
			assert.Empty(t, rec.get())
			o.requireFailure(t, gateway.ClassOpen, 1)
		})
	}
}

// TestRetryLogLinesNumberAttempts: Retry's own debug
// line per retry names the attempt about to start (2, then 3), the failure
// that caused it and its upstream; OnRetry's Failure carries the number of
// the attempt that failed; the final warn line says attempts=3.
func TestRetryLogLinesNumberAttempts(t *testing.T) {
	a, b, c := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewServer(gatewaytest.Refused)
	closeLater(t, a, b, c)
	logs := &logRecorder{}
	var rec retries
	rt := mustNew(t, Options{Logger: slog.New(logs), OnRetry: rec.hook})
	front := serve(t, rt.Wrap(newProxy(t, ordered(t, a, b, c))))
	res := do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL+"/p", nil))
	assert.Equal(t, http.StatusBadGateway, res.status)

	lines := logs.lines(slog.LevelDebug, "retry: retrying")
	require.Len(t, lines, 2)
	for i, up := range []string{a.Addr, b.Addr} {
		assert.Equal(t, []string{"2", "3"}[i], lines[i]["attempt"])
		assert.Equal(t, "refused", lines[i]["class"])
		assert.Equal(t, up, lines[i]["upstream"])
		assert.Equal(t, "/p", lines[i]["path"])
	}
	calls := rec.get()
	require.Len(t, calls, 2)
	for i, call := range calls {
		assert.Equal(t, i+2, call.attempt)
		assert.Equal(t, i+1, call.failure.Attempts)
	}
	warn := logs.lines(slog.LevelWarn, "proxy: upstream failure")
	require.Len(t, warn, 1)
	assert.Equal(t, "3", warn[0]["attempts"])
	assert.Equal(t, c.Addr, warn[0]["upstream"])
}

// TestStaleConnectionOnTheWire: a stale keep-alive resend through retry, on real
// sockets. A keep-alive connection to upstream A is left idle; then A turns
// into one that reads each request and closes the connection. The next
// request goes out on the idle connection, once (gateway.Transport stops
// net/http's own resend), and fails as stale_connection, sent. Retry then
// decides: a GET, or a POST whose Idempotency-Key is trusted, goes again at
// once (the backoff is 1 s, drawn at its maximum, so a wait would show) and
// B answers; a POST whose key is not trusted is not sent again anywhere.
func TestStaleConnectionOnTheWire(t *testing.T) {
	for _, c := range []struct {
		name    string
		method  string
		trust   bool
		retried bool
	}{
		{"GET", http.MethodGet, false, true},
		{"POST with key, trusted", http.MethodPost, true, true},
		{"POST with key, untrusted", http.MethodPost, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil)
			closeLater(t, a, b)
			var rec retries
			rt := mustNew(t, Options{OnRetry: rec.hook, TrustIdempotencyKey: c.trust, BaseDelay: time.Second, MaxDelay: time.Second})
			rt.backoff.int64n = func(n int64) int64 { return n - 1 }
			o := &outer{next: rt.Wrap(newProxy(t, ordered(t, a, b)))}
			idle := make(chan struct{}, 4)
			front := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				trace := &httptrace.ClientTrace{PutIdleConn: func(err error) {
					if err == nil {
						idle <- struct{}{}
					}
				}}
				o.ServeHTTP(w, r.WithContext(httptrace.WithClientTrace(r.Context(), trace)))
			}))

			// Warm up: one connection to A, idle in the proxy's pool.
			require.Equal(t, http.StatusOK, do(t, front, newRequest(t, t.Context(), http.MethodGet, front.URL, nil)).status)
			select {
			case <-idle:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream connection did not go idle")
			}
			require.NoError(t, a.SetFault(gatewaytest.CloseAfterRequest))

			req := newRequest(t, t.Context(), c.method, front.URL+"/apply", nil)
			req.Header.Set(IdempotencyKeyHeader, "k1")
			start := time.Now()
			res := do(t, front, req)
			took := time.Since(start)

			assert.EqualValues(t, 2, a.Requests(), "warm-up + exactly one: no resend behind the policy")
			if !c.retried {
				assert.Equal(t, http.StatusBadGateway, res.status)
				assert.Zero(t, b.Requests(), "sent once, and nowhere else")
				assert.Empty(t, rec.get())
				assert.True(t, o.requireFailure(t, gateway.ClassStaleConn, 1).Sent)
				return
			}
			assert.Equal(t, http.StatusOK, res.status)
			assert.EqualValues(t, 1, b.Requests())
			require.Len(t, rec.get(), 1)
			call := rec.get()[0]
			assert.Equal(t, gateway.ClassStaleConn, call.failure.Class)
			assert.True(t, call.failure.Sent)
			assert.Equal(t, a.Addr, call.failure.Upstream)
			assert.Zero(t, call.delay)
			assert.Less(t, took, 500*time.Millisecond, "the retry waited")
		})
	}
}

// TestShedRetriedAtOnceElsewhere: a request shed as overloaded is retried
// at once; when the retry finds no other host (no_upstream), the client
// learns that the service is overloaded, not that it has no host.
func TestShedRetriedAtOnceElsewhere(t *testing.T) {
	rt := mustNew(t, Options{BaseDelay: time.Second, MaxDelay: time.Second})
	var calls atomic.Int64
	eh := gateway.NewErrorHandler(slog.New(slog.DiscardHandler))
	h := rt.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := gateway.NewFailure(gateway.ClassNoUpstream, "10.0.0.5:80", nil)
		if calls.Add(1) == 1 {
			f = gateway.NewFailure(gateway.ClassOverloaded, "10.0.0.5:80", nil)
		}
		eh(w, r, f)
	}))
	var got *gateway.Failure
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &failureCatcher{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		got = rec.f
	})
	start := time.Now()
	rec := httptest.NewRecorder()
	outer.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	assert.Less(t, time.Since(start), 500*time.Millisecond, "no backoff before the retry of a shed request")
	assert.EqualValues(t, 2, calls.Load(), "retried once")
	require.NotNil(t, got)
	assert.Equal(t, gateway.ClassOverloaded, got.Class, "the client is told the service is overloaded")
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
}

// failureCatcher is an enclosing layer that takes the Failure handed out.
type failureCatcher struct {
	http.ResponseWriter
	f *gateway.Failure
}

func (c *failureCatcher) RecordFailure(f *gateway.Failure) { c.f = f }
func (c *failureCatcher) Unwrap() http.ResponseWriter      { return c.ResponseWriter }
