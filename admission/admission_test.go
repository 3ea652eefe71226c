package admission_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

var discard = slog.New(slog.DiscardHandler)

// capacity is an upstream handler of a fixed number of workers, each
// taking service per request; the rest wait in a FIFO queue until a
// worker is free or their caller gives up. Workers can be added.
type capacity struct {
	sem     chan struct{}
	service time.Duration
}

const maxWorkers = 64

func newCapacity(workers int, service time.Duration) *capacity {
	c := &capacity{sem: make(chan struct{}, maxWorkers), service: service}
	for range maxWorkers - workers {
		c.sem <- struct{}{} // a reservation: a worker that is not there
	}
	return c
}

// add brings n more workers.
func (c *capacity) add(n int) {
	for range n {
		<-c.sem
	}
}

func (c *capacity) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case c.sem <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	t := time.NewTimer(c.service)
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
	t.Stop()
	<-c.sem
	_, _ = io.WriteString(w, "ok\n")
}

// outcome is one request of an open-loop run.
type outcome struct {
	at     time.Time
	took   time.Duration
	ok     bool
	overld bool
}

// openLoop sends rate requests a second to url through client for d, and
// returns every outcome once all have ended.
func openLoop(client *http.Client, url string, rate float64, d time.Duration) []outcome {
	var (
		mu  sync.Mutex
		out []outcome
		wg  sync.WaitGroup
	)
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if due.Sub(start) >= d {
			break
		}
		time.Sleep(time.Until(due))
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			res, err := client.Get(url)
			o := outcome{at: t0}
			if err == nil {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				o.ok = res.StatusCode == 200
			} else {
				o.overld = gateway.ClassifyError(err, "", true).Class == gateway.ClassOverloaded
			}
			o.took = time.Since(t0)
			mu.Lock()
			out = append(out, o)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// summarize counts the outcomes of requests sent in [from, to), with the
// 90th percentile of the served ones' latency: a busy machine's stall
// delays a few, a queue delays most.
func summarize(os []outcome, from, to time.Time) (ok, shed, other int, okP90 time.Duration) {
	var took []time.Duration
	for _, o := range os {
		if o.at.Before(from) || !o.at.Before(to) {
			continue
		}
		switch {
		case o.ok:
			ok++
			took = append(took, o.took)
		case o.overld:
			shed++
		default:
			other++
		}
	}
	if len(took) > 0 {
		slices.Sort(took)
		okP90 = took[len(took)*9/10]
	}
	return
}

// TestConvergesAndRecovers: an upstream of 2 workers × 40 ms (50
// requests/s) offered 100 requests/s for 4 s: the limit settles near what the host
// can serve, the excess is shed at once, and served requests keep a
// latency near the tolerated queue instead of climbing; when capacity
// returns (8 workers, 200/s) the limit lifts and nothing is shed. (Slow
// enough that the test's own CPU, with the race detector on a busy
// machine, is not the bottleneck.) The bounds are those of a busy
// machine, far from what an unlimited host shows (requests queue for
// seconds); TestControlConverges checks the control loop's tight figures
// on the injected clock. Served latency is taken at the 90th percentile
// of the last 2 s, bounded at 10× what runs show, which an unlimited
// host's queue (growing 1 s a second) passes; the baseline bound is 10×
// the host's 40 ms; so a stall of the machine is not read as a queue; once capacity returns, a stall may
// shed a few requests, never the half that overload sheds.
func TestConvergesAndRecovers(t *testing.T) {
	capa := newCapacity(2, 40*time.Millisecond)
	up := gatewaytest.NewHealthy(capa)
	defer up.Close()
	lim, err := admission.New(admission.Settings{Window: 20 * time.Millisecond, Logger: discard})
	require.NoError(t, err)
	base := &http.Transport{MaxIdleConnsPerHost: 256}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: lim.Transport(&gateway.Transport{Base: base}), Timeout: 5 * time.Second}

	for range 10 { // a warm service, before the overload comes
		res, err := client.Get(up.URL + "/")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	start := time.Now()
	phase1 := openLoop(client, up.URL+"/", 100, 4*time.Second)
	st := lim.Status()
	require.Len(t, st, 1)
	t.Logf("overloaded: %+v", st[0])
	ok, shed, other, okP90 := summarize(phase1, start.Add(2*time.Second), start.Add(time.Hour))
	t.Logf("last 2 s: %d served (p90 %v), %d shed, %d other", ok, okP90, shed, other)
	assert.Positive(t, shed, "the excess was shed")
	assert.Zero(t, other)
	assert.GreaterOrEqual(t, ok, 40, "the host stayed busy: 50 a second is its capacity (runs here: 32–45 a second)")
	assert.Less(t, okP90, 3*time.Second, "served requests did not queue toward the timeout (runs here: 150–350 ms, 1.9 s in a stall; unlimited: the wait grows 1 s a second, 2–4 s)")
	assert.GreaterOrEqual(t, st[0].Baseline, 32*time.Millisecond, "within the latency histogram's resolution (a fifth)")
	assert.Less(t, st[0].Baseline, 400*time.Millisecond, "runs here: 37–42 ms")

	capa.add(6)
	start = time.Now()
	phase2 := openLoop(client, up.URL+"/", 100, 2*time.Second)
	st = lim.Status()
	t.Logf("capacity back: %+v", st[0])
	ok, shed, other, _ = summarize(phase2, start.Add(1500*time.Millisecond), start.Add(time.Hour))
	t.Logf("last half second: %d served, %d shed, %d other", ok, shed, other)
	assert.LessOrEqual(t, shed*10, ok+shed, "at most a stall's few shed once capacity returned (overload: half)")
	assert.Zero(t, other)
	assert.Positive(t, ok)
	assert.Zero(t, st[0].Limit, "the limit lifted")
	assert.Empty(t, st[0].State, "a limit is never a state")
}

// TestHealthyMixedRoutes: a healthy upstream with a fast route and a slow
// one (1 ms and 30 ms), under closed-loop load: nothing waits, and at most
// a stall's few are shed — a stall of a busy machine does make the host
// look slower for a moment, while the mix misread as a queue would shed
// a large share. TestControlHealthyShapes checks the mix sheds none, on
// the injected clock.
func TestHealthyMixedRoutes(t *testing.T) {
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(30 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "ok\n")
	}))
	defer up.Close()
	lim, err := admission.New(admission.Settings{Logger: discard})
	require.NoError(t, err)
	base := &http.Transport{MaxIdleConnsPerHost: 64}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: lim.Transport(&gateway.Transport{Base: base})}
	var wg sync.WaitGroup
	var served, failed atomic.Int64
	stop := time.Now().Add(time.Second)
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(stop); i++ {
				path := "/fast"
				if (i+c)%4 != 0 { // three in four requests are slow
					path = "/slow"
				}
				res, err := client.Get(up.URL + path)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				served.Add(1)
			}
		}()
	}
	wg.Wait()
	st := lim.Status()
	t.Logf("%d served, %d failed; %+v", served.Load(), failed.Load(), st)
	assert.Positive(t, served.Load())
	assert.LessOrEqual(t, st[0].Shed*50, served.Load(), "at most 2%% shed")
	assert.Equal(t, st[0].Shed, failed.Load(), "every failure was a shed request")
}

