package retry

import (
	"context"
	"io"
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

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

// staller is an upstream that waits before its response header, as long
// as stall says for each request (0: not at all), answering with its name
// in X-From and the body; it counts the requests whose wait the client
// cancelled.
type staller struct {
	*gatewaytest.Server
	name     string
	stall    func() time.Duration
	body     string
	canceled atomic.Int64
	started  atomic.Int64
}

func newStaller(t *testing.T, name string, stall time.Duration) *staller {
	s := &staller{name: name, stall: func() time.Duration { return stall }, body: name}
	s.Server = gatewaytest.NewHealthy(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *staller) serve(w http.ResponseWriter, r *http.Request) {
	s.started.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	if d := s.stall(); d > 0 {
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-r.Context().Done():
			s.canceled.Add(1)
			return
		}
	}
	w.Header().Set("X-From", s.name)
	_, _ = io.WriteString(w, s.body)
}

// hedged builds retry over a proxy routed by the test balancer (first
// untried target) to the upstreams.
func hedged(t *testing.T, o Options, ups ...*staller) (*Retry, http.Handler) {
	t.Helper()
	servers := make([]*gatewaytest.Server, len(ups))
	for i, u := range ups {
		servers[i] = u.Server
	}
	if o.Hedges == 0 {
		o.Hedges = 1
	}
	rt := mustNew(t, o)
	return rt, rt.Wrap(newProxy(t, ordered(t, servers...)))
}

func get(t *testing.T, front *httptest.Server, method, body string) (response, time.Duration) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	start := time.Now()
	res := do(t, front, newRequest(t, t.Context(), method, front.URL, rd))
	return res, time.Since(start)
}

// TestHedgeStalledAttemptLoses: a first attempt stalled past the hedge
// delay loses to a hedge sent to the other upstream; the stalled attempt
// is cancelled at once, and its cancellation is no failure: nothing is
// handed to the enclosing layer.
func TestHedgeStalledAttemptLoses(t *testing.T) {
	a, b := newStaller(t, "a", 10*time.Second), newStaller(t, "b", 0)
	var events []HedgeEvent
	var mu sync.Mutex
	rt, h := hedged(t, Options{HedgeDelay: 20 * time.Millisecond, OnHedge: func(e HedgeEvent, attempt int, delay time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, e)
		assert.Equal(t, 2, attempt)
		assert.GreaterOrEqual(t, delay, 20*time.Millisecond)
	}}, a, b)
	o := &outer{next: h}
	front := serve(t, o)

	res, took := get(t, front, http.MethodGet, "")
	assert.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, "b", res.body)
	assert.Equal(t, []string{"b"}, res.header.Values("X-From"))
	assert.GreaterOrEqual(t, took, 20*time.Millisecond)
	assert.Less(t, took, 2*time.Second)
	assert.Eventually(t, func() bool { return a.canceled.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the losing attempt is cancelled at once")
	assert.Nil(t, o.get(), "a loser's cancellation is nobody's failure")
	st := rt.Stats()
	assert.EqualValues(t, 1, st.Hedges)
	assert.EqualValues(t, 1, st.HedgesWon)
	assert.EqualValues(t, 0, st.TotalRetries)
	assert.Equal(t, 20*time.Millisecond, st.HedgeDelay)
	mu.Lock()
	assert.Equal(t, []HedgeEvent{HedgeSent, HedgeWon}, events)
	mu.Unlock()
}

// TestHedgeNotWhenFast: attempts that answer within the delay are never
// hedged.
func TestHedgeNotWhenFast(t *testing.T) {
	a, b := newStaller(t, "a", 0), newStaller(t, "b", 0)
	rt, h := hedged(t, Options{HedgeDelay: 200 * time.Millisecond}, a, b)
	front := serve(t, h)
	for range 50 {
		res, _ := get(t, front, http.MethodGet, "")
		require.Equal(t, "a", res.body)
	}
	assert.EqualValues(t, 50, a.Requests())
	assert.EqualValues(t, 0, b.Requests())
	assert.Zero(t, rt.Stats().Hedges)
}

// TestHedgeOnlySafeMethods: POST, PATCH, PUT and DELETE are not hedged by
// default; Hedgeable opts a method in, and a hedged body arrives whole.
func TestHedgeOnlySafeMethods(t *testing.T) {
	// a's stall is far beyond the hedge delay, so that on a busy machine
	// the hedge still answers first.
	a, b := newStaller(t, "a", 600*time.Millisecond), newStaller(t, "b", 0)
	rt, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond}, a, b)
	front := serve(t, h)
	for _, m := range []string{http.MethodPost, http.MethodPatch, http.MethodPut, http.MethodDelete} {
		res, _ := get(t, front, m, "payload")
		assert.Equal(t, "a", res.body, m)
	}
	assert.EqualValues(t, 0, b.Requests(), "no copy of a non-safe request went out")
	assert.Zero(t, rt.Stats().Hedges)

	// Opted in: a POST whose body was read whole is hedged with it.
	var got atomic.Value
	b.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := io.ReadAll(r.Body)
		got.Store(string(p))
		_, _ = io.WriteString(w, "b")
	})
	rt, h = hedged(t, Options{HedgeDelay: 10 * time.Millisecond, Hedgeable: func(r *http.Request) bool {
		return r.Method == http.MethodPost
	}}, a, b)
	front = serve(t, h)
	res, _ := get(t, front, http.MethodPost, "payload")
	assert.Equal(t, "b", res.body)
	assert.Equal(t, "payload", got.Load())
	assert.EqualValues(t, 1, rt.Stats().HedgesWon)
	res, _ = get(t, front, http.MethodGet, "")
	assert.Equal(t, "a", res.body, "Hedgeable replaces the method rule")
}

