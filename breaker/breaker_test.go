package breaker_test

import (
	"context"
	"io"
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
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// Modes of a controlled upstream.
const (
	modeOK     int32 = iota // 200
	modeStatus              // answer with status
	modeBlock               // wait for the gate, then 200
)

// controlled is an upstream on loopback whose behaviour a test switches:
// answer 200, answer a status, or hold requests until released.
type controlled struct {
	*gatewaytest.Server
	mode    atomic.Int32
	status  atomic.Int32
	gate    chan struct{}
	entered chan struct{}
}

func newControlled(t *testing.T, mode int32, status int) *controlled {
	c := &controlled{gate: make(chan struct{}), entered: make(chan struct{}, 64)}
	c.mode.Store(mode)
	c.status.Store(int32(status))
	c.Server = gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch c.mode.Load() {
		case modeStatus:
			w.WriteHeader(int(c.status.Load()))
			return
		case modeBlock:
			c.entered <- struct{}{}
			select {
			case <-c.gate:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	}))
	t.Cleanup(c.Close)
	return c
}

// hold switches the upstream to holding requests, starts n requests with
// do, and returns once the upstream holds all of them. The returned func
// releases them and waits for each to end in 200.
func (c *controlled) hold(t *testing.T, n int, do func() (*http.Response, error)) (release func()) {
	c.mode.Store(modeBlock)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := do()
			if assert.NoError(t, err) {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				assert.Equal(t, http.StatusOK, res.StatusCode)
			}
		}()
	}
	for range n {
		<-c.entered
	}
	return func() {
		close(c.gate)
		wg.Wait()
	}
}

// outer stands where a retry or errorpage layer would: it passes every
// response and remembers the last status and Failure it saw.
type outer struct {
	mu      sync.Mutex
	status  int
	failure *gateway.Failure
	next    http.Handler
}

func (o *outer) Decide(status int, _ http.Header, f *gateway.Failure) gateway.Decision {
	o.mu.Lock()
	o.status, o.failure = status, f
	o.mu.Unlock()
	return gateway.Pass
}

func (o *outer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.next.ServeHTTP(newInterceptor(w, o), r)
}

func (o *outer) last() (int, *gateway.Failure) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.status, o.failure
}

// newProxy returns a ReverseProxy to target on a fresh tuned transport.
func newProxy(t *testing.T, target string) *httputil.ReverseProxy {
	u, err := url.Parse(target)
	require.NoError(t, err)
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	return &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(quiet),
	}
}

// seat serves b.Wrap(proxy to target) behind an outer layer, on loopback.
func seat(t *testing.T, b *breaker.Breaker, target string) (*outer, *httptest.Server) {
	o := &outer{next: b.Wrap(newProxy(t, target))}
	front := httptest.NewServer(o)
	t.Cleanup(front.Close)
	t.Cleanup(front.Client().CloseIdleConnections)
	return o, front
}