// drainRig is a pool of two upstreams, round robin, behind a proxy with the
// limiter; a's /stream sends its header and then waits for release before
// finishing its body.
type drainRig struct {
	a, b     *gatewaytest.Server
	aName    string
	front    *httptest.Server
	lim      *admission.Limiter
	pool     *pool.Pool
	release  chan struct{}
	streamsA atomic.Int64
}

func newDrainRig(t *testing.T) *drainRig {
	r := &drainRig{release: make(chan struct{})}
	r.a = gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/stream" {
			r.streamsA.Add(1)
			_, _ = io.WriteString(w, "a:start\n")
			http.NewResponseController(w).Flush()
			<-r.release
			_, _ = io.WriteString(w, "a:done\n")
			return
		}
		_, _ = io.WriteString(w, "a\n")
	}))
	r.b = gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.WriteString(w, "b\n")
	}))
	t.Cleanup(r.b.Close)
	t.Cleanup(r.a.Close)
	ua, _ := url.Parse(r.a.URL)
	ub, _ := url.Parse(r.b.URL)
	r.aName = gateway.UpstreamName(ua)
	var err error
	r.lim, err = admission.New(admission.Settings{Logger: discard})
	require.NoError(t, err)
	r.pool, err = pool.New(ua, ub)
	require.NoError(t, err)
	r.pool.Policy, r.pool.Health = pool.RoundRobin, r.lim.Health(nil)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{Transport: r.lim.Transport(&gateway.Transport{Base: tr}),
		ErrorHandler: gateway.NewErrorHandler(discard)}
	require.NoError(t, r.pool.Attach(proxy))
	r.front = httptest.NewServer(proxy)
	t.Cleanup(r.front.Close)
	return r
}