// TestHedgeNeverSameHost: with one upstream a hedge has nowhere to go: it
// is refused before anything is sent (and hedging rests a while).
func TestHedgeNeverSameHost(t *testing.T) {
	a := newStaller(t, "a", 100*time.Millisecond)
	rt, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond}, a)
	front := serve(t, h)
	for range 3 {
		res, _ := get(t, front, http.MethodGet, "")
		assert.Equal(t, "a", res.body)
	}
	assert.EqualValues(t, 3, a.Requests(), "no copy reached the same host")
	assert.EqualValues(t, 0, a.canceled.Load())
	assert.Zero(t, rt.Stats().Hedges)
}

// upHealth is a pool Health with a set of hosts out.
type upHealth struct{ out map[string]bool }

func (h upHealth) Allows(host string) bool           { return !h.out[host] }
func (h upHealth) OpenFor(host string) time.Duration { return 0 }

// TestHedgeNeverOutHost: through the pool, a hedge goes to a host other
// than the one in flight, and never to one out of rotation; the loser's
// cancellation is no failure for the pool.
func TestHedgeNeverOutHost(t *testing.T) {
	var stallNext atomic.Bool
	mk := func(name string) *staller {
		s := newStaller(t, name, 0)
		s.stall = func() time.Duration {
			if stallNext.CompareAndSwap(true, false) {
				return 5 * time.Second
			}
			return 0
		}
		return s
	}
	a, b, c := mk("a"), mk("b"), mk("c")
	var targets []*url.URL
	for _, s := range []*staller{a, b, c} {
		u, err := url.Parse(s.URL)
		require.NoError(t, err)
		targets = append(targets, u)
	}
	p, err := pool.New(targets...)
	require.NoError(t, err)
	p.Health = upHealth{out: map[string]bool{c.Addr: true}}
	proxy := &httputil.ReverseProxy{ErrorHandler: gateway.NewErrorHandler(discard), ErrorLog: newProxy(t, ordered(t)).ErrorLog}
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	proxy.Transport = &gateway.Transport{Base: base}
	require.NoError(t, p.Attach(proxy))
	// The hedge delay gives the first attempt time to reach its host (and
	// take the stall) before the hedge leaves, also on a busy machine.
	rt := mustNew(t, Options{Hedges: 1, HedgeDelay: 200 * time.Millisecond})
	front := serve(t, rt.Wrap(proxy))
	for range 10 {
		stallNext.Store(true)
		res, took := get(t, front, http.MethodGet, "")
		require.Equal(t, http.StatusOK, res.status)
		assert.Contains(t, []string{"a", "b"}, res.body)
		assert.Less(t, took, 2*time.Second)
	}
	assert.EqualValues(t, 0, c.Requests(), "never to a host out of rotation")
	assert.EqualValues(t, 10, rt.Stats().HedgesWon)
	assert.Eventually(t, func() bool { return a.canceled.Load()+b.canceled.Load() == 10 }, 5*time.Second, time.Millisecond,
		"each stalled attempt cancelled")
	for _, hs := range p.Status() {
		assert.Zero(t, hs.Failures, "%s: a cancelled loser is no failure", hs.Upstream)
	}
}

