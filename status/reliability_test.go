package status_test

// Reliability tests: http.ResponseController through the Monitor's
// Interceptor, and the pool, transport and Monitor under hundreds of
// concurrent clients while upstream health flips.

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/status"
)

// TestReliabilityMonitorResponseController: Flush, deadlines and Hijack
// work through the Monitor's Interceptor, and through an Interceptor whose
// Decider passes.
func TestReliabilityMonitorResponseController(t *testing.T) {
	t.Run("Monitor", func(t *testing.T) {
		m := &status.Monitor{Logger: slog.New(slog.DiscardHandler)}
		gatewaytest.CheckResponseController(t, m.Wrap)
	})
	t.Run("Interceptor", func(t *testing.T) {
		gatewaytest.CheckResponseController(t, func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(newInterceptor(w, nil), r)
			})
		})
	})
}

// TestReliabilityConcurrentPool: 200 clients through Monitor → ReverseProxy
// over a Pool (with its Transport and the gateway Transport) of three
// upstreams while their faults flip (healthy, refused, reset after the
// request, 503) and the pool's health predicate flips as a breaker's would.
// Under -race: no data race, no request lost or counted twice — the
// Monitor counts exactly the requests the clients made, by status family,
// with nothing left in flight — and every failure the client sees is a
// gateway status (502, 503, 504), never a transport error.
func TestReliabilityConcurrentPool(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	servers := make([]*gatewaytest.Server, 3)
	targets := make([]*url.URL, 3)
	for i := range servers {
		servers[i] = gatewaytest.NewHealthy(nil)
		t.Cleanup(servers[i].Close)
		u, err := url.Parse(servers[i].URL)
		require.NoError(t, err)
		targets[i] = u
	}
	p, err := pool.New(targets...)
	require.NoError(t, err)
	var open [3]atomic.Bool // a stand-in for per-host breakers
	allows := func(host string) bool {
		for i, s := range servers {
			if s.Addr == host {
				return !open[i].Load()
			}
		}
		return true
	}
	p.Health = healthFuncs{allows: allows, openFor: func(string) time.Duration { return 50 * time.Millisecond }}
	p.Logger = quiet
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{
		Rewrite:      p.Rewrite,
		Transport:    p.Transport(&gateway.Transport{Base: base}),
		ErrorHandler: gateway.NewErrorHandler(quiet),
		ErrorLog:     slog.NewLogLogger(quiet.Handler(), slog.LevelError),
	}
	m := &status.Monitor{Logger: quiet}
	front := httptest.NewServer(m.Wrap(proxy))
	t.Cleanup(front.Close)

	stop := make(chan struct{})
	var flipper sync.WaitGroup
	flipper.Add(1)
	go func() {
		defer flipper.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		faults := []gatewaytest.Fault{gatewaytest.Healthy, gatewaytest.Healthy, gatewaytest.Refused,
			gatewaytest.ResetAfterRequest, gatewaytest.Status}
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			i := rng.IntN(len(servers))
			assert.NoError(t, servers[i].SetFault(faults[rng.IntN(len(faults))]))
			open[rng.IntN(3)].Store(rng.IntN(4) == 0)
		}
	}()

	const clients = 200
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	var byFamily [6]atomic.Int64
	var total, transportErrs atomic.Int64
	deadline := time.Now().Add(time.Second)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				total.Add(1)
				res, err := client.Get(front.URL + "/")
				if err != nil {
					transportErrs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				byFamily[res.StatusCode/100].Add(1)
				switch res.StatusCode {
				case 200, 502, 503, 504:
				default:
					t.Errorf("status %d", res.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	flipper.Wait()

	assert.Zero(t, transportErrs.Load(), "every client got a response")
	snap := m.Snapshot()
	assert.Equal(t, total.Load(), snap.Requests, "the Monitor saw every request once")
	assert.Zero(t, snap.InFlight)
	assert.Equal(t, byFamily[2].Load(), snap.ByStatus["2xx"])
	assert.Equal(t, byFamily[5].Load(), snap.ByStatus["5xx"])
	var failures int64
	for _, n := range snap.Failures {
		failures += n
	}
	assert.Equal(t, byFamily[5].Load(), failures, "each failed request is counted under one class")
	assert.Positive(t, byFamily[2].Load())
	assert.Positive(t, byFamily[5].Load())
	t.Logf("%d requests: %d ok, %d failed; by class %v", total.Load(), byFamily[2].Load(), byFamily[5].Load(), snap.Failures)
}

type healthFuncs struct {
	allows  func(string) bool
	openFor func(string) time.Duration
}

func (h healthFuncs) Allows(host string) bool           { return h.allows(host) }
func (h healthFuncs) OpenFor(host string) time.Duration { return h.openFor(host) }

func newInterceptor(w http.ResponseWriter, d gateway.Decider) *gateway.Interceptor {
	i := new(gateway.Interceptor)
	i.Reset(w, d)
	return i
}