func get(t *testing.T, c *http.Client, u string) *http.Response {
	t.Helper()
	res, err := c.Get(u)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

func only(t *testing.T, st []breaker.Status) breaker.Status {
	t.Helper()
	require.Len(t, st, 1)
	return st[0]
}

// waitOpenEnd sleeps until an open breaker's period is over.
func waitOpenEnd(t *testing.T, st breaker.Status) {
	t.Helper()
	require.Equal(t, breaker.StateOpen, st.State)
	time.Sleep(time.Until(st.OpenUntil) + 10*time.Millisecond)
}

// TestLifecycle drives one breaker through every transition against a real
// upstream: trip, fast-fail, a failed probe that reopens, the probe limit
// while half-open, and recovery. Each transition is logged and hooked.
func TestLifecycle(t *testing.T) {
	up := newControlled(t, modeStatus, http.StatusBadGateway)
	var logs gatewaytest.SafeBuffer
	var mu sync.Mutex
	var seen []string
	b, err := breaker.New(breaker.Settings{
		Name:    "route",
		Timeout: 250 * time.Millisecond,
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
		OnStateChange: func(name, key string, from, to breaker.State) {
			mu.Lock()
			seen = append(seen, name+":"+from.String()+">"+to.String())
			mu.Unlock()
		},
	})
	require.NoError(t, err)
	rec, front := seat(t, b, up.URL)
	c := front.Client()

	// Trip: 5 consecutive failures.
	for i := range 5 {
		assert.Equal(t, http.StatusBadGateway, get(t, c, front.URL).StatusCode, "request %d", i)
	}
	st := only(t, b.States())
	require.Equal(t, breaker.StateOpen, st.State, "5 consecutive failures trip")
	assert.WithinDuration(t, time.Now().Add(250*time.Millisecond), st.OpenUntil, 250*time.Millisecond)

	// Fast-fail: 503 with Retry-After, the upstream untouched, the outer
	// layer told why.
	res := get(t, c, front.URL)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Contains(t, []string{"1", "2", "3"}, res.Header.Get("Retry-After"), "250 ms left, rounded up, spread over [1, 3] s")
	_, f := rec.last()
	require.NotNil(t, f)
	assert.Equal(t, gateway.ClassOpen, f.Class)
	assert.False(t, f.Sent)
	assert.EqualValues(t, 5, up.Requests(), "an open breaker does not touch the upstream")

	// A failed probe reopens.
	waitOpenEnd(t, st)
	assert.Equal(t, http.StatusBadGateway, get(t, c, front.URL).StatusCode)
	assert.EqualValues(t, 6, up.Requests(), "the probe reached the upstream")
	st = only(t, b.States())
	assert.Equal(t, breaker.StateOpen, st.State, "a failed probe reopens")

	// Half-open admits 3 probes at a time; a fourth request fast-fails.
	waitOpenEnd(t, st)
	release := up.hold(t, 3, func() (*http.Response, error) { return c.Get(front.URL) })
	assert.Equal(t, breaker.StateHalfOpen, only(t, b.States()).State)
	res = get(t, c, front.URL)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "no fourth probe")
	assert.Contains(t, []string{"1", "2", "3"}, res.Header.Get("Retry-After"))
	assert.EqualValues(t, 9, up.Requests())

	// Recovery: 3 successful probes close the breaker.
	release()
	assert.Equal(t, breaker.StateClosed, only(t, b.States()).State)
	up.mode.Store(modeOK)
	for range 10 {
		assert.Equal(t, http.StatusOK, get(t, c, front.URL).StatusCode)
	}

	mu.Lock()
	assert.Equal(t, []string{
		"route:closed>open", "route:open>half-open", "route:half-open>open",
		"route:open>half-open", "route:half-open>closed",
	}, seen)
	mu.Unlock()
	out := logs.String()
	// The out spell's start and end are warn; the half-open tries within
	// it are debug.
	assert.Equal(t, 2, strings.Count(out, "level=WARN msg=\"breaker: state changed\""), out)
	assert.Contains(t, out, "breaker=route key=\"\" from=closed to=open open_for=250ms")
}

// TestNeverTrips: client cancellations, 404s and (by default) 500s and 501s
// never trip a breaker; 500s do when configured.
func TestNeverTrips(t *testing.T) {
	t.Run("canceled", func(t *testing.T) {
		up := newControlled(t, modeBlock, 0)
		b, err := breaker.New(breaker.Settings{Logger: quiet})
		require.NoError(t, err)
		h := b.Wrap(newProxy(t, up.URL))
		for range 10 {
			ctx, cancel := context.WithCancel(context.Background())
			go func() { <-up.entered; cancel() }()
			w := httptest.NewRecorder()
			assert.PanicsWithValue(t, http.ErrAbortHandler, func() {
				h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil).WithContext(ctx))
			}, "the outermost layer aborts the response of a client that went away")
			cancel()
		}
		st := only(t, b.States())
		assert.Equal(t, breaker.StateClosed, st.State)
		assert.EqualValues(t, 10, st.Counts.Exclusions, "cancellations are excluded")
		assert.Zero(t, st.Counts.Failures)
	})
	for _, tc := range []struct {
		name         string
		status       int
		serverErrors bool
		trips        bool
	}{
		{"404", http.StatusNotFound, false, false},
		{"429", http.StatusTooManyRequests, false, false},
		{"500", http.StatusInternalServerError, false, false},
		{"501", http.StatusNotImplemented, false, false},
		{"500_counted", http.StatusInternalServerError, true, true},
		{"501_counted", http.StatusNotImplemented, true, true},
		{"503", http.StatusServiceUnavailable, false, true},
		{"504", http.StatusGatewayTimeout, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newControlled(t, modeStatus, tc.status)
			b, err := breaker.New(breaker.Settings{Logger: quiet, CountServerErrors: tc.serverErrors})
			require.NoError(t, err)
			_, front := seat(t, b, up.URL)
			for range 30 {
				get(t, front.Client(), front.URL)
			}
			st := only(t, b.States())
			if tc.trips {
				assert.Equal(t, breaker.StateOpen, st.State)
				assert.EqualValues(t, 5, up.Requests())
			} else {
				assert.Equal(t, breaker.StateClosed, st.State)
				assert.EqualValues(t, 30, st.Counts.Successes)
				assert.EqualValues(t, 30, up.Requests())
			}
		})
	}
}

