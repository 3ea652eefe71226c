package pool

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// targetsOf returns a Target for each server.
func targetsOf(t testing.TB, servers ...*gatewaytest.Server) []Target {
	t.Helper()
	ts := make([]Target, len(servers))
	for i, s := range servers {
		ts[i] = Target{URL: mustURL(t, s.URL)}
	}
	return ts
}

func hostOf(t testing.TB, s *gatewaytest.Server) string {
	t.Helper()
	return gateway.UpstreamName(mustURL(t, s.URL))
}

func statusHosts(p *Pool) []string {
	var hs []string
	for _, s := range p.Status() {
		hs = append(hs, s.Upstream)
	}
	return hs
}

func TestSetTargetsKeepsAddsAndRemoves(t *testing.T) {
	a, b, c := gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)
	defer closeAll(a, b, c)
	p := newTestPool(t, a, b)
	hosts := withHealth(t, p)
	front := poolFront(t, p)
	for range 20 {
		res, _ := get(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
	requestsBefore := requestsOf(p, hostOf(t, b))
	require.Positive(t, requestsBefore)
	joinedBefore := joinedOf(p, hostOf(t, b))
	require.ElementsMatch(t, []string{hostOf(t, a), hostOf(t, b)}, hosts.known())

	ch, err := p.SetTargets(targetsOf(t, b, c))
	require.NoError(t, err)
	assert.Equal(t, []string{hostOf(t, c)}, ch.Added)
	assert.Equal(t, []string{hostOf(t, a)}, ch.Removed)
	assert.Equal(t, []string{hostOf(t, b)}, ch.Kept)
	assert.Equal(t, 2, ch.Hosts)

	assert.Equal(t, requestsBefore, requestsOf(p, hostOf(t, b)), "a kept host keeps its counts and latency")
	assert.Equal(t, joinedBefore, joinedOf(p, hostOf(t, b)))
	assert.Equal(t, StateWarming, hosts.HostState(hostOf(t, c)), "a host joining a serving pool warms up")
	assert.Equal(t, StateServing, hosts.HostState(hostOf(t, b)))
	assert.ElementsMatch(t, []string{hostOf(t, b), hostOf(t, c)}, hosts.known(), "the removed host's state is freed")
	assert.Equal(t, []string{hostOf(t, b), hostOf(t, c)}, statusHosts(p))

	aSeen := a.Requests()
	for range 50 {
		res, _ := get(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
	assert.Equal(t, aSeen, a.Requests(), "no request reaches a removed host")
	assert.Positive(t, c.Requests(), "the new host serves (its share ramps up)")

	d := p.Discovery()
	assert.Equal(t, int64(1), d.Changes)
	assert.False(t, d.Changed.IsZero())
	assert.Equal(t, 2, d.Hosts)
}

func TestSetTargetsRejectsDuplicatesAndKeepsTheSet(t *testing.T) {
	a, b := gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)
	defer closeAll(a, b)
	p := newTestPool(t, a)
	_, err := p.SetTargets(append(targetsOf(t, a, b), Target{URL: mustURL(t, b.URL+"/other")}))
	require.ErrorContains(t, err, "is the same host")
	require.ErrorContains(t, err, "pool: SetTargets: static: target 2")
	_, err = p.SetTargets([]Target{{URL: mustURL(t, "ftp://127.0.0.1:1")}})
	require.ErrorContains(t, err, "scheme")
	assert.Equal(t, []string{hostOf(t, a)}, statusHosts(p), "a rejected change leaves the set")
	assert.Zero(t, p.Discovery().Changes)
}

func TestSetTargetsReorderIsNoChange(t *testing.T) {
	a, b := gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)
	defer closeAll(a, b)
	p := newTestPool(t, a, b)
	before := statusHosts(p)
	ch, err := p.SetTargets(targetsOf(t, b, a))
	require.NoError(t, err)
	assert.Empty(t, ch.Added)
	assert.Empty(t, ch.Removed)
	assert.Equal(t, before, statusHosts(p), "the set and its order are kept")
	assert.Zero(t, p.Discovery().Changes)
}

func TestEmptyPoolFirstHostsDoNotWarm(t *testing.T) {
	a := gatewaytest.NewServer(gatewaytest.Healthy)
	defer a.Close()
	p := Empty()
	p.Logger = quietLogger
	hosts := withHealth(t, p)
	front := poolFront(t, p)
	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "an empty pool answers no_upstream")

	_, err := p.SetTargets(targetsOf(t, a))
	require.NoError(t, err)
	assert.Equal(t, StateServing, hosts.HostState(hostOf(t, a)), "the first hosts of an empty pool take traffic at once")
	res, _ = get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
}

