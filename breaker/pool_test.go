package breaker_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

// The host-health model as a pool's Health: the wiring of package pool's
// documentation over real upstreams.

// pooled returns a pool over servers whose Health is a Hosts with settings
// s, closed at the test's end.
func pooled(t testing.TB, s breaker.Settings, servers ...*gatewaytest.Server) (*pool.Pool, *breaker.Hosts) {
	t.Helper()
	targets := make([]*url.URL, len(servers))
	for i, srv := range servers {
		u, err := url.Parse(srv.URL)
		require.NoError(t, err)
		targets[i] = u
	}
	p, err := pool.New(targets...)
	require.NoError(t, err)
	p.Logger = quiet
	s.Logger = quiet
	h, err := breaker.PerHost(s)
	require.NoError(t, err)
	t.Cleanup(h.Close)
	p.Health = h
	return p, h
}

// poolFront serves a ReverseProxy over p, with hosts' breakers, on
// loopback.
func poolFront(t testing.TB, p *pool.Pool, hosts *breaker.Hosts) *httptest.Server {
	t.Helper()
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{
		Rewrite:      p.Rewrite,
		Transport:    p.Transport(hosts.Transport(&gateway.Transport{Base: base})),
		ErrorHandler: gateway.NewErrorHandler(quiet),
	}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	t.Cleanup(front.Client().CloseIdleConnections)
	return front
}

func getBody(t testing.TB, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	res, err := c.Get(u)
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	res.Body.Close()
	return res, string(body)
}

func closeAll(servers ...*gatewaytest.Server) {
	for _, s := range servers {
		s.Close()
	}
}

// TestPoolRestsFailingHost: one failure that is evidence about the host
// (here a refused connection) rests it (HostHealth, the pool's Shares);
// while it rests the others take its traffic; it is back once the rest is
// over and a request to it succeeded.
func TestPoolRestsFailingHost(t *testing.T) {
	a, b, c := gatewaytest.NewHealthy(nil), gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(nil)
	defer closeAll(a, b, c)
	p, hosts := pooled(t, breaker.Settings{Health: breaker.HostHealth{Rest: 300 * time.Millisecond}}, a, b, c)
	p.Policy = pool.RoundRobin
	front := poolFront(t, p, hosts)

	res, _ := getBody(t, front.Client(), front.URL) // a
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, _ = getBody(t, front.Client(), front.URL) // b: refused
	require.Equal(t, http.StatusBadGateway, res.StatusCode)
	st := p.Status()[1]
	require.Equal(t, pool.StateResting, st.State, "one failure rests the host")
	assert.EqualValues(t, 1, st.Failures)
	var until time.Time
	for _, s := range hosts.States() {
		if s.Key == b.Addr {
			until = s.RestUntil
		}
	}
	require.False(t, until.IsZero())
	require.NoError(t, b.SetFault(gatewaytest.Healthy))

	// Within the rest, b gets nothing.
	for time.Now().Before(until.Add(-50 * time.Millisecond)) {
		before := b.Requests()
		res, _ := getBody(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusOK, res.StatusCode)
		if time.Now().Before(until) {
			assert.Equal(t, before, b.Requests(), "a resting host gets no traffic while others are left")
		}
	}
	require.Eventually(t, func() bool {
		// Back once its rest is over and a request to it succeeded.
		res, _ := getBody(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusOK, res.StatusCode)
		return p.Status()[1].State == pool.StateServing
	}, 5*time.Second, 10*time.Millisecond)
	for range 6 {
		res, _ := getBody(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusOK, res.StatusCode)
	}
	assert.GreaterOrEqual(t, b.Requests(), int64(2), "the rested host is back in rotation")
}