// statusHandler answers each request with the next status of a script.
func statusHandler(statuses ...int) http.Handler {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(statuses[int(n.Add(1)-1)%len(statuses)])
	})
}

func serve(h http.Handler, n int) {
	for range n {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}
}

// TestFailureRatio: alternating failures never make 5 in a row, but trip
// the breaker once 20 requests completed with half of them failed.
func TestFailureRatio(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet})
	require.NoError(t, err)
	h := b.Wrap(statusHandler(200, 502))
	serve(h, 19)
	st := only(t, b.States())
	assert.Equal(t, breaker.StateClosed, st.State, "19 requests are too few")
	assert.EqualValues(t, 9, st.Counts.Failures)
	serve(h, 1)
	assert.Equal(t, breaker.StateOpen, only(t, b.States()).State, "10 of 20 failed")

	b, err = breaker.New(breaker.Settings{Logger: quiet})
	require.NoError(t, err)
	serve(b.Wrap(statusHandler(200, 200, 502)), 60)
	assert.Equal(t, breaker.StateClosed, only(t, b.States()).State, "a third failing is below the ratio")
}

// TestRollingWindow: failures age out of the window bucket by bucket.
func TestRollingWindow(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet, Interval: 200 * time.Millisecond, BucketPeriod: 50 * time.Millisecond})
	require.NoError(t, err)
	h := b.Wrap(statusHandler(502))
	serve(h, 4)
	require.EqualValues(t, 4, only(t, b.States()).Counts.ConsecutiveFailures)
	require.Eventually(t, func() bool { return only(t, b.States()).Counts.Requests == 0 },
		5*time.Second, 20*time.Millisecond, "counts age out of the window")
	serve(h, 4)
	assert.Equal(t, breaker.StateClosed, only(t, b.States()).State, "4 old + 4 new failures are not 5 in a window")
	serve(h, 1)
	assert.Equal(t, breaker.StateOpen, only(t, b.States()).State)
}

// TestHookMayReadStates: hooks run outside the breaker's lock, so a hook
// that reads the breakers does not deadlock.
func TestHookMayReadStates(t *testing.T) {
	var b *breaker.Breaker
	got := make(chan breaker.State, 8)
	b, err := breaker.New(breaker.Settings{Logger: quiet, OnStateChange: func(_, _ string, _, to breaker.State) {
		got <- only(t, b.States()).State
	}})
	require.NoError(t, err)
	serve(b.Wrap(statusHandler(502)), 5)
	assert.Equal(t, breaker.StateOpen, <-got)
}

// TestPanicCounts: a handler that panics counts as a failure, and the panic
// goes on up.
func TestPanicCounts(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet})
	require.NoError(t, err)
	h := b.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
	assert.PanicsWithValue(t, http.ErrAbortHandler, func() { serve(h, 1) })
	assert.EqualValues(t, 1, only(t, b.States()).Counts.Failures)
}

