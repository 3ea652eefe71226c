package proxykit

// Host health through the whole stack: what a restart, a host
// that comes back broken, a flaky host, a dead pool and a failing route
// cost the clients, measured at the clients and counted at the upstreams.
// Short runs on loopback with real faults; the figures are logged.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strconv"
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

// sample is one client request of a load run.
type sample struct {
	path       string
	sent, done time.Time
	status     int
	class      string // the problem document's class, for the stack's own failures
}

// load sends GETs to front on a fixed schedule (open loop: every interval,
// whatever the answers) until stop is closed, cycling through paths, and
// returns what the clients saw.
func load(t *testing.T, front string, interval time.Duration, stop <-chan struct{}, paths ...string) []sample {
	t.Helper()
	if len(paths) == 0 {
		paths = []string{"/"}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var (
		mu  sync.Mutex
		out []sample
		wg  sync.WaitGroup
	)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			wg.Wait()
			slices.SortFunc(out, func(a, b sample) int { return a.sent.Compare(b.sent) })
			return out
		case <-tick.C:
		}
		wg.Add(1)
		go func(path string) {
			defer wg.Done()
			s := sample{path: path, sent: time.Now()}
			req, _ := http.NewRequest("GET", front+path, nil)
			req.Header.Set("Accept", "application/json")
			res, err := client.Do(req)
			if err == nil {
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				s.status = res.StatusCode
				if strings.HasPrefix(res.Header.Get("Content-Type"), "application/problem+json") {
					var p struct{ Class string }
					_ = json.Unmarshal(body, &p)
					s.class = p.Class
				}
			}
			s.done = time.Now()
			mu.Lock()
			out = append(out, s)
			mu.Unlock()
		}(paths[i%len(paths)])
	}
}

// firstOKAfter returns how long after t the first request sent after t
// was answered 200.
func firstOKAfter(samples []sample, t time.Time) (time.Duration, bool) {
	best, ok := time.Duration(0), false
	for _, s := range samples {
		if s.status == http.StatusOK && !s.sent.Before(t) && (!ok || s.done.Sub(t) < best) {
			best, ok = s.done.Sub(t), true
		}
	}
	return best, ok
}

// served returns the share of requests sent in [from, to) answered 200.
func served(samples []sample, from, to time.Time) float64 {
	n, ok := 0, 0
	for _, s := range samples {
		if s.sent.Before(from) || !s.sent.Before(to) {
			continue
		}
		n++
		if s.status == http.StatusOK {
			ok++
		}
	}
	if n == 0 {
		return 0
	}
	return float64(ok) / float64(n)
}

// rig is n healthy upstreams behind a stack built with cfg.
type rig struct {
	ups   []*gatewaytest.Server
	st    *Stack
	front *httptest.Server
}

func newRig(t *testing.T, n int, h http.Handler, cfg Config) *rig {
	t.Helper()
	r := &rig{}
	for range n {
		s := gatewaytest.NewHealthy(h)
		t.Cleanup(s.Close)
		r.ups = append(r.ups, s)
		cfg.Upstreams = append(cfg.Upstreams, mustParse(s.URL))
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	st, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(st.Close)
	r.st = st
	r.front = httptest.NewServer(st)
	t.Cleanup(r.front.Close)
	return r
}

func (r *rig) setAll(t *testing.T, f gatewaytest.Fault) {
	t.Helper()
	for _, s := range r.ups {
		require.NoError(t, s.SetFault(f))
	}
}

func (r *rig) upstreamRequests() int64 {
	var n int64
	for _, s := range r.ups {
		n += s.Requests()
	}
	return n
}

// TestRestartRecovery: one host, and a pool of three, refuse connections
// for 1 s (a restart) under steady load and come back: the first 200
// follows the return within the accounts' 0.25 s (asserted with room for a
// loaded machine; the figure is logged), and nearly everything is served
// after it.
func TestRestartRecovery(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d hosts", n), func(t *testing.T) {
			r := newRig(t, n, nil, Config{})
			stop := make(chan struct{})
			var back time.Time
			go func() {
				time.Sleep(300 * time.Millisecond)
				r.setAll(t, gatewaytest.Refused)
				time.Sleep(time.Second)
				r.setAll(t, gatewaytest.Healthy)
				back = time.Now()
				time.Sleep(700 * time.Millisecond)
				close(stop)
			}()
			samples := load(t, r.front.URL, 4*time.Millisecond, stop)
			first, ok := firstOKAfter(samples, back)
			require.True(t, ok, "served again after the return")
			after := served(samples, back.Add(first), back.Add(700*time.Millisecond))
			t.Logf("%d hosts: first 200 %v after the return; %.1f%% served after it (%d requests in all)",
				n, first.Round(100*time.Microsecond), 100*after, len(samples))
			assert.LessOrEqual(t, first, 500*time.Millisecond, "target 250 ms (asserted with room)")
			assert.GreaterOrEqual(t, after, 0.95)
		})
	}
}

