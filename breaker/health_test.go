package breaker

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

var quietLog = slog.New(slog.DiscardHandler)

type fakeRT func(*http.Request) (*http.Response, error)

func (f fakeRT) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestOpenPeriodsGrow: on an injected clock, repeated trips without a
// healthy spell double the open period up to MaxTimeout; a whole Interval
// closed resets it. No test sleeps for an open period.
func TestOpenPeriodsGrow(t *testing.T) {
	b, err := New(Settings{Logger: quietLog, ConsecutiveFailures: 1, Timeout: time.Second, MaxTimeout: 5 * time.Second})
	require.NoError(t, err)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	b.set.clock = now.Load
	e := b.set.single
	fail := func() {
		done, f := e.allow("")
		require.Nil(t, f)
		e.finish(done, errFailure)
	}
	var periods []time.Duration
	for range 5 {
		fail()
		require.Equal(t, StateOpen, State(e.state.Load()))
		_, f := e.allow("")
		require.NotNil(t, f, "refused while open, without gobreaker")
		periods = append(periods, time.Duration(e.openUntil.Load()-now.Load()))
		now.Store(e.openUntil.Load()) // half-open as soon as it ends; the probe fails
	}
	s := time.Second
	assert.Equal(t, []time.Duration{s, 2 * s, 4 * s, 5 * s, 5 * s}, periods)

	// A probe succeeds: closed. A whole Interval later, a trip starts again
	// from Timeout.
	for range defaultMaxRequests {
		done, f := e.allow("")
		require.Nil(t, f)
		e.finish(done, nil)
	}
	require.Equal(t, StateClosed, State(e.state.Load()))
	now.Add(int64(defaultInterval))
	fail()
	assert.Equal(t, s, time.Duration(e.openUntil.Load()-now.Load()), "a healthy spell resets the period")
}

// TestRouteFailuresDoNotTakeHostOut: an upstream's own 502s from one route
// beside healthy traffic never trip the host (they count toward the ratio
// only), while a host answering 503 to everything is still taken out; and
// one client request counts once per host however many attempts it makes.
func TestRouteFailuresDoNotTakeHostOut(t *testing.T) {
	h, err := PerHost(Settings{Logger: quietLog})
	require.NoError(t, err)
	defer h.Close()
	rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
		code := http.StatusOK
		if r.URL.Path == "/bad" {
			code = http.StatusBadGateway
		}
		return &http.Response{StatusCode: code, Body: http.NoBody, Request: r}, nil
	}))
	do := func(path string) {
		res, err := rt.RoundTrip(httptest.NewRequest("GET", "http://svc:80"+path, nil))
		require.NoError(t, err)
		res.Body.Close()
	}
	for i := range 2000 {
		if i%6 == 0 {
			for range 3 { // a burst of /bad: 3 in a row
				do("/bad")
			}
		}
		do("/ok")
		require.True(t, h.Allows("svc:80"), "request %d: one failing route took the host out", i)
	}

	// Every route failing: the ratio trips it.
	h2, err := PerHost(Settings{Logger: quietLog})
	require.NoError(t, err)
	defer h2.Close()
	rt2 := h2.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Body: http.NoBody, Request: r}, nil
	}))
	n := 0
	for ; h2.Allows("svc:80") && n < 100; n++ {
		res, err := rt2.RoundTrip(httptest.NewRequest("GET", "http://svc:80/", nil))
		require.NoError(t, err)
		res.Body.Close()
	}
	assert.Equal(t, defaultMinRequests, n, "a host failing everything is out after MinRequests")

	// Repeats of one request on one host count once.
	h3, err := PerHost(Settings{Logger: quietLog, Health: HostHealth{RestAfter: -1}})
	require.NoError(t, err)
	defer h3.Close()
	rt3 := h3.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
		return nil, gateway.NewFailure(gateway.ClassReset, "svc:80", errors.New("reset"))
	}))
	for range 2 {
		ctx, tr := gateway.WithTrail(t.Context())
		for range 3 { // three attempts of one request on one host
			tr.Add("svc:80")
			_, err := rt3.RoundTrip(httptest.NewRequest("GET", "http://svc:80/", nil).WithContext(ctx))
			require.Error(t, err)
		}
	}
	assert.True(t, h3.Allows("svc:80"), "2 requests × 3 attempts are 2 failures, not 6")
	st := h3.States()[0]
	assert.EqualValues(t, 2, st.Counts.Failures)
}

