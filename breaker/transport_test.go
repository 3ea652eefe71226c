package breaker_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// hostTransport returns hosts.Transport over a fresh instrumented
// transport.
func hostTransport(t *testing.T, hosts *breaker.Hosts) http.RoundTripper {
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	return hosts.Transport(&gateway.Transport{Base: base})
}

func post(t *testing.T, target string) *http.Request {
	req, err := http.NewRequest("POST", target+"/", strings.NewReader("payload"))
	require.NoError(t, err)
	return req
}

// roundTrip POSTs to target through rt and drains the response.
func roundTrip(t *testing.T, rt http.RoundTripper, target string) (*http.Response, error) {
	t.Helper()
	res, err := rt.RoundTrip(post(t, target))
	if err == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	return res, err
}

func asFailure(t *testing.T, err error) *gateway.Failure {
	t.Helper()
	var f *gateway.Failure
	require.True(t, errors.As(err, &f), "want a *gateway.Failure, got %v", err)
	return f
}

// TestHostsIsolate: a failing host trips its own breaker; requests to it
// then fail at once with the open failure, without reaching it, while the
// other host is served.
func TestHostsIsolate(t *testing.T) {
	bad := newControlled(t, modeStatus, http.StatusServiceUnavailable)
	good := newControlled(t, modeOK, 0)
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet, MinRequests: 5, Timeout: time.Minute})
	require.NoError(t, err)
	rt := hostTransport(t, hosts)
	res, err := roundTrip(t, rt, good.URL) // another host serves: not a whole pool out
	require.NoError(t, err)
	res.Body.Close()

	for range 5 {
		res, err := roundTrip(t, rt, bad.URL)
		require.NoError(t, err)
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	}
	assert.False(t, hosts.Allows(bad.Addr))
	assert.True(t, hosts.Allows(good.Addr))
	assert.True(t, hosts.Allows("unknown.test:80"), "a host without a breaker is allowed")
	assert.InDelta(t, time.Minute.Seconds(), hosts.OpenFor(bad.Addr).Seconds(), 5)
	assert.Zero(t, hosts.OpenFor(good.Addr))

	start := time.Now()
	_, err = roundTrip(t, rt, bad.URL)
	elapsed := time.Since(start)
	f := asFailure(t, err)
	assert.Equal(t, gateway.ClassOpen, f.Class)
	assert.Equal(t, http.StatusServiceUnavailable, f.StatusCode())
	assert.Equal(t, bad.Addr, f.Upstream)
	assert.False(t, f.Sent)
	assert.InDelta(t, time.Minute.Seconds(), f.RetryAfter.Seconds(), 5)
	assert.EqualValues(t, 5, bad.Requests(), "the open host is not touched")
	t.Logf("open fast-fail took %v", elapsed)

	res, err = roundTrip(t, rt, good.URL)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.StatusCode)

	st := hosts.States()
	require.Len(t, st, 2, "no overflow entry while nothing passes unguarded")
	keys := []string{st[0].Key, st[1].Key}
	assert.True(t, sort.StringsAreSorted(keys))
	assert.ElementsMatch(t, []string{bad.Addr, good.Addr}, keys)
}

// TestAllowsTakesNoProbe: asking Allows while half-open does not use up a
// probe slot; once every slot is taken, Allows says no and requests fail
// at once.
func TestAllowsTakesNoProbe(t *testing.T) {
	up := newControlled(t, modeStatus, http.StatusBadGateway)
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet, MinRequests: 5, Timeout: 200 * time.Millisecond})
	require.NoError(t, err)
	rt := hostTransport(t, hosts)
	for range 5 {
		_, err := roundTrip(t, rt, up.URL)
		require.NoError(t, err)
	}
	st := hosts.States()[0]
	waitOpenEnd(t, st)
	for range 20 {
		require.True(t, hosts.Allows(up.Addr), "half-open with free probe slots")
	}
	assert.Equal(t, breaker.StateHalfOpen, hosts.States()[0].State)

	release := up.hold(t, 3, func() (*http.Response, error) { return rt.RoundTrip(post(t, up.URL)) })
	assert.False(t, hosts.Allows(up.Addr), "every probe slot is taken")
	_, err = roundTrip(t, rt, up.URL)
	f := asFailure(t, err)
	assert.Equal(t, gateway.ClassOpen, f.Class)
	assert.Equal(t, time.Second, f.RetryAfter)
	release()
	assert.True(t, hosts.Allows(up.Addr))
	assert.Equal(t, breaker.StateClosed, hosts.States()[0].State)
}

// TestTransportExcludesCanceled: a request whose client went away counts
// for nothing, whatever error it ended with.
func TestTransportExcludesCanceled(t *testing.T) {
	up := newControlled(t, modeBlock, 0)
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet})
	require.NoError(t, err)
	rt := hostTransport(t, hosts)
	for range 8 {
		req := httptest.NewRequest("GET", up.URL, nil)
		req.RequestURI = ""
		ctx, cancel := context.WithCancel(req.Context())
		go func() { <-up.entered; cancel() }()
		_, err := rt.RoundTrip(req.WithContext(ctx))
		assert.Equal(t, gateway.ClassCanceled, asFailure(t, err).Class)
	}
	st := hosts.States()[0]
	assert.Equal(t, breaker.StateClosed, st.State)
	assert.EqualValues(t, 8, st.Counts.Exclusions)
	assert.Zero(t, st.Counts.Failures)
}

