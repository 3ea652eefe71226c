package breaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
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

// answer is a fake upstream's answer to one request: a status, or a
// failure of a class.
type answer struct {
	status int
	class  gateway.Class
}

func (a answer) roundTrip(r *http.Request) (*http.Response, error) {
	if a.status == 0 {
		return nil, gateway.NewFailure(a.class, gateway.UpstreamName(r.URL), errors.New(a.class.String()))
	}
	return &http.Response{StatusCode: a.status, Body: http.NoBody, Request: r}, nil
}

// clockedPerHost returns PerHost(s), closed when the test ends, on a
// clock the test moves: now, from the wall clock's present.
func clockedPerHost(t *testing.T, s Settings) (*Hosts, *atomic.Int64) {
	t.Helper()
	h, err := PerHost(s)
	require.NoError(t, err)
	t.Cleanup(h.Close)
	now := new(atomic.Int64)
	now.Store(time.Now().UnixNano())
	h.set.clock = now.Load
	return h, now
}

// resetOnPOST is an upstream that resets every POST and answers every
// other request 200; up counts what reaches it.
func resetOnPOST(up *atomic.Int64) http.RoundTripper {
	return fakeRT(func(r *http.Request) (*http.Response, error) {
		up.Add(1)
		if r.Method == "POST" {
			return answer{class: gateway.ClassReset}.roundTrip(r)
		}
		return answer{status: 200}.roundTrip(r)
	})
}

// do sends one request of method to host through rt and returns whether
// the fake upstream saw it.
func do(t *testing.T, rt http.RoundTripper, method, host string, seen *atomic.Int64) bool {
	t.Helper()
	before := seen.Load()
	res, err := rt.RoundTrip(httptest.NewRequest(method, "http://"+host+"/", nil))
	if err == nil {
		res.Body.Close()
	}
	return seen.Load() > before
}