// TestProbeRecovery: a host that refuses (a restart) is probed back within
// the bounds: with another host serving, on the short growing interval;
// alone (a whole pool out), every PanicInterval. While it stays down the
// probe rate is bounded and backs off; Close stops the probes and nothing
// leaks.
func TestProbeRecovery(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, alone := range []bool{false, true} {
		down := gatewaytest.NewServer(gatewaytest.Refused)
		up := gatewaytest.NewHealthy(nil)
		h, err := PerHost(Settings{Logger: quietLog, Timeout: time.Minute})
		require.NoError(t, err)
		base := gateway.NewHTTPTransport()
		rt := h.Transport(&gateway.Transport{Base: base})
		get := func(s *gatewaytest.Server) (*http.Response, error) {
			res, err := rt.RoundTrip(httptest.NewRequest("GET", s.URL, nil))
			if err == nil {
				res.Body.Close()
			}
			return res, err
		}
		if !alone {
			_, err := get(up)
			require.NoError(t, err)
		}
		for range defaultConsecutiveFailures {
			_, err := get(down)
			require.Error(t, err)
		}
		require.False(t, h.Allows(down.Addr))
		assert.Equal(t, pool.StateOut, h.HostState(down.Addr))
		assert.True(t, h.set.lookup(down.Addr).host.probing.Load(), "out, and probed")

		if !alone {
			// Down for 1.6 s: probes back off (100, 200, 400, 800 ms ±25%).
			time.Sleep(1600 * time.Millisecond)
			n := down.Accepts()
			assert.Zero(t, n, "refused: nothing accepted")
		}
		require.NoError(t, down.SetFault(gatewaytest.Healthy))
		back := time.Now()
		bound := 250 * time.Millisecond
		if !alone {
			bound = 2 * time.Second // the interval has grown to 1.6 s ±25%
		}
		require.Eventually(t, func() bool { return h.Allows(down.Addr) }, bound, time.Millisecond)
		took := time.Since(back)
		_, err = get(down)
		require.NoError(t, err)
		t.Logf("alone=%t: allowed again %v after the host's return; first request served", alone, took)
		if alone {
			assert.LessOrEqual(t, took, 100*time.Millisecond, "a whole pool out is probed every 50 ms")
		}
		h.Close()
		base.CloseIdleConnections()
		down.Close()
		up.Close()
	}
}

// TestProbeRateWhileDown: a host that stays down (refusing) while another
// serves is probed at most about 2/s once it has been out for 2 s, and
// the interval grows (probe dials counted at the prober's dialer).
func TestProbeRateWhileDown(t *testing.T) {
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	h, err := PerHost(Settings{Logger: quietLog, Timeout: time.Minute})
	require.NoError(t, err)
	defer h.Close()
	var dials atomic.Int64
	dial := h.set.prober.dial
	h.set.prober.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	rt := h.Transport(&gateway.Transport{Base: base})
	res, err := rt.RoundTrip(httptest.NewRequest("GET", up.URL, nil))
	require.NoError(t, err)
	res.Body.Close()
	for range defaultConsecutiveFailures {
		_, err := rt.RoundTrip(httptest.NewRequest("GET", dead.URL, nil))
		require.Error(t, err)
	}
	time.Sleep(2 * time.Second)
	first := dials.Load()
	time.Sleep(3 * time.Second)
	rate := float64(dials.Load()-first) / 3
	t.Logf("probe connections to a dead host: %d in its first 2 s out, %.2f/s in the 3 s after", first, rate)
	assert.GreaterOrEqual(t, first, int64(3), "probed soon after it went out")
	assert.LessOrEqual(t, rate, 2.0)
	assert.Zero(t, dead.Requests())
}

// TestSlowStartShare: a host that returns ramps from 10% to its full share
// over SlowStart, on the injected clock; off with a negative SlowStart.
func TestSlowStartShare(t *testing.T) {
	h, now := clockedPerHost(t, Settings{Logger: quietLog, ConsecutiveFailures: 1, Health: HostHealth{NoProbes: true, RestAfter: -1}})
	fail := true
	rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
		if fail {
			return nil, gateway.NewFailure(gateway.ClassRefused, "svc:80", errors.New("refused"))
		}
		return &http.Response{StatusCode: 200, Body: http.NoBody, Request: r}, nil
	}))
	do := func() {
		if res, err := rt.RoundTrip(httptest.NewRequest("GET", "http://svc:80/", nil)); err == nil {
			res.Body.Close()
		}
	}
	do()
	assert.Equal(t, pool.StateOut, h.HostState("svc:80"))
	now.Add(int64(defaultTimeout))
	fail = false
	for range defaultMaxRequests {
		do()
	}
	require.Equal(t, pool.StateWarming, h.HostState("svc:80"))
	assert.InDelta(t, 0.1, h.Share("svc:80"), 0.01)
	now.Add(int64(defaultSlowStart / 2))
	assert.InDelta(t, 0.55, h.Share("svc:80"), 0.01)
	now.Add(int64(defaultSlowStart / 2))
	assert.Equal(t, 1.0, h.Share("svc:80"))
	assert.Equal(t, pool.StateServing, h.HostState("svc:80"))
}
