package breaker_test

// Reliability tests: both seats under hundreds of concurrent
// requests while the guarded upstream flips between healthy and failing
// and the breakers cycle through every state; http.ResponseController
// through the handler seat's writer.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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
)

// relTransitions records OnStateChange calls per key and checks that each
// breaker's calls form one valid, gapless sequence: every call starts from
// the state the previous one entered.
type relTransitions struct {
	mu      sync.Mutex
	last    map[string]breaker.State
	entered map[breaker.State]int
	errs    []string
}

func newRelTransitions() *relTransitions {
	return &relTransitions{last: map[string]breaker.State{}, entered: map[breaker.State]int{}}
}

func (r *relTransitions) hook(_, key string, from, to breaker.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, seen := r.last[key]
	if !seen {
		prev = breaker.StateClosed
	}
	valid := (from == breaker.StateClosed && to == breaker.StateOpen) ||
		(from == breaker.StateOpen && to == breaker.StateHalfOpen) ||
		(from == breaker.StateHalfOpen && (to == breaker.StateClosed || to == breaker.StateOpen))
	if from != prev || !valid {
		r.errs = append(r.errs, fmt.Sprintf("key %q: %v → %v after entering %v", key, from, to, prev))
	}
	r.last[key] = to
	r.entered[to]++
}

func (r *relTransitions) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	assert.Empty(t, r.errs, "transitions out of order")
	for _, s := range []breaker.State{breaker.StateOpen, breaker.StateHalfOpen, breaker.StateClosed} {
		assert.Positive(t, r.entered[s], "entered %v", s)
	}
	t.Logf("entered: open %d, half-open %d, closed %d", r.entered[breaker.StateOpen],
		r.entered[breaker.StateHalfOpen], r.entered[breaker.StateClosed])
}

// relFlip alternates *failing between true and false every period until
// stop is closed.
func relFlip(failing *atomic.Bool, period time.Duration, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				failing.Store(false)
				return
			case <-time.After(period):
				failing.Store(!failing.Load())
			}
		}
	}()
	return &wg
}