// TestPoolPanicsWhenAllResting: resting is a preference, not a verdict:
// with every host resting the pool still routes, never no_upstream; and an
// upstream's own 502 rests nothing (it is not evidence about the host).
func TestPoolPanicsWhenAllResting(t *testing.T) {
	a, b := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewServer(gatewaytest.Refused)
	defer closeAll(a, b)
	p, hosts := pooled(t, breaker.Settings{ConsecutiveFailures: 100, MinRequests: 100,
		Health: breaker.HostHealth{Rest: time.Minute}}, a, b)
	front := poolFront(t, p, hosts)
	for range 6 {
		res, _ := getBody(t, front.Client(), front.URL)
		assert.Equal(t, http.StatusBadGateway, res.StatusCode, "refused, not no_upstream")
	}
	var n int64
	for _, s := range p.Status() {
		assert.Equal(t, pool.StateResting, s.State)
		n += s.Requests
	}
	assert.EqualValues(t, 6, n)

	c := gatewaytest.NewStatus(502, "")
	defer c.Close()
	p, hosts = pooled(t, breaker.Settings{}, c)
	front = poolFront(t, p, hosts)
	res, body := getBody(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	assert.Contains(t, body, "from upstream")
	assert.Equal(t, pool.StateServing, p.Status()[0].State, "an upstream's own 502 rests nothing")
}

// newFlaky starts a healthy upstream that reads a random share ratio of
// requests, body included, and resets the connection without answering:
// those requests were applied, and cannot be retried safely.
func newFlaky(t testing.TB, ratio float64) *gatewaytest.Server {
	s := gatewaytest.NewHealthy(nil)
	require.NoError(t, s.SetFlaky(gatewaytest.ResetAfterRequest, ratio))
	return s
}

// loadClient is a client with enough idle connections for the workers, so
// that the front connection churn does not blur the figures.
func loadClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type tally struct{ ok, failed atomic.Int64 }

// drive runs workers that each send a request (POST with a 1 KiB body when
// post) then wait think, until ctx ends.
func drive(ctx context.Context, c *http.Client, url string, workers int, think time.Duration, post bool, into *tally) {
	body := strings.Repeat("x", 1024)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequest("GET", url, nil)
				if post {
					req, _ = http.NewRequest("POST", url, strings.NewReader(body))
				}
				res, err := c.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
				if ctx.Err() != nil {
					return // cut short by the end of the run: not counted
				}
				if err == nil && res.StatusCode == http.StatusOK {
					into.ok.Add(1)
				} else {
					into.failed.Add(1)
				}
				if think > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(think):
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestPassiveHealthMeasure is the measurement behind the resting defaults
// of HostHealth (RestAfter, Rest, MaxRest). It takes minutes, so it runs
// only with PROXYKIT_MEASURE=1:
//
//	PROXYKIT_MEASURE=1 go test -run TestPassiveHealthMeasure -v -timeout 30m ./breaker/
//
// Scenario 1: 3 hosts, one resetting a random 20% of POSTs after reading
// them, at three load levels; POST success rate per resting setting.
// Scenario 2 (recovery): one host refuses connections for 2 s, then is
// healthy again; how long until it serves again.
func TestPassiveHealthMeasure(t *testing.T) {
	if os.Getenv("PROXYKIT_MEASURE") == "" {
		t.Skip("set PROXYKIT_MEASURE=1 to run the passive-health measurement")
	}
	configs := []struct {
		name string
		ph   breaker.HostHealth
	}{
		{"none", breaker.HostHealth{RestAfter: -1}},
		{"nginx: 1 failure, 10 s", breaker.HostHealth{RestAfter: 1, Rest: 10 * time.Second, MaxRest: 10 * time.Second}},
		{"1 failure, 1 s fixed", breaker.HostHealth{RestAfter: 1, Rest: time.Second, MaxRest: time.Second}},
		{"2 failures, 1 s→10 s", breaker.HostHealth{RestAfter: 2}},
		{"default: 1 failure, 1 s→10 s", breaker.HostHealth{}},
	}
	loads := []struct {
		name    string
		workers int
		think   time.Duration
		dur     time.Duration
	}{
		{"~40/s", 2, 50 * time.Millisecond, 30 * time.Second},
		{"~200/s", 4, 20 * time.Millisecond, 30 * time.Second},
		{"max", 8, 0, 10 * time.Second},
	}
	for _, policy := range []pool.Policy{pool.PeakEWMA, pool.RoundRobin} {
		for _, cfg := range configs {
			for _, ld := range loads {
				a, c := gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil)
				b := newFlaky(t, 0.2)
				p, hosts := pooled(t, breaker.Settings{Health: cfg.ph}, a, b, c)
				p.Policy = policy
				front := poolFront(t, p, hosts)
				var tl tally
				ctx, cancel := context.WithTimeout(context.Background(), ld.dur)
				drive(ctx, loadClient(t), front.URL, ld.workers, ld.think, true, &tl)
				cancel()
				ok, failed := tl.ok.Load(), tl.failed.Load()
				total := ok + failed
				t.Logf("flaky  %-11s %-30s %-7s %6.0f req/s  POST success %7.3f%%  (%d failed of %d; flaky host got %.1f%%)",
					policy, cfg.name, ld.name, float64(total)/ld.dur.Seconds(), 100*float64(ok)/float64(total),
					failed, total, 100*float64(b.Requests())/float64(total))
				front.Close()
				closeAll(a, b, c)
			}
		}
	}
	for _, cfg := range configs[1:] {
		a, b, c := gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil)
		p, hosts := pooled(t, breaker.Settings{Health: cfg.ph}, a, b, c)
		p.Policy = pool.RoundRobin
		front := poolFront(t, p, hosts)
		var tl tally
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { drive(ctx, loadClient(t), front.URL, 4, 20*time.Millisecond, false, &tl); close(done) }()
		time.Sleep(time.Second)
		require.NoError(t, b.SetFault(gatewaytest.Refused))
		time.Sleep(2 * time.Second)
		require.NoError(t, b.SetFault(gatewaytest.Healthy))
		back, n0 := time.Now(), b.Requests()
		for b.Requests() == n0 && time.Since(back) < 30*time.Second {
			time.Sleep(5 * time.Millisecond)
		}
		delay := time.Since(back)
		cancel()
		<-done
		t.Logf("outage %-30s host back after a 2 s outage: first request %v after it recovered; %d failed of %d",
			cfg.name, delay.Round(10*time.Millisecond), tl.failed.Load(), tl.ok.Load()+tl.failed.Load())
		front.Close()
		closeAll(a, b, c)
	}
}