// TestStatusRuleMixes: an upstream's own 502s take a host out only when
// failures are nearly all of its traffic (≥ 90% over ≥ 20 requests by
// default), at every mix below that, in any order; connection-level
// evidence keeps the normal rules (5 in a row, or ≥ 50% of the traffic);
// and the status rule is configurable.
func TestStatusRuleMixes(t *testing.T) {
	run := func(t *testing.T, s Settings, n int, answerOf func(i int) answer) (outAt int, cause string) {
		t.Helper()
		s.Logger = quietLog
		s.Health.NoProbes = true
		h, err := PerHost(s)
		require.NoError(t, err)
		defer h.Close()
		i := 0
		rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) { return answerOf(i).roundTrip(r) }))
		for i = range n {
			res, err := rt.RoundTrip(httptest.NewRequest("GET", "http://svc:80/", nil))
			if err == nil {
				res.Body.Close()
			}
			if !h.Allows("svc:80") {
				return i + 1, h.States()[0].LastClass
			}
		}
		return 0, ""
	}
	bad := answer{status: http.StatusBadGateway}
	ok := answer{status: http.StatusOK}
	for _, pct := range []int{10, 50, 75, 85, 89} {
		t.Run(fmt.Sprintf("%d%% of 502s, interleaved", pct), func(t *testing.T) {
			out, _ := run(t, Settings{}, 2000, func(i int) answer {
				if (i+1)*pct/100 > i*pct/100 { // evenly spread
					return bad
				}
				return ok
			})
			assert.Zero(t, out, "a host that answers is not taken out by its failing routes")
		})
		if pct > 75 {
			// In random order, 18 of the first 20 requests fail too
			// often: the window would rightly call that nearly all.
			continue
		}
		t.Run(fmt.Sprintf("%d%% of 502s, random order", pct), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(pct), 1))
			out, _ := run(t, Settings{}, 2000, func(int) answer {
				if rng.IntN(100) < pct {
					return bad
				}
				return ok
			})
			assert.Zero(t, out)
		})
	}
	t.Run("bursts of 502s at 50%", func(t *testing.T) {
		out, _ := run(t, Settings{}, 2000, func(i int) answer {
			if i >= 20 && i%40 < 20 { // 20 in a row, then 20 fine
				return bad
			}
			return ok
		})
		assert.Zero(t, out)
	})
	t.Run("every route fails", func(t *testing.T) {
		out, cause := run(t, Settings{}, 100, func(int) answer { return answer{status: http.StatusServiceUnavailable} })
		assert.Equal(t, defaultMinRequests, out, "out after StatusMinRequests")
		assert.Equal(t, "upstream_status", cause)
	})
	t.Run("95% of 503s", func(t *testing.T) {
		out, _ := run(t, Settings{}, 400, func(i int) answer {
			if i%20 == 0 {
				return ok
			}
			return answer{status: http.StatusServiceUnavailable}
		})
		assert.NotZero(t, out, "nearly everything fails: shed")
	})
	t.Run("configurable: 100% only", func(t *testing.T) {
		out, _ := run(t, Settings{Health: HostHealth{StatusFailureRatio: 1, StatusMinRequests: 40}}, 400, func(i int) answer {
			if i%20 == 0 {
				return ok
			}
			return bad
		})
		assert.Zero(t, out)
		out, _ = run(t, Settings{Health: HostHealth{StatusFailureRatio: 1, StatusMinRequests: 40}}, 400, func(int) answer { return bad })
		assert.Equal(t, 40, out)
	})
	t.Run("resets: 5 in a row", func(t *testing.T) {
		out, cause := run(t, Settings{}, 100, func(i int) answer {
			if i < 10 {
				return ok
			}
			return answer{class: gateway.ClassReset}
		})
		assert.Equal(t, 15, out)
		assert.Equal(t, "reset", cause)
	})
	t.Run("resets interleaved at 50%", func(t *testing.T) {
		out, cause := run(t, Settings{}, 100, func(i int) answer {
			if i%2 == 0 {
				return answer{class: gateway.ClassReset}
			}
			return ok
		})
		assert.Equal(t, 21, out, "the ratio over all traffic, checked after a failure")
		assert.Equal(t, "reset", cause)
	})
	t.Run("resets beside route failures", func(t *testing.T) {
		// 30% resets and 40% 502s: the resets alone are under half the
		// traffic and the failures together under 90%: still serving.
		out, _ := run(t, Settings{}, 2000, func(i int) answer {
			switch i % 10 {
			case 0, 3, 6:
				return answer{class: gateway.ClassReset}
			case 1, 4, 7, 9:
				return bad
			}
			return ok
		})
		assert.Zero(t, out)
	})
}

// TestHalfOpenAnswerIsEnough: a host out for connection-level failures
// that a probe proved back is closed by trial requests that get an answer,
// even its failing route's 502; a host out because it answered failures to
// everything is closed only by good answers.
func TestHalfOpenAnswerIsEnough(t *testing.T) {
	for _, tc := range []struct {
		name   string
		first  answer
		closes bool
	}{
		{"out refused, back with 502s", answer{class: gateway.ClassRefused}, true},
		{"out 503s, back with 502s", answer{status: http.StatusServiceUnavailable}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, now := clockedPerHost(t, Settings{Logger: quietLog, Health: HostHealth{NoProbes: true, RestAfter: -1}})
			a := tc.first
			rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) { return a.roundTrip(r) }))
			for range 2 * defaultMinRequests {
				res, err := rt.RoundTrip(httptest.NewRequest("GET", "http://svc:80/", nil))
				if err == nil {
					res.Body.Close()
				}
			}
			require.False(t, h.Allows("svc:80"))
			now.Add(int64(time.Minute))
			a = answer{status: http.StatusBadGateway}
			for range defaultMaxRequests {
				res, err := rt.RoundTrip(httptest.NewRequest("GET", "http://svc:80/", nil))
				if err == nil {
					res.Body.Close()
				}
			}
			assert.Equal(t, tc.closes, h.HostState("svc:80") != pool.StateOut && h.Allows("svc:80"), h.HostState("svc:80"))
		})
	}
}