// TestReliabilityConcurrentStateChanges: 256 goroutines send requests for
// one second through each seat while the guarded upstream alternates
// between failing (502) and healthy every 15 ms, with breakers open for
// 20 ms, so that every breaker cycles through closed, open and half-open
// many times under load. Invariants (under -race): each breaker's
// transitions are reported in order, without gaps; a request is either
// answered by the upstream or fast-failed as open (503, Retry-After ≥ 1 s)
// without reaching it; and once the upstream is healthy again every
// breaker closes.
func TestReliabilityConcurrentStateChanges(t *testing.T) {
	const workers = 256
	const run = time.Second

	t.Run("handler seat", func(t *testing.T) {
		var failing atomic.Bool
		var reached atomic.Int64
		inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reached.Add(1)
			if failing.Load() {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			_, _ = io.WriteString(w, "ok")
		})
		tr := newRelTransitions()
		// Four tenants, three keys: the fourth shares the overflow breaker.
		b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: 3,
			Timeout: 20 * time.Millisecond, MaxTimeout: 80 * time.Millisecond, OnStateChange: tr.hook})
		require.NoError(t, err)
		h := b.Wrap(inner)

		stop := make(chan struct{})
		flipper := relFlip(&failing, 15*time.Millisecond, stop)
		var answered, fastFailed atomic.Int64
		var wg sync.WaitGroup
		deadline := time.Now().Add(run)
		for g := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(deadline); i++ {
					req := httptest.NewRequest(http.MethodGet, "/", nil)
					req.Header.Set("X-Tenant", "t"+strconv.Itoa((g+i)%4))
					w := httptest.NewRecorder()
					h.ServeHTTP(w, req)
					switch w.Code {
					case http.StatusOK, http.StatusBadGateway:
						answered.Add(1)
					case http.StatusServiceUnavailable:
						fastFailed.Add(1)
						if ra, err := strconv.Atoi(w.Header().Get("Retry-After")); err != nil || ra < 1 {
							t.Errorf("open without a Retry-After of at least 1 s: %q", w.Header().Get("Retry-After"))
						}
					default:
						t.Errorf("status %d", w.Code)
					}
				}
			}()
		}
		wg.Wait()
		close(stop)
		flipper.Wait()
		assert.Equal(t, answered.Load(), reached.Load(), "open breakers never let a request reach the upstream")
		assert.Positive(t, fastFailed.Load())

		// Healthy again: every breaker closes after its probes.
		require.Eventually(t, func() bool {
			for i := range 4 {
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				req.Header.Set("X-Tenant", "t"+strconv.Itoa(i))
				h.ServeHTTP(httptest.NewRecorder(), req)
			}
			for _, s := range b.States() {
				if s.State != breaker.StateClosed {
					return false
				}
			}
			return true
		}, 5*time.Second, 5*time.Millisecond)
		tr.check(t) // after the recovery: every state entered, on a busy machine too
	})

	t.Run("transport seat", func(t *testing.T) {
		var failing atomic.Bool
		var reached atomic.Int64
		upstream := relRoundTrip(func(r *http.Request) (*http.Response, error) {
			reached.Add(1)
			if failing.Load() {
				if strings.HasPrefix(r.URL.Host, "h0") {
					// A transport error on one host, statuses on the others.
					return nil, gateway.NewFailure(gateway.ClassReset, r.URL.Host, errors.New("connection reset by peer"))
				}
				return &http.Response{StatusCode: http.StatusServiceUnavailable, Body: http.NoBody, Request: r}, nil
			}
			return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
		})
		tr := newRelTransitions()
		hosts, err := breaker.PerHost(breaker.Settings{Logger: quiet, Timeout: 20 * time.Millisecond, MaxTimeout: 80 * time.Millisecond, OnStateChange: tr.hook})
		require.NoError(t, err)
		rt := hosts.Transport(upstream)

		stop := make(chan struct{})
		flipper := relFlip(&failing, 15*time.Millisecond, stop)
		var answered atomic.Int64
		var wg sync.WaitGroup
		deadline := time.Now().Add(run)
		for g := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(deadline); i++ {
					host := "h" + strconv.Itoa((g+i)%3) + ".internal:80"
					req := httptest.NewRequest(http.MethodGet, "http://"+host+"/", nil)
					req.RequestURI = ""
					res, err := rt.RoundTrip(req)
					if err == nil {
						answered.Add(1)
						res.Body.Close()
						continue
					}
					var f *gateway.Failure
					if !errors.As(err, &f) {
						t.Errorf("unclassified error: %v", err)
						continue
					}
					switch f.Class {
					case gateway.ClassReset:
						answered.Add(1)
					case gateway.ClassOpen:
						if f.RetryAfter <= 0 || f.Sent || f.Upstream != host {
							t.Errorf("open failure: RetryAfter %v, Sent %t, Upstream %q", f.RetryAfter, f.Sent, f.Upstream)
						}
					default:
						t.Errorf("class %v", f.Class)
					}
				}
			}()
		}
		wg.Wait()
		close(stop)
		flipper.Wait()
		assert.Equal(t, answered.Load(), reached.Load(), "open breakers never let a request reach the upstream")
		require.Eventually(t, func() bool {
			for i := range 3 {
				req := httptest.NewRequest(http.MethodGet, "http://h"+strconv.Itoa(i)+".internal:80/", nil)
				req.RequestURI = ""
				if res, err := rt.RoundTrip(req); err == nil {
					res.Body.Close()
				}
			}
			for _, s := range hosts.States() {
				if s.State != breaker.StateClosed {
					return false
				}
			}
			return true
		}, 5*time.Second, 5*time.Millisecond)
		tr.check(t) // after the recovery: every state entered, on a busy machine too
	})
}

type relRoundTrip func(*http.Request) (*http.Response, error)

func (f relRoundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestReliabilityResponseController: Flush, read and write deadlines and
// Hijack work through the handler seat's writer.
func TestReliabilityResponseController(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet})
	require.NoError(t, err)
	gatewaytest.CheckResponseController(t, b.Wrap)
}
