package gateway_test

// Reliability tests (issue 8): request-ID validation fuzzed against an
// independent oracle, http.ResponseController through the Monitor's
// Interceptor, and the pool, transport and Monitor under hundreds of
// concurrent clients while upstream health flips.

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// relIDOracle is the documented request-ID syntax, written independently
// of ValidRequestID.
var relIDOracle = regexp.MustCompile(`^[A-Za-z0-9\-_.:+/=@]{1,128}$`)

// FuzzRequestID: whatever X-Request-ID values a client sends (none, one,
// two; any bytes, any length), the RequestID middleware leaves exactly one
// ID on the request and the response: the client's own when it sent
// exactly one valid ID, else a fresh one; always valid by the documented
// syntax (so nothing that needs escaping in a header, a log line or a
// page), at most 128 bytes, and the one RequestIDOf reports downstream.
// ValidRequestID agrees with an independent regular expression.
// Seeds: testdata/fuzz/FuzzRequestID.
func FuzzRequestID(f *testing.F) {
	f.Add("01JQ5Z7W3X8K2M9N4P6R0T0000", "", 1)
	f.Add("<script>alert(1)</script>", "", 1)
	f.Add("a", "b", 2)
	f.Add("", "", 0)
	h := gateway.RequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen", gateway.RequestIDOf(r))
		w.Header().Set("X-Forwarded-Id-Count", fmt.Sprint(len(r.Header.Values("X-Request-Id"))))
	}))
	f.Fuzz(func(t *testing.T, first, second string, n int) {
		if got, want := gateway.ValidRequestID(first), relIDOracle.MatchString(first); got != want {
			t.Fatalf("ValidRequestID(%q) = %t, the documented syntax says %t", first, got, want)
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		switch n % 3 {
		case 1:
			r.Header["X-Request-Id"] = []string{first}
		case 2:
			r.Header["X-Request-Id"] = []string{first, second}
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		ids := w.Header().Values("X-Request-Id")
		if len(ids) != 1 {
			t.Fatalf("response carries %d IDs: %q", len(ids), ids)
		}
		id := ids[0]
		if !relIDOracle.MatchString(id) {
			t.Fatalf("response ID %q breaks the documented syntax", id)
		}
		if seen := w.Header().Get("X-Seen"); seen != id {
			t.Fatalf("downstream saw %q, the client got %q", seen, id)
		}
		if c := w.Header().Get("X-Forwarded-Id-Count"); c != "1" {
			t.Fatalf("the request carries %s IDs downstream", c)
		}
		keep := n%3 == 1 && relIDOracle.MatchString(first)
		if keep && id != first {
			t.Fatalf("a valid ID %q was replaced by %q", first, id)
		}
		if !keep && n%3 != 0 && (id == first || (n%3 == 2 && id == second)) {
			t.Fatalf("an ID that must be replaced was kept: %q", id)
		}
	})
}

// relControls serves a handler that uses http.ResponseController through
// wrap: SetReadDeadline, SetWriteDeadline and Flush must reach the
// connection (no http.ErrNotSupported from a wrapper without Unwrap), the
// flushed part must reach the client before the handler finishes, and
// Hijack must hand the connection over.
func relControls(t *testing.T, wrap func(http.Handler) http.Handler) {
	t.Helper()
	gatewaytest.CheckResponseController(t, wrap)
}

// TestReliabilityMonitorResponseController: Flush, deadlines and Hijack
// work through the Monitor's Interceptor, and through an Interceptor whose
// Decider passes.
func TestReliabilityMonitorResponseController(t *testing.T) {
	t.Run("Monitor", func(t *testing.T) {
		m := &gateway.Monitor{Logger: slog.New(slog.DiscardHandler)}
		relControls(t, m.Wrap)
	})
	t.Run("Interceptor", func(t *testing.T) {
		relControls(t, func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(gateway.NewInterceptor(w, nil), r)
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
	pool, err := gateway.NewPool(targets...)
	require.NoError(t, err)
	var open [3]atomic.Bool // a stand-in for per-host breakers
	pool.Healthy = func(host string) bool {
		for i, s := range servers {
			if s.Addr == host {
				return !open[i].Load()
			}
		}
		return true
	}
	pool.RetryAfter = func(string) time.Duration { return 50 * time.Millisecond }
	pool.Logger = quiet
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{
		Rewrite:      pool.Rewrite,
		Transport:    pool.Transport(&gateway.Transport{Base: base}),
		ErrorHandler: gateway.NewErrorHandler(quiet),
		ErrorLog:     slog.NewLogLogger(quiet.Handler(), slog.LevelError),
	}
	m := &gateway.Monitor{Logger: quiet}
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