// TestHedgeLoserNeverReachesClient: whichever attempt wins, the other's
// headers and body never reach the client; a streaming winner streams.
func TestHedgeLoserNeverReachesClient(t *testing.T) {
	t.Run("hedge wins", func(t *testing.T) {
		a, b := newStaller(t, "a", 300*time.Millisecond), newStaller(t, "b", 0)
		a.body = strings.Repeat("a", 64<<10)
		_, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond}, a, b)
		front := serve(t, h)
		res, _ := get(t, front, http.MethodGet, "")
		assert.Equal(t, "b", res.body)
		assert.Equal(t, []string{"b"}, res.header.Values("X-From"))
	})
	t.Run("first attempt wins", func(t *testing.T) {
		a, b := newStaller(t, "a", 80*time.Millisecond), newStaller(t, "b", 2*time.Second)
		rt, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond}, a, b)
		front := serve(t, h)
		res, took := get(t, front, http.MethodGet, "")
		assert.Equal(t, "a", res.body)
		assert.Equal(t, []string{"a"}, res.header.Values("X-From"))
		assert.Less(t, took, time.Second)
		assert.Eventually(t, func() bool { return b.canceled.Load() == 1 }, 5*time.Second, time.Millisecond)
		st := rt.Stats()
		assert.EqualValues(t, 1, st.Hedges)
		assert.EqualValues(t, 0, st.HedgesWon)
	})
	t.Run("both answer", func(t *testing.T) {
		// a answers just after the hedge went out to b, which answers at
		// once too: one of them wins, the other is discarded whole.
		for range 20 {
			a, b := newStaller(t, "a", 12*time.Millisecond), newStaller(t, "b", 0)
			a.body, b.body = strings.Repeat("a", 32<<10), strings.Repeat("b", 32<<10)
			_, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond}, a, b)
			front := serve(t, h)
			res, _ := get(t, front, http.MethodGet, "")
			from := res.header.Values("X-From")
			require.Len(t, from, 1)
			assert.Equal(t, strings.Repeat(from[0], 32<<10), res.body)
		}
	})
	t.Run("streaming winner", func(t *testing.T) {
		a := newStaller(t, "a", 5*time.Second)
		chunks := make(chan struct{})
		b := newStaller(t, "b", 0)
		b.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-From", "b")
			for i := range 3 {
				_, _ = io.WriteString(w, strings.Repeat(string(rune('0'+i)), 10))
				http.NewResponseController(w).Flush()
				<-chunks
			}
		})
		_, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond}, a, b)
		proxy := h
		front := serve(t, proxy)
		res, err := front.Client().Get(front.URL)
		require.NoError(t, err)
		defer res.Body.Close()
		buf := make([]byte, 10)
		for i := range 3 {
			_, err := io.ReadFull(res.Body, buf)
			require.NoError(t, err, "chunk %d arrives before the next is written", i)
			assert.Equal(t, strings.Repeat(string(rune('0'+i)), 10), string(buf))
			chunks <- struct{}{}
		}
	})
}

// TestHedgeBudget: hedges draw on the retry budget; once it is spent the
// first attempt simply continues, and the denial is counted.
func TestHedgeBudget(t *testing.T) {
	// a's stall is far beyond the hedge delay, so that on a busy machine the
	// hedge answers, and cancels a, before a's stall ends.
	a, b := newStaller(t, "a", 400*time.Millisecond), newStaller(t, "b", 0)
	var denied atomic.Int64
	rt, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond, BudgetRatio: 1e-9, BudgetMinPerSecond: 1e-3,
		OnHedge: func(e HedgeEvent, _ int, _ time.Duration) {
			if e == HedgeDenied {
				denied.Add(1)
			}
		}}, a, b)
	front := serve(t, h)
	var bodies []string
	for range 5 {
		res, _ := get(t, front, http.MethodGet, "")
		bodies = append(bodies, res.body)
	}
	assert.Equal(t, []string{"b", "a", "a", "a", "a"}, bodies, "one hedge, then the first attempts answer")
	st := rt.Stats()
	assert.EqualValues(t, 1, st.Hedges)
	assert.EqualValues(t, 4, st.HedgesDenied)
	assert.EqualValues(t, 4, denied.Load())
	assert.EqualValues(t, 1, b.Requests(), "a refused hedge is never sent")
	assert.EqualValues(t, 0, a.canceled.Load()-1, "only the first request's attempt was cancelled")
}