func (r *drainRig) get(t *testing.T, path string) (int, string) {
	t.Helper()
	res, err := http.Get(r.front.URL + path)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, string(b)
}

func (r *drainRig) state(host string) pool.State {
	for _, s := range r.lim.Status() {
		if s.Upstream == host {
			return s.State
		}
	}
	return ""
}

// TestDrain: a drained upstream gets no new request while its requests in
// flight — response bodies included — finish; it is draining, then
// drained, for the Limiter and the pool; Resume sends it requests again.
func TestDrain(t *testing.T) {
	r := newDrainRig(t)
	var streams sync.WaitGroup
	bodies := make(chan string, 4)
	for range 4 {
		streams.Add(1)
		go func() {
			defer streams.Done()
			_, body := r.get(t, "/stream")
			bodies <- body
		}()
	}
	require.Eventually(t, func() bool { return r.streamsA.Load() == 2 }, 5*time.Second, time.Millisecond,
		"two streams in flight at a, two served by b")

	require.NoError(t, r.lim.Drain(r.aName))
	assert.Equal(t, pool.StateDraining, r.state(r.aName))
	hs := r.pool.Status()
	assert.Equal(t, pool.StateDraining, hs[0].State, "the pool shows the one state of the host")
	assert.False(t, hs[0].Allowed)

	before := r.a.Requests()
	for range 10 {
		status, body := r.get(t, "/")
		assert.Equal(t, 200, status)
		assert.Equal(t, "b\n", body)
	}
	assert.Equal(t, before, r.a.Requests(), "nothing new reached the draining upstream")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	assert.ErrorIs(t, r.lim.Drained(ctx, r.aName), context.DeadlineExceeded, "its streams are still in flight")
	cancel()
	close(r.release)
	streams.Wait()
	close(bodies)
	var fromA int
	for b := range bodies {
		if strings.HasPrefix(b, "a:") {
			fromA++
			assert.Equal(t, "a:start\na:done\n", b, "in flight finished whole")
		}
	}
	assert.Equal(t, 2, fromA)
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, r.lim.Drained(ctx, r.aName))
	assert.Equal(t, pool.StateDrained, r.state(r.aName))
	assert.Equal(t, pool.StateDrained, r.pool.Status()[0].State)

	require.NoError(t, r.lim.Resume(r.aName))
	seen := map[string]bool{}
	for range 4 {
		_, body := r.get(t, "/")
		seen[body] = true
	}
	assert.True(t, seen["a\n"], "a serves again")

	assert.ErrorIs(t, r.lim.Drain("10.9.9.9:1"), admission.ErrUnknownHost)
	err := r.lim.Drain("not a host")
	require.Error(t, err)
	assert.NotErrorIs(t, err, admission.ErrUnknownHost)
}