// TestComesBackAnswering503: a host answers 503 to everything — from the
// start, or after a restart (it refuses connections, then comes back
// broken). It is shed (the status rule: nearly all its answers are
// failures) and tried again on a bounded schedule — no flapping storm —
// and the upstream sees at most 1.25 requests per client request.
func TestComesBackAnswering503(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "from the start", true: "after a restart"}[restart], func(t *testing.T) {
			var opens atomic.Int64
			r := newRig(t, 1, nil, Config{Breaker: breaker.Settings{
				OnStateChange: func(_, _ string, _, to breaker.State) {
					if to == breaker.StateOpen {
						opens.Add(1)
					}
				}}})
			stop := make(chan struct{})
			var phase time.Time
			var upAtPhase, opensAtPhase int64
			go func() {
				if restart {
					time.Sleep(200 * time.Millisecond)
					r.setAll(t, gatewaytest.Refused)
					time.Sleep(500 * time.Millisecond)
				}
				upAtPhase, opensAtPhase = r.upstreamRequests(), opens.Load()
				r.setAll(t, gatewaytest.Status) // answering 503
				phase = time.Now()
				time.Sleep(2 * time.Second)
				close(stop)
			}()
			samples := load(t, r.front.URL, 5*time.Millisecond, stop)
			end := time.Now()
			clients := 0
			for _, s := range samples {
				if !s.sent.Before(phase) {
					clients++
					assert.Equal(t, http.StatusServiceUnavailable, s.status, "its 503, or the stack's")
				}
			}
			up := r.upstreamRequests() - upAtPhase
			trips := opens.Load() - opensAtPhase
			perSec := float64(trips) / end.Sub(phase).Seconds()
			t.Logf("503 phase: %d client requests, %d upstream requests (%.2f per client request), %d trips (%.1f/s)",
				clients, up, float64(up)/float64(clients), trips, perSec)
			assert.LessOrEqual(t, float64(up), 1.25*float64(clients))
			// Shed: the host gets its trial requests, on a schedule of time,
			// not the clients' (whose count a busy machine lowers): about
			// 18/s here, the account's bound being 20/s, with room.
			assert.LessOrEqual(t, float64(up)/end.Sub(phase).Seconds(), 30.0, "shed: most requests never reach it")
			// A whole pool out is tried again every 3×PanicInterval
			// (150 ms, PanicInterval's default being 50 ms) at most, with
			// at most MaxRequests trial requests.
			assert.LessOrEqual(t, perSec, 1/(3*(50*time.Millisecond).Seconds())+1)
		})
	}
}

// TestFlakyHostPOSTs: one of three hosts resets 20% of the requests it
// reads. POSTs (never retried once sent) are kept off it by resting, so
// ≥ 99.5% succeed, and none reaches an upstream twice.
func TestFlakyHostPOSTs(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	r := newRig(t, 3, nil, Config{})
	for _, s := range r.ups {
		s.OnRequest = func(req *http.Request) {
			mu.Lock()
			seen[req.Header.Get("X-Id")]++
			mu.Unlock()
		}
	}
	require.NoError(t, r.ups[0].SetFlaky(gatewaytest.ResetAfterRequest, 0.2))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	const workers, perWorker = 8, 300
	var ok atomic.Int64
	var wg sync.WaitGroup
	var failMu sync.Mutex
	failures := map[string]int{} // by status and class
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				req, _ := http.NewRequest("POST", r.front.URL+"/orders", strings.NewReader(`{"qty":1}`))
				req.Header.Set("X-Id", strconv.Itoa(w*perWorker+i))
				req.Header.Set("Accept", "application/json")
				res, err := client.Do(req)
				if err != nil {
					continue
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					ok.Add(1)
					continue
				}
				var p struct{ Class string }
				_ = json.Unmarshal(body, &p)
				failMu.Lock()
				failures[fmt.Sprintf("%d %s", res.StatusCode, p.Class)]++
				failMu.Unlock()
			}
		}()
	}
	wg.Wait()
	total := workers * perWorker
	rate := float64(ok.Load()) / float64(total)
	mu.Lock()
	twice := 0
	for _, n := range seen {
		if n > 1 {
			twice++
		}
	}
	mu.Unlock()
	t.Logf("%d POSTs: %.2f%% succeeded (failures %v); flaky host read %d of %d upstream requests; %d applied twice",
		total, 100*rate, failures, r.ups[0].Requests(), r.upstreamRequests(), twice)
	assert.GreaterOrEqual(t, rate, 0.995)
	assert.Zero(t, twice, "a POST reached an upstream twice")
}