// TestNeverDialsAHostKnownOut: a host out after connection-level failures
// gets no client request however long it stays out — its open period ends
// only when a probe connects, never by time — and is back (half-open) as
// soon as one does. Without probes (NoProbes, or after Close) the period
// ends by time as before.
func TestNeverDialsAHostKnownOut(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, class := range []gateway.Class{gateway.ClassConnectTimeout, gateway.ClassRefused, gateway.ClassUnreachable, gateway.ClassDNS} {
		t.Run(class.String(), func(t *testing.T) {
			h, err := PerHost(Settings{Logger: quietLog, Timeout: time.Millisecond, MaxTimeout: 4 * time.Millisecond,
				Health: HostHealth{ProbeInterval: time.Millisecond, MaxProbeInterval: 2 * time.Millisecond, PanicInterval: time.Millisecond}})
			require.NoError(t, err)
			defer h.Close()
			var up, probes atomic.Int64
			var probeOK atomic.Bool
			h.set.prober.dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
				probes.Add(1)
				if probeOK.Load() {
					c1, c2 := net.Pipe()
					c2.Close()
					return c1, nil
				}
				return nil, errors.New("still down")
			}
			rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
				up.Add(1)
				return answer{class: class}.roundTrip(r)
			}))
			for range defaultConsecutiveFailures {
				do(t, rt, "GET", "svc:80", &up)
			}
			require.Equal(t, pool.StateOut, h.HostState("svc:80"))
			require.True(t, h.set.lookup("svc:80").host.probing.Load(), "out, and probed")
			// Many open periods and probes later, no request went through.
			deadline := time.Now().Add(200 * time.Millisecond)
			for time.Now().Before(deadline) {
				require.False(t, do(t, rt, "GET", "svc:80", &up), "a client request reached a host known to be out")
				require.False(t, h.Allows("svc:80"))
				time.Sleep(time.Millisecond)
			}
			require.Greater(t, probes.Load(), int64(10), "probed all along")
			assert.Positive(t, h.OpenFor("svc:80"), "Retry-After: until the next probe at least")
			probeOK.Store(true)
			require.Eventually(t, func() bool { return h.Allows("svc:80") }, time.Second, time.Millisecond)
			assert.Equal(t, pool.StateTrial, h.HostState("svc:80"))
			assert.True(t, do(t, rt, "GET", "svc:80", &up), "a probe passed: trial requests go")
		})
	}

	t.Run("no probes: by time", func(t *testing.T) {
		h, now := clockedPerHost(t, Settings{Logger: quietLog, Health: HostHealth{NoProbes: true}})
		var up atomic.Int64
		rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
			up.Add(1)
			return answer{class: gateway.ClassRefused}.roundTrip(r)
		}))
		for range defaultConsecutiveFailures {
			do(t, rt, "GET", "svc:80", &up)
		}
		require.False(t, do(t, rt, "GET", "svc:80", &up))
		now.Add(int64(defaultTimeout))
		assert.True(t, do(t, rt, "GET", "svc:80", &up), "half-open after the period")
	})
}