func TestSettingsValidate(t *testing.T) {
	for name, s := range map[string]breaker.Settings{
		"ratio>1":       {FailureRatio: 1.5},
		"ratio<0":       {FailureRatio: -0.1},
		"timeout<0":     {Timeout: -time.Second},
		"interval<0":    {Interval: -time.Second},
		"not multiple":  {Interval: 1500 * time.Millisecond, BucketPeriod: time.Second},
		"too many":      {Interval: time.Hour, BucketPeriod: time.Millisecond},
		"max keys":      {MaxKeys: -1},
		"bucket<0":      {BucketPeriod: -time.Second},
		"bucket>window": {Interval: time.Second, BucketPeriod: 2 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := breaker.New(s)
			assert.Error(t, err)
			_, err = breaker.PerHost(s)
			assert.Error(t, err)
		})
	}
	_, err := breaker.PerHost(breaker.Settings{Key: func(*http.Request) string { return "" }})
	assert.Error(t, err, "PerHost keys by host")
	_, err = breaker.New(breaker.Settings{Interval: 500 * time.Millisecond})
	assert.NoError(t, err, "BucketPeriod defaults to at most Interval")
	for _, iv := range []time.Duration{1500 * time.Millisecond, 2500 * time.Millisecond, 1234567 * time.Nanosecond} {
		_, err = breaker.New(breaker.Settings{Interval: iv})
		assert.NoError(t, err, "Interval %v set alone: the default BucketPeriod yields", iv)
	}
}

// TestLongResponsesFreeProbeSlots: while half-open, three long-lived
// streams are the probes; they succeed when their status is decided, so the
// breaker closes and the next request goes through instead of waiting for
// the streams to end.
func TestLongResponsesFreeProbeSlots(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusBadGateway)
		case "/stream":
			w.WriteHeader(http.StatusOK)
			_ = http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			_, _ = io.WriteString(w, "ok")
		}
	})
	b, err := breaker.New(breaker.Settings{Timeout: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	front := httptest.NewServer(b.Wrap(h))
	defer front.Close()
	c := front.Client()
	for range 5 {
		get(t, c, front.URL+"/fail")
	}
	require.Equal(t, breaker.StateOpen, only(t, b.States()).State)
	time.Sleep(150 * time.Millisecond) // the open period ends

	for range 3 {
		res, err := c.Get(front.URL + "/stream") // returns once the header arrived
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode)
		defer res.Body.Close()
	}
	assert.Equal(t, breaker.StateClosed, only(t, b.States()).State, "three successful probes close it")
	assert.Equal(t, http.StatusOK, get(t, c, front.URL+"/").StatusCode, "streams still open do not block the route")
}

// proxyTo is a ReverseProxy to a gatewaytest server with fault f, on
// gateway's instrumented transport, whose ErrorHandler logs to logger.
func proxyTo(t *testing.T, f gatewaytest.Fault, logger *slog.Logger) http.Handler {
	up := gatewaytest.NewServer(f)
	t.Cleanup(up.Close)
	u, err := url.Parse(up.URL)
	require.NoError(t, err)
	transport := &gateway.Transport{Base: gateway.NewHTTPTransport()}
	t.Cleanup(transport.CloseIdleConnections)
	return &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    transport,
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
}

// canceledAfter returns a request whose context is canceled after d, as
// when the client goes away.
func canceledAfter(t *testing.T, d time.Duration) *http.Request {
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(d, cancel)
	t.Cleanup(func() { timer.Stop(); cancel() })
	return httptest.NewRequest("GET", "/", nil).WithContext(ctx)
}

// failureTaker stands where an enclosing layer would: it takes the
// Failure handed outward.
type failureTaker struct {
	http.ResponseWriter
	got *gateway.Failure
}

func (w *failureTaker) RecordFailure(f *gateway.Failure) { w.got = f }
func (w *failureTaker) Unwrap() http.ResponseWriter      { return w.ResponseWriter }