// TestHedgeClientLeaves: a client that goes away ends every attempt in
// flight, the hedge's and the first.
func TestHedgeClientLeaves(t *testing.T) {
	a, b := newStaller(t, "a", time.Hour), newStaller(t, "b", time.Hour)
	_, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond}, a, b)
	l := leave(t, h)
	// Both attempts reached their hosts (on a busy machine the hedge may
	// arrive first).
	require.Eventually(t, func() bool { return a.started.Load() == 1 && b.started.Load() == 1 }, 5*time.Second, time.Millisecond)
	l.goAway(t)
	assert.Eventually(t, func() bool { return a.canceled.Load() == 1 && b.canceled.Load() == 1 },
		5*time.Second, time.Millisecond)
}

// TestHedgeThenRetry: a failure from one attempt does not end the race
// while another is in flight; when the last one fails too, it is retried
// within the attempt cap.
func TestHedgeThenRetry(t *testing.T) {
	a := newStaller(t, "a", 80*time.Millisecond)
	a.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(80 * time.Millisecond)
		w.WriteHeader(http.StatusBadGateway)
	})
	b := newStaller(t, "b", 0)
	b.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	c := newStaller(t, "c", 0)
	var rec retries
	rt, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond, OnRetry: rec.hook}, a, b, c)
	o := &outer{next: h}
	front := serve(t, o)
	res, _ := get(t, front, http.MethodGet, "")
	assert.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, "c", res.body)
	calls := rec.get()
	require.Len(t, calls, 1)
	assert.Equal(t, 3, calls[0].attempt, "the retry is the third attempt")
	assert.Equal(t, http.StatusBadGateway, calls[0].failure.Status, "the last failure of the race is retried")
	st := rt.Stats()
	assert.EqualValues(t, 1, st.Hedges)
	assert.EqualValues(t, 0, st.HedgesWon)
	assert.EqualValues(t, 1, st.TotalRetries)
	assert.Nil(t, o.get())

	// Attempts 2: no retry after the race; the last failure goes out, as
	// the upstream's own response.
	rt, h = hedged(t, Options{HedgeDelay: 10 * time.Millisecond, Attempts: 2}, a, b, c)
	o = &outer{next: h}
	front = serve(t, o)
	res, _ = get(t, front, http.MethodGet, "")
	assert.Equal(t, http.StatusBadGateway, res.status)
	o.requireFailure(t, gateway.ClassUpstreamStatus, 2)
	assert.EqualValues(t, 1, rt.Stats().Hedges)
	assert.EqualValues(t, 0, rt.Stats().TotalRetries)
}

// TestHedgePerTryTimeout: per-try timeouts bound the hedged attempt and the
// hedge alike; when both time out the request is retried.
func TestHedgePerTryTimeout(t *testing.T) {
	a, b, c := newStaller(t, "a", time.Hour), newStaller(t, "b", time.Hour), newStaller(t, "c", 0)
	rt, h := hedged(t, Options{HedgeDelay: 20 * time.Millisecond, PerTryTimeout: 150 * time.Millisecond}, a, b, c)
	front := serve(t, h)
	res, took := get(t, front, http.MethodGet, "")
	assert.Equal(t, "c", res.body)
	assert.Less(t, took, 2*time.Second)
	st := rt.Stats()
	assert.EqualValues(t, 1, st.Hedges)
	assert.EqualValues(t, 1, st.TotalRetries)
}

// TestHedgeAttemptHeader: each attempt carries its own number, the hedge
// too, without touching the other's.
func TestHedgeAttemptHeader(t *testing.T) {
	a, b := newStaller(t, "a", 200*time.Millisecond), newStaller(t, "b", 0)
	var seen sync.Map
	for _, s := range []*staller{a, b} {
		s.OnRequest = func(r *http.Request) { seen.Store(s.name, r.Header.Get("X-Attempt")) }
	}
	_, h := hedged(t, Options{HedgeDelay: 10 * time.Millisecond, AttemptHeader: "X-Attempt"}, a, b)
	front := serve(t, h)
	res, _ := get(t, front, http.MethodGet, "")
	assert.Equal(t, "b", res.body)
	va, _ := seen.Load("a")
	vb, _ := seen.Load("b")
	assert.Equal(t, "1", va)
	assert.Equal(t, "2", vb)
}