// TestHalfOpenIdempotentFirst: a half-open host keeps its trial requests
// for idempotent ones while another host serves: a POST is sent elsewhere
// by a pool (AllowsRequest) and refused unsent by the transport, until a
// trial succeeded or SafeFirst passed; with no other host serving, a POST
// is tried at once (a POST-only workload is never starved).
func TestHalfOpenIdempotentFirst(t *testing.T) {
	setup := func(t *testing.T) (*Hosts, http.RoundTripper, *atomic.Int64, *atomic.Int64) {
		h, now := clockedPerHost(t, Settings{Logger: quietLog, ConsecutiveFailures: 1,
			Health: HostHealth{NoProbes: true, RestAfter: -1}})
		var up atomic.Int64
		rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
			up.Add(1)
			if r.URL.Host == "b:80" && r.Header.Get("Fail") != "" {
				return answer{class: gateway.ClassReset}.roundTrip(r)
			}
			return answer{status: 200}.roundTrip(r)
		}))
		do(t, rt, "GET", "a:80", &up)
		req := httptest.NewRequest("GET", "http://b:80/", nil)
		req.Header.Set("Fail", "1")
		_, err := rt.RoundTrip(req)
		require.Error(t, err)
		require.Equal(t, pool.StateOut, h.HostState("b:80"))
		now.Add(int64(time.Minute)) // the open period is over
		return h, rt, now, &up
	}
	postTo := func(host string) *http.Request {
		return httptest.NewRequest("POST", "http://"+host+"/", strings.NewReader("x"))
	}

	t.Run("a GET trial first", func(t *testing.T) {
		h, rt, _, up := setup(t)
		assert.False(t, h.AllowsRequest("b:80", postTo("b:80")), "a pool sends the POST elsewhere")
		assert.True(t, h.AllowsRequest("b:80", httptest.NewRequest("GET", "http://b:80/", nil)))
		assert.Equal(t, pool.StateTrial, h.HostState("b:80"))
		before := up.Load()
		_, err := rt.RoundTrip(postTo("b:80"))
		var f *gateway.Failure
		require.ErrorAs(t, err, &f)
		assert.Equal(t, gateway.ClassOpen, f.Class)
		assert.False(t, f.Sent)
		assert.Equal(t, before, up.Load(), "refused without touching the upstream")
		assert.True(t, do(t, rt, "GET", "b:80", up), "an idempotent trial")
		assert.True(t, h.AllowsRequest("b:80", postTo("b:80")), "a trial passed: POSTs too")
		assert.True(t, do(t, rt, "POST", "b:80", up))
	})
	t.Run("POST-only traffic: after SafeFirst", func(t *testing.T) {
		h, rt, now, up := setup(t)
		assert.False(t, do(t, rt, "POST", "b:80", up))
		now.Add(int64(defaultSafeFirst))
		assert.True(t, h.AllowsRequest("b:80", postTo("b:80")))
		assert.True(t, do(t, rt, "POST", "b:80", up), "no idempotent request came: POSTs are tried")
	})
	t.Run("POST-only traffic: no other host", func(t *testing.T) {
		h, rt, _, up := setup(t)
		// Take a:80 out too: b:80 is the only host that can serve.
		h.set.lookup("a:80").forceTrip(gateway.ClassReset)
		require.False(t, h.Allows("a:80"))
		assert.True(t, h.AllowsRequest("b:80", postTo("b:80")))
		assert.True(t, do(t, rt, "POST", "b:80", up), "refusing it would only fail it")
	})
}

// TestHealthCheckProbe: a host out for resets after reading (which a
// connect cannot disprove) is proven back by the configured HTTP health
// check, not by time: while the check fails it gets no client request
// however long it stays out; once the check passes it is half-open, and
// the check's requests are all it saw meanwhile.
func TestHealthCheckProbe(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var healthy atomic.Bool
	var checks, others atomic.Int64
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if !healthy.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer up.Close()
	up.OnRequest = func(r *http.Request) {
		if r.Header.Get("User-Agent") == "proxykit-health-check" && r.URL.Path == "/healthz" {
			checks.Add(1)
		} else {
			others.Add(1)
		}
	}
	h, err := PerHost(Settings{Logger: quietLog, Timeout: 20 * time.Millisecond, Health: HostHealth{
		ProbeInterval: 10 * time.Millisecond, MaxProbeInterval: 20 * time.Millisecond, PanicInterval: 10 * time.Millisecond,
		Check: HealthCheck{Path: "/healthz", Timeout: 500 * time.Millisecond}}})
	require.NoError(t, err)
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	rt := h.Transport(&gateway.Transport{Base: base})
	get := func() error {
		res, err := rt.RoundTrip(httptest.NewRequest("GET", up.URL+"/x", nil))
		if err == nil {
			res.Body.Close()
		}
		return err
	}
	require.NoError(t, up.SetFault(gatewaytest.ResetAfterRequest))
	for range defaultConsecutiveFailures {
		require.Error(t, get())
	}
	require.Equal(t, pool.StateOut, h.HostState(up.Addr))
	require.True(t, h.set.lookup(up.Addr).host.probing.Load(), "out, and probed")
	require.NoError(t, up.SetFault(gatewaytest.Healthy)) // serves again, but its check fails
	seen := others.Load()
	time.Sleep(300 * time.Millisecond) // fifteen open periods
	for range 20 {
		require.Error(t, get())
	}
	assert.Equal(t, seen, others.Load(), "no client request while the check fails")
	assert.Greater(t, checks.Load(), int64(5), "checked all along")
	healthy.Store(true)
	back := time.Now()
	require.Eventually(t, func() bool { return h.Allows(up.Addr) }, time.Second, time.Millisecond)
	t.Logf("allowed %v after the check passed; %d checks", time.Since(back), checks.Load())
	require.NoError(t, get())
	h.Close()
}