// debugLogger logs every level as text to a buffer.
func debugLogger() (*slog.Logger, *gatewaytest.SafeBuffer) {
	buf := new(gatewaytest.SafeBuffer)
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

const failureLine = `msg="proxy: upstream failure"`

// TestOutermostAbortsCanceled: Breaker as the outermost layer
// over a ReverseProxy whose upstream hangs; the client goes away after
// 50 ms. Were the handler to return normally, net/http would finish the
// response with an implicit, empty 200 (which a half-closed HTTP/1 client
// reads as success). The breaker, finding no enclosing layer to take
// the failure, logs it (at debug: a client that left is no fault) and
// aborts the response, as the bare proxy does.
func TestOutermostAbortsCanceled(t *testing.T) {
	proxy := proxyTo(t, gatewaytest.Hang, quiet)

	t.Run("bare_proxy", func(t *testing.T) {
		w := httptest.NewRecorder()
		assert.PanicsWithValue(t, http.ErrAbortHandler, func() { proxy.ServeHTTP(w, canceledAfter(t, 50*time.Millisecond)) })
	})
	t.Run("outermost", func(t *testing.T) {
		logger, logs := debugLogger()
		b, err := breaker.New(breaker.Settings{Logger: logger})
		require.NoError(t, err)
		w := httptest.NewRecorder()
		assert.PanicsWithValue(t, http.ErrAbortHandler, func() {
			b.Wrap(proxy).ServeHTTP(w, canceledAfter(t, 50*time.Millisecond))
		}, "not net/http's implicit 200")
		assert.False(t, w.Flushed)
		assert.Empty(t, w.Body.String())
		lines := logs.Lines()
		require.Len(t, lines, 1, logs.String())
		assert.Contains(t, lines[0], "level=DEBUG "+failureLine+" class=canceled status=499")
		assert.EqualValues(t, 1, only(t, b.States()).Counts.Exclusions)
	})
	t.Run("enclosed", func(t *testing.T) {
		// An enclosing layer takes the failure: logging and aborting are
		// its duty, not the breaker's.
		logger, logs := debugLogger()
		b, err := breaker.New(breaker.Settings{Logger: logger})
		require.NoError(t, err)
		w := &failureTaker{ResponseWriter: httptest.NewRecorder()}
		assert.NotPanics(t, func() { b.Wrap(proxy).ServeHTTP(w, canceledAfter(t, 50*time.Millisecond)) })
		require.NotNil(t, w.got)
		assert.Equal(t, gateway.ClassCanceled, w.got.Class)
		assert.Empty(t, logs.String())
	})
}

// TestOutermostLogsOnce: an upstream failure under a Breaker
// that is the outermost layer is logged once at warn level, by the
// breaker; before, the ErrorHandler below it, seeing the breaker take the
// failure, logged it only at debug, and nothing else did. Under an
// enclosing layer the breaker hands it on and does not log.
func TestOutermostLogsOnce(t *testing.T) {
	ehLogger, ehLogs := debugLogger()
	proxy := proxyTo(t, gatewaytest.Refused, ehLogger)

	t.Run("outermost", func(t *testing.T) {
		logger, logs := debugLogger()
		b, err := breaker.New(breaker.Settings{Logger: logger})
		require.NoError(t, err)
		w := httptest.NewRecorder()
		b.Wrap(proxy).ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
		assert.Equal(t, http.StatusBadGateway, w.Code)
		lines := logs.Lines()
		require.Len(t, lines, 1, logs.String())
		assert.Contains(t, lines[0], "level=WARN "+failureLine+" class=refused status=502")
		assert.NotContains(t, ehLogs.String(), "level=WARN", "the inner ErrorHandler defers to the outer layer")
	})
	t.Run("enclosed", func(t *testing.T) {
		logger, logs := debugLogger()
		b, err := breaker.New(breaker.Settings{Logger: logger})
		require.NoError(t, err)
		o := &outer{next: b.Wrap(proxy)}
		w := httptest.NewRecorder()
		o.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
		assert.Equal(t, http.StatusBadGateway, w.Code)
		_, f := o.last()
		require.NotNil(t, f, "the failure travels outward")
		assert.Equal(t, gateway.ClassRefused, f.Class)
		assert.Empty(t, logs.String(), "the enclosing layer logs it, not the breaker")
	})
	t.Run("open_outermost", func(t *testing.T) {
		// The breaker's own open failure: one warn line too.
		logger, logs := debugLogger()
		b, err := breaker.New(breaker.Settings{Logger: logger, ConsecutiveFailures: 1})
		require.NoError(t, err)
		h := b.Wrap(proxy)
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil)) // trips
		n := strings.Count(logs.String(), failureLine)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
		assert.Equal(t, http.StatusServiceUnavailable, w.Code)
		assert.Equal(t, n+1, strings.Count(logs.String(), failureLine), logs.String())
		assert.Contains(t, logs.String(), "level=WARN "+failureLine+" class=open status=503")
	})
}

func newInterceptor(w http.ResponseWriter, d gateway.Decider) *gateway.Interceptor {
	i := new(gateway.Interceptor)
	i.Reset(w, d)
	return i
}