// TestHedgeMarked: the hedge's outbound context says it is one; Hedgeable
// can keep a request out of hedging.
func TestHedgeMarked(t *testing.T) {
	a, b := newStaller(t, "a", 100*time.Millisecond), newStaller(t, "b", 0)
	var marks sync.Map
	rt := mustNew(t, Options{Hedges: 1, HedgeDelay: 10 * time.Millisecond, Hedgeable: func(r *http.Request) bool {
		return r.Method == http.MethodGet && r.Header.Get("X-No-Hedge") == ""
	}})
	proxy := newProxyVia(t, ordered(t, a.Server, b.Server), func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			marks.Store(r.URL.Host, IsHedge(r.Context()))
			return next.RoundTrip(r)
		})
	})
	front := serve(t, rt.Wrap(proxy))
	res, _ := get(t, front, http.MethodGet, "")
	assert.Equal(t, "b", res.body)
	ma, _ := marks.Load(a.Addr)
	mb, _ := marks.Load(b.Addr)
	assert.Equal(t, false, ma)
	assert.Equal(t, true, mb)

	req := newRequest(t, t.Context(), http.MethodGet, front.URL, nil)
	req.Header.Set("X-No-Hedge", "1")
	res = do(t, front, req)
	assert.Equal(t, "a", res.body, "marked unhedgeable")
	assert.EqualValues(t, 1, rt.Stats().Hedges)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestHedgeAdaptiveDelay: no hedge before enough samples; then twice the
// p95 of successful attempts, over the floor; a 2% stall does not move it.
func TestHedgeAdaptiveDelay(t *testing.T) {
	var l latencies
	l.floor = time.Millisecond
	now := time.Duration(0)
	for i := range 99 {
		l.observe(now, 3*time.Millisecond+time.Duration(i)*time.Microsecond)
	}
	assert.Zero(t, l.compute(now), "warming up")
	for i := range 1000 {
		d := 3 * time.Millisecond
		if i%50 == 0 {
			d = 300 * time.Millisecond // 2% stall
		}
		l.observe(now, d)
	}
	d := l.compute(now)
	assert.GreaterOrEqual(t, d, 6*time.Millisecond)
	assert.LessOrEqual(t, d, 8*time.Millisecond, "2 × p95 (quarter-octave buckets: ≤ 19%% above)")
	l.floor = 50 * time.Millisecond
	assert.Equal(t, 50*time.Millisecond, l.compute(now), "the floor")

	// delay recomputes at most every latRefresh.
	assert.Equal(t, 50*time.Millisecond, l.delay(now+latRefresh))
	l.floor = time.Millisecond
	assert.Equal(t, 50*time.Millisecond, l.delay(now+latRefresh+time.Millisecond), "not yet")
	// Samples older than two windows are forgotten, but a quiet spell
	// keeps the last delay: only the first one needs a warm-up.
	assert.Zero(t, l.compute(now+2*latWindow))
	assert.Equal(t, 50*time.Millisecond, l.delay(now+2*latWindow))
	for b := range latBuckets - 1 {
		assert.Equal(t, b, bucketOf(bucketTop(b)-1), "bucket %d", b)
		assert.Equal(t, b+1, bucketOf(bucketTop(b)), "bucket %d", b)
	}
}

// TestAttemptCtxAttaches: a context derived from an attemptCtx is
// cancelled with p synchronously (it attached to p, without a goroutine),
// and keeps the request's values and deadline.
func TestAttemptCtxAttaches(t *testing.T) {
	type key struct{}
	parent, cancelParent := context.WithTimeout(context.WithValue(context.Background(), key{}, "v"), time.Minute)
	defer cancelParent()
	tc, trail := gateway.WithTrail(parent)
	p, cancel := context.WithCancelCause(context.Background())
	ac := &attemptCtx{Context: tc, p: p}
	child, cancelChild := context.WithCancel(ac)
	defer cancelChild()
	assert.Equal(t, "v", child.Value(key{}))
	assert.Same(t, trail, gateway.TrailFrom(child))
	dl, ok := child.Deadline()
	assert.True(t, ok)
	assert.WithinDuration(t, time.Now().Add(time.Minute), dl, 5*time.Second)
	cancel(ErrHedgeLost)
	assert.ErrorIs(t, child.Err(), context.Canceled, "cancelled with p, at once")
	assert.ErrorIs(t, context.Cause(child), ErrHedgeLost)
	assert.ErrorIs(t, ErrHedgeLost, context.Canceled)
}