// TestHealthCheckAlways: with Check.Always, a pool's targets are checked
// from the start (Watch), before any request; a serving host whose check
// fails Fall times in a row is taken out without any traffic, and comes
// back when it passes again. Close stops the checks.
func TestHealthCheckAlways(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var healthy atomic.Bool
	healthy.Store(true)
	var checks atomic.Int64
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checks.Add(1)
		if !healthy.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer up.Close()
	h, err := PerHost(Settings{Logger: quietLog, Health: HostHealth{ProbeInterval: 10 * time.Millisecond,
		PanicInterval: 10 * time.Millisecond,
		Check:         HealthCheck{Path: "/healthz", Always: true, Interval: 20 * time.Millisecond, Fall: 2, MaxStatus: 299}}})
	require.NoError(t, err)
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	h.Transport(&gateway.Transport{Base: base})
	u := mustURL(up.URL)
	h.Watch(u)
	require.Eventually(t, func() bool { return checks.Load() >= 3 }, time.Second, time.Millisecond, "checked before any request")
	assert.Equal(t, pool.StateServing, h.HostState(up.Addr))
	healthy.Store(false)
	require.Eventually(t, func() bool { return !h.Allows(up.Addr) }, time.Second, time.Millisecond, "out after Fall failed checks")
	assert.Equal(t, "upstream_status", h.States()[0].LastClass)
	healthy.Store(true)
	require.Eventually(t, func() bool { return h.Allows(up.Addr) }, time.Second, time.Millisecond, "back after a check passed")
	h.Close()
	n := checks.Load()
	time.Sleep(60 * time.Millisecond)
	assert.Equal(t, n, checks.Load(), "no check after Close")
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestHostHealthValidate: invalid host-health settings make PerHost fail.
func TestHostHealthValidate(t *testing.T) {
	for name, hh := range map[string]HostHealth{
		"status ratio > 1":   {StatusFailureRatio: 1.5},
		"status ratio < 0":   {StatusFailureRatio: -0.5},
		"check path":         {Check: HealthCheck{Path: "healthz"}},
		"check range":        {Check: HealthCheck{Path: "/h", MinStatus: 300, MaxStatus: 299}},
		"check fall":         {Check: HealthCheck{Path: "/h", Fall: -1}},
		"check interval":     {Check: HealthCheck{Path: "/h", Interval: -time.Second}},
		"probe interval":     {ProbeInterval: -time.Second},
		"negative probation": {Probation: -1},
	} {
		_, err := PerHost(Settings{Health: hh})
		assert.Error(t, err, name)
	}
	h, err := PerHost(Settings{MinRequests: 7, Health: HostHealth{Check: HealthCheck{Path: "/healthz"}}})
	require.NoError(t, err)
	defer h.Close()
	hh := h.set.c.Health
	assert.EqualValues(t, 7, hh.StatusMinRequests, "defaults to MinRequests")
	assert.Equal(t, defaultStatusFailureRatio, hh.StatusFailureRatio)
	assert.Equal(t, HealthCheck{Path: "/healthz", MinStatus: 200, MaxStatus: 399, Timeout: defaultProbeTimeout,
		Interval: defaultCheckInterval, Fall: defaultCheckFall}, hh.Check)
}

// TestRestThenWarm: a host rests after a failure (share 0), then ramps
// from 10% over SlowStart instead of taking its full share — and another
// burst of failures — the moment its rest ends.
func TestRestThenWarm(t *testing.T) {
	h, now := clockedPerHost(t, Settings{Logger: quietLog, Health: HostHealth{NoProbes: true}})
	var up atomic.Int64
	rt := h.Transport(resetOnPOST(&up))
	do(t, rt, "GET", "svc:80", &up)
	assert.Equal(t, 1.0, h.Share("svc:80"))
	do(t, rt, "POST", "svc:80", &up)
	assert.Equal(t, pool.StateResting, h.HostState("svc:80"))
	assert.Zero(t, h.Share("svc:80"))
	st := h.States()[0]
	assert.Equal(t, time.Unix(0, now.Load()), st.Since, "resting since the failure")
	assert.Equal(t, "reset", st.LastClass)
	assert.True(t, st.RestUntil.After(time.Unix(0, now.Load())), "its rest ends ahead")
	now.Add(int64(defaultRest))
	assert.Equal(t, pool.StateWarming, h.HostState("svc:80"))
	assert.InDelta(t, 0.1, h.Share("svc:80"), 0.01)
	now.Add(int64(defaultSlowStart / 2))
	assert.InDelta(t, 0.55, h.Share("svc:80"), 0.01)
	now.Add(int64(defaultSlowStart / 2))
	assert.Equal(t, 1.0, h.Share("svc:80"))
}

// TestStatusTimesAhead: a host out until a probe passes, its open period
// long over, reports when a request may pass again as a moment ahead of
// now (its next probe at the earliest), never the end of an open period
// already past, and no next probe in the past; it is out, one word.
func TestStatusTimesAhead(t *testing.T) {
	h, now := clockedPerHost(t, Settings{Logger: quietLog, Timeout: time.Second})
	h.set.prober.dial = func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("still down") }
	var up atomic.Int64
	rt := h.Transport(fakeRT(func(r *http.Request) (*http.Response, error) {
		up.Add(1)
		return answer{class: gateway.ClassRefused}.roundTrip(r)
	}))
	for range defaultConsecutiveFailures {
		do(t, rt, "GET", "svc:80", &up)
	}
	require.False(t, h.Allows("svc:80"))
	now.Add(int64(30 * time.Second)) // the open period (1 s) is long over; no probe passed
	st := h.States()
	require.Len(t, st, 1)
	at := time.Unix(0, now.Load())
	assert.Equal(t, pool.StateOut, st[0].HostState)
	assert.Equal(t, StateOpen, st[0].State)
	assert.False(t, st[0].OpenUntil.Before(at), "open until %v, reported at %v", st[0].OpenUntil, at)
	assert.True(t, st[0].NextProbe.IsZero() || !st[0].NextProbe.Before(at), "next probe %v, reported at %v", st[0].NextProbe, at)
	assert.Equal(t, "refused", st[0].LastClass)
}