// TestRemovedHostFinishesInFlight: a response whose body is still streaming
// when its host leaves the set completes; the removed host's idle
// connections are closed; a kept host is reached afterwards.
func TestRemovedHostFinishesInFlight(t *testing.T) {
	release := make(chan struct{})
	var closed atomic.Int64
	slow := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			_, _ = io.WriteString(w, "first ")
			w.(http.Flusher).Flush()
			<-release
		}
		_, _ = io.WriteString(w, "done")
	}))
	slow.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed.Add(1)
		}
	}
	slow.Start()
	defer slow.Close()
	var once sync.Once
	defer once.Do(func() { close(release) })
	other := gatewaytest.NewServer(gatewaytest.Healthy)
	defer other.Close()

	p, err := New(mustURL(t, slow.URL))
	require.NoError(t, err)
	p.Logger = quietLogger
	withHealth(t, p)
	front := poolFront(t, p)
	c := front.Client()

	// A streaming response, and beside it an idle keep-alive connection
	// to the host.
	res, err := c.Get(front.URL + "/stream")
	require.NoError(t, err)
	defer res.Body.Close()
	first := make([]byte, len("first "))
	_, err = io.ReadFull(res.Body, first)
	require.NoError(t, err)
	idle, body := get(t, c, front.URL+"/idle")
	require.Equal(t, http.StatusOK, idle.StatusCode)
	require.Equal(t, "done", body)

	_, err = p.SetTargets(targetsOf(t, other))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return closed.Load() >= 1 }, 5*time.Second, 5*time.Millisecond,
		"the removed host's idle connection is closed")

	once.Do(func() { close(release) })
	rest, err := io.ReadAll(res.Body)
	require.NoError(t, err, "the streaming response finishes")
	assert.Equal(t, "done", string(rest))

	res2, _ := get(t, c, front.URL+"/after")
	assert.Equal(t, http.StatusOK, res2.StatusCode)
	assert.Positive(t, other.Requests())
}

func TestSetTargetsLogsOneLinePerChange(t *testing.T) {
	a, b := gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)
	defer closeAll(a, b)
	var buf bytes.Buffer
	var mu sync.Mutex
	p := newTestPool(t, a)
	p.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, nil))
	var changes []Change
	p.OnChange = func(c Change) { changes = append(changes, c) }
	_, err := p.SetTargets(targetsOf(t, a, b))
	require.NoError(t, err)
	_, err = p.SetTargets(targetsOf(t, a, b)) // no change: no line
	require.NoError(t, err)
	_, err = p.SetTargets(targetsOf(t, b))
	require.NoError(t, err)
	mu.Lock()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	mu.Unlock()
	require.Len(t, lines, 2)
	assert.Contains(t, lines[0], "level=INFO")
	assert.Contains(t, lines[0], "added=1 removed=0 kept=1 hosts=2")
	assert.Contains(t, lines[1], "added=0 removed=1 kept=1 hosts=1")
	require.Len(t, changes, 2)
	assert.Equal(t, StaticSource, changes[1].Source)
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func requestsOf(p *Pool, host string) int64 {
	for _, s := range p.Status() {
		if s.Upstream == host {
			return s.Requests
		}
	}
	return -1
}

func joinedOf(p *Pool, host string) time.Time {
	for _, s := range p.Status() {
		if s.Upstream == host {
			return s.Joined
		}
	}
	return time.Time{}
}

// forgetTimes is a Health that records when each host was forgotten.
type forgetTimes struct {
	mu sync.Mutex
	at map[string][]time.Time
}

func (f *forgetTimes) Allows(string) bool           { return true }
func (f *forgetTimes) OpenFor(string) time.Duration { return 0 }
func (f *forgetTimes) Forget(h string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.at[h] = append(f.at[h], time.Now())
	return true
}

// TestForgetAgainASecondLater: every removed host is forgotten at once and
// again at least a second later, also when the set changes again in
// between (churn), so that a request that picked it before it left cannot
// leave its state behind.
func TestForgetAgainASecondLater(t *testing.T) {
	p, err := New(mustURL(t, "http://127.0.0.1:1"), mustURL(t, "http://127.0.0.1:2"), mustURL(t, "http://127.0.0.1:3"))
	require.NoError(t, err)
	p.Logger = quietLogger
	h := &forgetTimes{at: map[string][]time.Time{}}
	p.Health = h
	_, err = p.SetTargets([]Target{{URL: mustURL(t, "http://127.0.0.1:2")}, {URL: mustURL(t, "http://127.0.0.1:3")}})
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)
	_, err = p.SetTargets([]Target{{URL: mustURL(t, "http://127.0.0.1:3")}})
	require.NoError(t, err)
	for _, host := range []string{"127.0.0.1:1", "127.0.0.1:2"} {
		require.Eventually(t, func() bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			at := h.at[host]
			return len(at) >= 2 && at[len(at)-1].Sub(at[0]) >= time.Second
		}, 10*time.Second, 10*time.Millisecond, "%s forgotten again a second after the first time", host)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.NotContains(t, h.at, "127.0.0.1:3", "a kept host is never forgotten")
}
