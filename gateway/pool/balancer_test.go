package pool

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

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

// share runs n requests with the given concurrency through a pool with the
// policy, and returns the fraction the pool sent to servers[bad]. (The
// pool's count, not the server's: http.Transport itself retries an
// idempotent request once when a reused connection is reset.)
func share(t *testing.T, policy Policy, bad int, servers []*gatewaytest.Server, n, workers int) float64 {
	pool := newTestPool(t, servers...)
	pool.Policy = policy
	front := poolFront(t, pool)
	c := loadClient(t)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				res, err := c.Get(front.URL)
				if assert.NoError(t, err) {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	return float64(pool.Status()[bad].Requests) / float64(n)
}

// TestPeakEWMASendsLessToBadHost: power of two choices over the peak EWMA
// sends measurably less traffic than round robin to a host that is slow,
// and to one that fails fast (failing must not look fast).
func TestPeakEWMASendsLessToBadHost(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  func() *gatewaytest.Server
	}{
		{"slow", func() *gatewaytest.Server {
			s := gatewaytest.NewServer(gatewaytest.SlowHeaders)
			s.Delay = 25 * time.Millisecond
			return s
		}},
		{"failing_half", func() *gatewaytest.Server { return newFlaky(t, 0.5) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, bad, c := gatewaytest.NewHealthy(nil), tc.bad(), gatewaytest.NewHealthy(nil)
			defer closeAll(a, bad, c)
			servers := []*gatewaytest.Server{a, bad, c}
			rr := share(t, RoundRobin, 1, servers, 300, 4)
			p2c := share(t, PeakEWMA, 1, servers, 300, 4)
			t.Logf("%s host's share: round robin %.1f%%, peak EWMA %.1f%%", tc.name, 100*rr, 100*p2c)
			assert.InDelta(t, 1.0/3, rr, 0.02, "round robin spreads evenly")
			// A failure costs a host twice the pool's slowest success: mild
			// enough that, with requests in flight elsewhere, the host
			// still wins some pairings (about 3–14% here); resting, off in
			// this test, does the rest.
			assert.Less(t, p2c, 0.6*rr, "peak EWMA must avoid the %s host", tc.name)
		})
	}
}

// TestPassiveHealthMeasure is the measurement behind the resting defaults
// of breaker.HostHealth (formerly the pool's PassiveHealth) (DESIGN: choose the per-host defaults by measuring). It takes
// minutes, so it runs only with PROXYKIT_MEASURE=1:
//
//	PROXYKIT_MEASURE=1 go test -run TestPassiveHealthMeasure -v -timeout 30m ./gateway/pool/
//
// Scenario 1 (issue 4): 3 hosts, one resetting a random 20% of POSTs after
// reading them, at three load levels; POST success rate per passive-health
// setting. Scenario 2 (recovery): one host refuses connections for 2 s,
// then is healthy again; how long until it serves again.
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
	for _, policy := range []Policy{PeakEWMA, RoundRobin} {
		for _, cfg := range configs {
			for _, ld := range loads {
				a, c := gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil)
				b := newFlaky(t, 0.2)
				pool := newTestPool(t, a, b, c)
				pool.Policy = policy
				withHosts(t, pool, breaker.Settings{Health: cfg.ph})
				front := poolFront(t, pool)
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
		pool := newTestPool(t, a, b, c)
		withHosts(t, pool, breaker.Settings{Health: cfg.ph})
		pool.Policy = RoundRobin
		front := poolFront(t, pool)
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