// TestSpellLinesRationed: a host that leaves and rejoins service again and
// again is logged at warn and info level once a minute; the spells between
// are debug lines, and the next warn line counts them.
func TestSpellLinesRationed(t *testing.T) {
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, now := clockedPerHost(t, Settings{Logger: logger, Health: HostHealth{NoProbes: true, SlowStart: -1}})
	var up atomic.Int64
	rt := h.Transport(resetOnPOST(&up))
	spell := func() {
		do(t, rt, "POST", "svc:80", &up) // a reset: it rests
		require.Equal(t, pool.StateResting, h.HostState("svc:80"))
		do(t, rt, "GET", "svc:80", &up) // a success while resting: still out
		now.Add(int64(defaultMaxRest))
		require.Equal(t, pool.StateWarming, h.HostState("svc:80"), "rest over, not yet proven")
		do(t, rt, "GET", "svc:80", &up) // rest over, a success: back
		require.Equal(t, pool.StateServing, h.HostState("svc:80"))
	}
	count := func(level, msg string) int {
		return strings.Count(logs.String(), "level="+level+" msg=\""+msg+"\"")
	}
	spell()
	assert.Equal(t, 1, count("WARN", "upstream out of service"), logs.String())
	assert.Contains(t, logs.String(), "upstream=svc:80 state=resting class=reset since=")
	assert.Equal(t, 1, count("INFO", "upstream back in service"))
	for range 3 {
		spell()
	}
	assert.Equal(t, 1, count("WARN", "upstream out of service"), "rationed")
	assert.Equal(t, 1, count("INFO", "upstream back in service"))
	assert.Equal(t, 3, count("DEBUG", "upstream out of service"))
	assert.Equal(t, 3, count("DEBUG", "upstream back in service"))
	now.Add(int64(time.Minute))
	spell()
	assert.Equal(t, 2, count("WARN", "upstream out of service"))
	assert.Contains(t, logs.String(), "spells_since_last_line=3")
	assert.Equal(t, 2, count("INFO", "upstream back in service"))
}