// TestHedgeAdaptiveWarmsUp: with the adaptive delay nothing is hedged until
// enough attempts were seen; then an attempt stalled past the delay is.
func TestHedgeAdaptiveWarmsUp(t *testing.T) {
	var stall atomic.Bool
	a := newStaller(t, "a", 0)
	a.stall = func() time.Duration {
		if stall.Load() {
			return 2 * time.Second
		}
		return 0
	}
	b := newStaller(t, "b", 0)
	// A floor far above loopback latencies: on a busy machine a slow
	// warm-up request is still not hedged.
	rt, h := hedged(t, Options{HedgeMinDelay: 200 * time.Millisecond}, a, b)
	front := serve(t, h)
	for range 2 * latSampling * hedgeWarmup { // one in latSampling is a sample
		res, _ := get(t, front, http.MethodGet, "")
		require.Equal(t, "a", res.body)
	}
	time.Sleep(latRefresh) // the delay is recomputed every latRefresh
	stall.Store(true)
	res, took := get(t, front, http.MethodGet, "")
	assert.Equal(t, "b", res.body)
	assert.Less(t, took, 1500*time.Millisecond, "the hedge answered, not a's 2 s stall")
	assert.Equal(t, 200*time.Millisecond, rt.Stats().HedgeDelay, "the floor, over 2 × p95 of fast answers")
	assert.EqualValues(t, 1, rt.Stats().HedgesWon)
}

// TestHedgeableClientLeavesEarly: a client that goes away before the hedge
// delay ends its hedgeable attempt within cancelReach, though the
// attempt's context takes its cancellation from the request state.
func TestHedgeableClientLeavesEarly(t *testing.T) {
	a, b := newStaller(t, "a", time.Hour), newStaller(t, "b", 0)
	_, h := hedged(t, Options{HedgeDelay: time.Hour}, a, b)
	l := leave(t, h)
	require.Eventually(t, func() bool { return a.started.Load() == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(2 * cancelReach) // the hook is set by now
	start := time.Now()
	l.goAway(t)
	assert.Eventually(t, func() bool { return a.canceled.Load() == 1 }, 5*time.Second, time.Millisecond)
	assert.Less(t, time.Since(start), time.Second)
	assert.EqualValues(t, 0, b.Requests())

	// Gone before cancelReach: the timer's first fire hooks a context that
	// is done already.
	a2 := newStaller(t, "a2", time.Hour)
	_, h = hedged(t, Options{HedgeDelay: time.Hour}, a2, b)
	l = leave(t, h)
	require.Eventually(t, func() bool { return a2.started.Load() == 1 }, 5*time.Second, 100*time.Microsecond)
	l.goAway(t)
	assert.Eventually(t, func() bool { return a2.canceled.Load() == 1 }, 5*time.Second, time.Millisecond)
}

// TestHedgeableDeadline: the request's deadline ends a hedgeable attempt
// on time, though its context takes its cancellation from the request
// state.
func TestHedgeableDeadline(t *testing.T) {
	for _, perTry := range []time.Duration{0, 10 * time.Second} {
		a, b := newStaller(t, "a", time.Hour), newStaller(t, "b", time.Hour)
		_, h := hedged(t, Options{HedgeDelay: time.Hour, PerTryTimeout: perTry}, a, b)
		o := &outer{next: h}
		front := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 50*time.Millisecond)
			defer cancel()
			o.ServeHTTP(w, r.WithContext(ctx))
		}))
		res, took := get(t, front, http.MethodGet, "")
		assert.Equal(t, http.StatusGatewayTimeout, res.status, "per-try %v", perTry)
		assert.Less(t, took, cancelReach, "the deadline, not cancelReach")
		o.requireFailure(t, gateway.ClassTimeout, 1)
		assert.Eventually(t, func() bool { return a.canceled.Load() == 1 }, 5*time.Second, time.Millisecond)
	}
}