// TestDrainOnlyHost: draining a pool's only host leaves nothing to send
// to: 503 no_upstream at once, without touching it.
func TestDrainOnlyHost(t *testing.T) {
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	u, _ := url.Parse(up.URL)
	lim, err := admission.New(admission.Settings{Logger: discard})
	require.NoError(t, err)
	p, err := pool.New(u)
	require.NoError(t, err)
	p.Health = lim.Health(nil)
	proxy := &httputil.ReverseProxy{Transport: lim.Transport(&gateway.Transport{}), ErrorHandler: gateway.NewErrorHandler(discard)}
	require.NoError(t, p.Attach(proxy))
	lim.Watch(u)
	require.NoError(t, lim.Drain(up.URL))
	w := httptest.NewRecorder()
	proxy.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	assert.Equal(t, 503, w.Code)
	assert.EqualValues(t, 0, up.Requests())
}

// TestUpgradeReleasesSlot: an upgraded connection (101) gives its slot
// back at the 101 and still works both ways; the drain count follows it
// to its close.
func TestUpgradeReleasesSlot(t *testing.T) {
	lim, conn, br := upgradeThrough(t, gatewaytest.EchoUpgrade(false), &gateway.Transport{})
	_, err := io.WriteString(conn, "hello\n")
	require.NoError(t, err)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "hello\n", line)
	st := lim.Status()[0]
	assert.EqualValues(t, 0, st.InFlight, "the upgrade holds no slot")
	assert.EqualValues(t, 1, st.Active, "but a drain waits for it")
	conn.Close()
	require.Eventually(t, func() bool { return lim.Status()[0].Active == 0 }, 5*time.Second, time.Millisecond)
}

func ExampleLimiter_Drain() {
	lim, _ := admission.New(admission.Settings{})
	u, _ := url.Parse("http://10.0.0.5:8080")
	lim.Watch(u) // proxykit.New does this for every upstream
	if err := lim.Drain("10.0.0.5:8080"); err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := lim.Drained(ctx, "10.0.0.5:8080"); err != nil {
		fmt.Println("still busy:", err)
		return
	}
	fmt.Println(lim.Status()[0].State)
	// Output: drained
}

var _ = errors.Is

// upgradeThrough serves upstream behind a ReverseProxy whose transport is
// base under a new Limiter, and upgrades a raw client connection through
// it to "echo": the Limiter, the connection (the 101 read) and its reader.
// Everything closes when the test ends.
func upgradeThrough(t *testing.T, upstream http.Handler, base http.RoundTripper) (*admission.Limiter, net.Conn, *bufio.Reader) {
	t.Helper()
	up := gatewaytest.NewHealthy(upstream)
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	lim, err := admission.New(admission.Settings{Logger: discard})
	require.NoError(t, err)
	front := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    lim.Transport(base),
		ErrorHandler: gateway.NewErrorHandler(discard),
	})
	t.Cleanup(front.Close)
	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, 101, res.StatusCode)
	return lim, conn, br
}

// halfCloseEcho is an upstream that accepts an upgrade, reads until its
// client half-closes, and then answers with what it read and closes.
func halfCloseEcho() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		got, _ := io.ReadAll(brw)
		_, _ = fmt.Fprintf(c, "read %q, then EOF\n", got)
	})
}

// TestUpgradeHalfClose: a client's half-close of an upgraded connection
// (a WebSocket close, a tunnel's EOF) reaches the upstream through the
// limiter, and the upstream's answer after it still reaches the client.
func TestUpgradeHalfClose(t *testing.T) {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	lim, conn, br := upgradeThrough(t, halfCloseEcho(), tr)
	_, err := io.WriteString(conn, "bye")
	require.NoError(t, err)
	require.NoError(t, conn.(*net.TCPConn).CloseWrite())
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, "read \"bye\", then EOF\n", string(rest), "the half-close reached the upstream, and its answer came back")
	require.Eventually(t, func() bool { return lim.Status()[0].Active == 0 }, 5*time.Second, time.Millisecond)
}

// TestResponseController: the admission handlers keep
// http.ResponseController working (flush, deadlines, hijack) for what they
// pass through.
func TestResponseController(t *testing.T) {
	maint := &admission.Maintenance{Logger: discard}
	gatewaytest.CheckResponseController(t, maint.Wrap)
}
