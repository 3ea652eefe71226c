package retry

import (
	"context"
	"io"
	"math"
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
	// A win is counted once its response is passed on: the client may
	// have it a moment before.
	assert.Eventually(t, func() bool { return rt.Stats().HedgesWon == 10 }, 5*time.Second, time.Millisecond, "hedges won")
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
	// a's first request stalls until the hedge's answer cancels it, so that
	// on a busy machine the hedge wins however late it comes; the later
	// ones stall 100 ms, ten times the hedge delay, so the timer always
	// fires (and is denied) before a answers.
	a, b := newStaller(t, "a", 0), newStaller(t, "b", 0)
	a.stall = func() time.Duration {
		if a.started.Load() == 1 {
			return time.Minute
		}
		return 100 * time.Millisecond
	}
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
	assert.Eventually(t, func() bool { return a.canceled.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the first request's attempt was cancelled")
	assert.EqualValues(t, 1, a.canceled.Load(), "only the first request's attempt was cancelled")
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

// TestHedgeAdaptiveDelay: no hedge before enough samples; then three times the
// p90 of successful attempts, over the floor; a 2% stall does not move it.
func TestHedgeAdaptiveDelay(t *testing.T) {
	var l latencies
	l.floor = time.Millisecond
	now := time.Duration(0)
	for i := range hedgeWarmup - 1 {
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
	assert.GreaterOrEqual(t, d, 9*time.Millisecond)
	assert.LessOrEqual(t, d, 12*time.Millisecond, "3 × p90 (quarter-octave buckets: ≤ 19%% above)")
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

// stallSamples returns n latencies: a healthy spread from 1 to 4 ms (a
// few in 1,000 up to 8 ms), and a share of them stalled by stall.
func stallSamples(n int, share float64, stall time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	every := 0
	if share > 0 {
		every = int(1 / share)
	}
	for i := range out {
		switch {
		case every > 0 && i%every == every/2:
			out[i] = stall + time.Duration(i%5)*time.Millisecond
		case i%250 == 7:
			out[i] = 8 * time.Millisecond
		default:
			out[i] = time.Millisecond + time.Duration(i*7919%3000)*time.Microsecond
		}
	}
	return out
}

// TestHedgeDelayIgnoresStalls: the adaptive delay never learns the stall it
// exists to cut. The samples are what a Retry records while no hedge cuts
// the stalls (warming up, or after any spell in which the delay rose above
// them): every stalled response is one. For a stall of up to 10% of
// responses the delay stays at three times the healthy p90, below the
// stall, so hedging starts (or resumes) and cuts it; twice p95 would land on
// a 5% stall and stay there, since a stall that is not hedged keeps the
// delay up.
func TestHedgeDelayIgnoresStalls(t *testing.T) {
	for _, c := range []struct {
		share float64
		stall time.Duration
	}{{0.02, 300 * time.Millisecond}, {0.05, 100 * time.Millisecond}, {0.06, 100 * time.Millisecond},
		{0.08, 50 * time.Millisecond}, {0.09, 30 * time.Millisecond}} {
		for _, n := range []int{hedgeWarmup, 400, 4000} {
			if n == hedgeWarmup && c.share > 0.06 {
				continue // the first delay, from 50 samples, has room for a stall of 6%
			}
			var l latencies
			l.floor = time.Millisecond
			for _, d := range stallSamples(n, c.share, c.stall) {
				l.observe(0, d)
			}
			d := l.compute(0)
			assert.Positive(t, d, "%v stalled by %v, %d samples", c.share, c.stall, n)
			assert.LessOrEqual(t, d, 15*time.Millisecond, "%v of responses stalled by %v, %d samples: the delay learned the stall", c.share, c.stall, n)
		}
	}

	// Running: the delay is recomputed every latRefresh from the recent
	// windows. A 5% stall recorded throughout (nothing hedged) never moves
	// it above the stall.
	var l latencies
	l.floor = time.Millisecond
	samples := stallSamples(10000, 0.05, 100*time.Millisecond)
	for i, d := range samples {
		now := time.Duration(i) * time.Millisecond
		l.observe(now, d)
		if got := l.delay(now); got > 15*time.Millisecond {
			t.Fatalf("after %d samples (5%% stalled by 100 ms): delay %v", i+1, got)
		}
	}
	assert.Positive(t, l.delay(10*time.Second))
}

// TestHedgeDelayHealthyTraffic: on healthy traffic that merely looks
// unusual the delay hedges few attempts: a long-tailed spread (Pareto, index
// 3) is hedged at ≤ 1%, and a slow route that is a fifth or half of the
// traffic is not hedged at all (the hedge would be as slow).
func TestHedgeDelayHealthyTraffic(t *testing.T) {
	hedged := func(samples []time.Duration, d time.Duration) float64 {
		n := 0
		for _, s := range samples {
			if s > d {
				n++
			}
		}
		return float64(n) / float64(len(samples))
	}
	// Pareto, index 3, from 1 ms: the deterministic quantiles of 4,000.
	pareto := make([]time.Duration, 4000)
	for i := range pareto {
		u := (float64(i) + 0.5) / float64(len(pareto))
		pareto[i] = time.Duration(float64(time.Millisecond) / math.Cbrt(1-u))
	}
	// Two routes: a cheap one at 1 ms and a slow one at 20 ms.
	routes := func(slowShare float64) []time.Duration {
		out := make([]time.Duration, 4000)
		for i := range out {
			out[i] = time.Millisecond + time.Duration(i%7)*50*time.Microsecond
			if float64(i%100) < slowShare*100 {
				out[i] = 20*time.Millisecond + time.Duration(i%7)*time.Millisecond
			}
		}
		return out
	}
	for _, c := range []struct {
		name    string
		samples []time.Duration
		max     float64
	}{{"pareto", pareto, 0.01}, {"slow route 20%", routes(0.2), 0}, {"slow route 50%", routes(0.5), 0}} {
		var l latencies
		l.floor = time.Millisecond
		for _, d := range c.samples {
			l.observe(0, d)
		}
		d := l.compute(0)
		require.Positive(t, d, c.name)
		assert.LessOrEqual(t, hedged(c.samples, d), c.max, "%s: delay %v", c.name, d)
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
	for range hedgeWarmup { // each starts with fewer samples than the warm-up needs
		res, _ := get(t, front, http.MethodGet, "")
		require.Equal(t, "a", res.body)
	}
	assert.Zero(t, rt.Stats().Hedges, "no hedge while warming up")
	require.Eventually(t, func() bool {
		_, _ = get(t, front, http.MethodGet, "")
		return rt.Stats().HedgeDelay > 0
	}, 5*time.Second, latWarmup, "the delay is recomputed every latWarmup until known")
	assert.GreaterOrEqual(t, rt.Stats().HedgeDelay, 200*time.Millisecond, "the floor, or 3 × p90 of fast answers on a busy machine")
	won := rt.Stats().HedgesWon
	stall.Store(true)
	res, took := get(t, front, http.MethodGet, "")
	assert.Equal(t, "b", res.body)
	assert.Less(t, took, 1500*time.Millisecond, "the hedge answered, not a's 2 s stall")
	assert.Eventually(t, func() bool { return rt.Stats().HedgesWon == won+1 }, 5*time.Second, time.Millisecond, "the stalled attempt's hedge won")
}

// TestHedgeWarmupShort: a fresh Retry hedges after its first 50 successful
// attempts (every one a sample while warming up, the delay recomputed every
// 10 ms until known), not after 400 (one in four) and a 200 ms refresh: the
// stalls of a long warm-up, none of them hedged, alone made the p99.9 of a
// fresh gateway.
func TestHedgeWarmupShort(t *testing.T) {
	a, b := newStaller(t, "a", 0), newStaller(t, "b", 0)
	rt, h := hedged(t, Options{}, a, b)
	front := serve(t, h)
	for range hedgeWarmup {
		res, _ := get(t, front, http.MethodGet, "")
		require.Equal(t, "a", res.body)
	}
	assert.Eventually(t, func() bool {
		_, _ = get(t, front, http.MethodGet, "")
		return rt.Stats().HedgeDelay > 0
	}, 5*time.Second, latWarmup, "the delay is known after the warm-up samples")
	assert.Less(t, a.Requests()+b.Requests(), int64(2*hedgeWarmup), "within a few requests more")
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
// state. The deadline (50 ms) is half of cancelReach: were it ignored, the
// hedge timer would first fire at cancelReach and no request could end
// sooner. A busy machine only adds delay, so the test takes the best of a
// few runs rather than trusting one wall-clock reading.
func TestHedgeableDeadline(t *testing.T) {
	const runs = 5
	for _, perTry := range []time.Duration{0, 10 * time.Second} {
		var best time.Duration
		for range runs {
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
			o.requireFailure(t, gateway.ClassTimeout, 1)
			// An attempt that reached a before the deadline is ended there.
			assert.Eventually(t, func() bool { return a.canceled.Load() == a.started.Load() }, 5*time.Second, time.Millisecond)
			if a.started.Load() == 0 {
				continue // starved: the deadline came before the attempt reached a
			}
			if best == 0 || took < best {
				best = took
			}
			if best < cancelReach {
				break
			}
		}
		require.NotZero(t, best, "per-try %v: no attempt reached the upstream in %d runs", perTry, runs)
		assert.Less(t, best, cancelReach, "per-try %v: the deadline, not cancelReach (best of %d runs)", perTry, runs)
	}
}