// TestDeadPoolFastFail: every host blackholes connections (a full accept
// queue: dials hang until their timeout). Once the hosts are known to be
// out, no client request is parked on a dial to them — half-open follows
// a passed probe only, never the end of an open period, over several open
// periods — and the clients get no_upstream without a dial. A parked
// request would take the dial timeout (2 s), so every answer comes sooner.
// The answers' latency is logged, not bounded: under a CPU hog even their
// median reaches 0.7 s; the tight p99 (≤ 50 ms) is the loadtest's outage
// scenario (BENCHMARKS.md).
func TestDeadPoolFastFail(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("gatewaytest.Blackhole needs Linux")
	}
	const dialTimeout = 2 * time.Second
	var ups []*url.URL
	for range 3 {
		b := gatewaytest.NewBlackhole()
		t.Cleanup(b.Close)
		ups = append(ups, mustParse(b.URL))
	}
	base := gateway.NewHTTPTransport()
	base.DialContext = (&net.Dialer{Timeout: dialTimeout}).DialContext
	var out atomic.Int64
	var allOut atomic.Pointer[time.Time]
	st, err := New(Config{Upstreams: ups, Transport: base, Logger: quiet,
		Breaker: breaker.Settings{Health: breaker.HostHealth{ProbeTimeout: dialTimeout},
			OnStateChange: func(_, _ string, from, to breaker.State) {
				switch {
				case from == breaker.StateClosed && to == breaker.StateOpen:
					if out.Add(1) == int64(len(ups)) {
						now := time.Now()
						allOut.Store(&now)
					}
				case to == breaker.StateHalfOpen:
					t.Errorf("half-open without a probe that passed")
				}
			}}})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	front := httptest.NewServer(st)
	t.Cleanup(front.Close)

	stop := make(chan struct{})
	time.AfterFunc(5*time.Second, func() { close(stop) }) // open periods of 1 s and more
	samples := load(t, front.URL, 10*time.Millisecond, stop)
	require.NotNil(t, allOut.Load(), "every host out")
	var fast []time.Duration
	for _, s := range samples {
		if s.sent.Before(*allOut.Load()) {
			continue
		}
		assert.Equal(t, "no_upstream", s.class)
		fast = append(fast, s.done.Sub(s.sent))
	}
	require.NotEmpty(t, fast)
	slices.Sort(fast)
	p99 := fast[len(fast)*99/100]
	t.Logf("%d requests; all hosts out %v into the run; then %d no_upstream answers: p50 %v p99 %v max %v",
		len(samples), allOut.Load().Sub(samples[0].sent).Round(time.Millisecond), len(fast),
		fast[len(fast)/2], p99, fast[len(fast)-1])
	assert.Less(t, fast[len(fast)-1], dialTimeout, "no request was parked on a dial")
}

// TestOneFailingRoute: one host, one route answering 502 (its database
// is down) at half of the traffic: the host stays in service and every
// other route is served. On a starved machine the limiter may shed a few
// requests (the host does answer slower then); those are told apart by
// their class, and a host taken out by the failing route would fail most
// of them with another.
func TestOneFailingRoute(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	r := newRig(t, 1, h, Config{})
	stop := make(chan struct{})
	time.AfterFunc(2*time.Second, func() { close(stop) })
	samples := load(t, r.front.URL, 4*time.Millisecond, stop, "/bad", "/a", "/bad", "/b")
	others, ok, shed := 0, 0, 0
	for _, s := range samples {
		if s.path == "/bad" {
			continue
		}
		others++
		switch {
		case s.status == http.StatusOK:
			ok++
		case s.class == gateway.ClassOverloaded.String():
			shed++
		default:
			assert.Fail(t, "another route failed", "%s: %d %s", s.path, s.status, s.class)
		}
	}
	t.Logf("%d requests; other routes served %d of %d (%d shed by the limiter); host %s", len(samples), ok, others, shed, r.st.Hosts.HostState(r.ups[0].Addr))
	assert.Positive(t, ok)
	assert.LessOrEqual(t, shed*20, others, "at most a stall's few shed (5%%)")
	assert.Equal(t, pool.StateServing, r.st.Hosts.HostState(r.ups[0].Addr))
}