// outageStack is the full recommended stack without retry: a pool whose
// Healthy predicate is the per-host breakers, and the breakers around the
// instrumented transport.
func outageStack(t *testing.T, hosts *breaker.Hosts, servers ...*controlled) *httptest.Server {
	targets := make([]*url.URL, len(servers))
	for i, s := range servers {
		u, err := url.Parse(s.URL)
		require.NoError(t, err)
		targets[i] = u
	}
	p, err := pool.New(targets...)
	require.NoError(t, err)
	p.Logger = quiet
	p.Health = hosts
	proxy := &httputil.ReverseProxy{
		Transport:    hostTransport(t, hosts),
		ErrorHandler: gateway.NewErrorHandler(quiet),
	}
	require.NoError(t, p.Attach(proxy))
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	t.Cleanup(front.Client().CloseIdleConnections)
	return front
}

// TestTotalOutage: every upstream fails. Once the breakers are open the
// clients get fast 503s with Retry-After, and the upstreams see only the
// breakers' half-open probes.
func TestTotalOutage(t *testing.T) {
	var servers []*controlled
	for range 3 {
		servers = append(servers, newControlled(t, modeStatus, http.StatusBadGateway))
	}
	const open = 200 * time.Millisecond
	var mu sync.Mutex
	halfOpens := map[string]int{}
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet, MinRequests: 5, Timeout: open,
		OnStateChange: func(_, key string, _, to breaker.State) {
			if to == breaker.StateHalfOpen {
				mu.Lock()
				halfOpens[key]++
				mu.Unlock()
			}
		}})
	require.NoError(t, err)
	front := outageStack(t, hosts, servers...)
	c := front.Client()

	// Trip every breaker: 5 failures each.
	for range 15 {
		assert.Equal(t, http.StatusBadGateway, get(t, c, front.URL).StatusCode)
	}
	for _, s := range hosts.States()[:3] {
		require.Equal(t, breaker.StateOpen, s.State, s.Key)
	}

	// While open: 503 + Retry-After at once; only probes reach upstreams.
	// Counted, not timed: on a busy machine fewer requests fit in the open
	// periods, but each one is either a fast 503 or a half-open probe.
	var fast []time.Duration
	answered := 0
	deadline := time.Now().Add(4 * open)
	for time.Now().Before(deadline) || answered < 50 {
		start := time.Now()
		res := get(t, c, front.URL)
		answered++
		if res.StatusCode == http.StatusServiceUnavailable {
			fast = append(fast, time.Since(start))
			assert.NotEmpty(t, res.Header.Get("Retry-After"))
		} else {
			assert.Equal(t, http.StatusBadGateway, res.StatusCode, "a probe's answer")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var probes int64
	for _, s := range servers {
		n := s.Requests() - 5
		assert.LessOrEqual(t, n, int64(halfOpens[s.Addr]), "%s saw more than one probe per half-open period", s.Addr)
		probes += n
	}
	assert.Positive(t, probes, "open periods end in probes")
	require.NotEmpty(t, fast)
	assert.Equal(t, answered, len(fast)+int(probes), "every request but the probes is answered without the upstreams")
	sort.Slice(fast, func(i, j int) bool { return fast[i] < fast[j] })
	t.Logf("%d fast 503s, %d probes; client-observed latency p50 %v, p99 %v", len(fast), probes,
		fast[len(fast)/2], fast[len(fast)*99/100])
}

// TestDeadlineCounts: a request that runs out of time (a per-try timeout,
// the inbound deadline) is the upstream's failure, unlike a cancellation.
func TestDeadlineCounts(t *testing.T) {
	up := newControlled(t, modeBlock, 0)
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet, MinRequests: 5, Timeout: time.Minute})
	require.NoError(t, err)
	rt := hostTransport(t, hosts)
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := rt.RoundTrip(post(t, up.URL).WithContext(ctx))
		cancel()
		assert.Equal(t, gateway.ClassTimeout, asFailure(t, err).Class)
		<-up.entered
	}
	assert.Equal(t, breaker.StateOpen, hosts.States()[0].State)
}

// TestHostsCanonicalName: hosts are keyed by their canonical
// name, host:port with the scheme's default port, so that a target written
// without a port is one upstream for the breaker, the pool and the logs.
func TestHostsCanonicalName(t *testing.T) {
	hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet, MinRequests: 5, Timeout: time.Minute})
	require.NoError(t, err)
	var seen []string
	rt := hosts.Transport(relRoundTrip(func(r *http.Request) (*http.Response, error) {
		seen = append(seen, r.URL.Host+" "+r.Host)
		return &http.Response{StatusCode: http.StatusBadGateway, Body: http.NoBody, Request: r}, nil
	}))
	for _, target := range []string{"http://svc/", "http://svc:80/x", "http://svc/", "http://svc:80/", "http://svc/"} {
		res, err := rt.RoundTrip(httptest.NewRequest("GET", target, nil))
		require.NoError(t, err)
		res.Body.Close()
	}
	assert.Equal(t, "svc svc", seen[0], "the outbound URL and Host header stay as written")
	assert.False(t, hosts.Allows("svc:80"), "five failures, one upstream")
	assert.Positive(t, hosts.OpenFor("svc:80"))
	assert.True(t, hosts.Allows("svc:443"), "https://svc is another upstream")
	_, err = rt.RoundTrip(httptest.NewRequest("GET", "http://svc/", nil))
	f := asFailure(t, err)
	assert.Equal(t, gateway.ClassOpen, f.Class)
	assert.Equal(t, "svc:80", f.Upstream)
	st := hosts.States()
	require.Len(t, st, 1, "one host; no overflow entry")
	assert.Equal(t, "svc:80", st[0].Key)
}
