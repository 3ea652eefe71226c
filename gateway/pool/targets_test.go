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

	"github.com/proxykit/proxykit/breaker"
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

func breakerHosts(h *breaker.Hosts) []string {
	var hs []string
	for _, s := range h.States() {
		if s.Key != "" {
			hs = append(hs, s.Key)
		}
	}
	return hs
}

func TestSetTargetsKeepsAddsAndRemoves(t *testing.T) {
	a, b, c := gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)
	defer closeAll(a, b, c)
	p := newTestPool(t, a, b)
	hosts := withHosts(t, p, breaker.Settings{})
	front := poolFront(t, p)
	for range 20 {
		res, _ := get(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
	keptBefore := p.targets().byHost[hostOf(t, b)]
	requestsBefore := keptBefore.requests.Load()
	require.Positive(t, requestsBefore)
	require.ElementsMatch(t, []string{hostOf(t, a), hostOf(t, b)}, breakerHosts(hosts))

	ch, err := p.SetTargets(targetsOf(t, b, c))
	require.NoError(t, err)
	assert.Equal(t, []string{hostOf(t, c)}, ch.Added)
	assert.Equal(t, []string{hostOf(t, a)}, ch.Removed)
	assert.Equal(t, []string{hostOf(t, b)}, ch.Kept)
	assert.Equal(t, 2, ch.Hosts)

	kept := p.targets().byHost[hostOf(t, b)]
	assert.Same(t, keptBefore, kept, "a kept host keeps its upstream: latency and counts")
	assert.Equal(t, requestsBefore, kept.requests.Load())
	assert.Equal(t, "warming", hosts.HostState(hostOf(t, c)), "a host joining a serving pool warms up")
	assert.Equal(t, "serving", hosts.HostState(hostOf(t, b)))
	assert.ElementsMatch(t, []string{hostOf(t, b), hostOf(t, c)}, breakerHosts(hosts), "the removed host's state is freed")
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
	before := p.targets()
	_, err := p.SetTargets(append(targetsOf(t, a, b), Target{URL: mustURL(t, strings.Replace(b.URL, "127.0.0.1", "127.0.0.1", 1)+"/other")}))
	require.ErrorContains(t, err, "appears twice")
	_, err = p.SetTargets([]Target{{URL: mustURL(t, "ftp://127.0.0.1:1")}})
	require.ErrorContains(t, err, "scheme")
	assert.Same(t, before, p.targets(), "a rejected change leaves the set")
	assert.Zero(t, p.Discovery().Changes)
}

func TestSetTargetsReorderIsNoChange(t *testing.T) {
	a, b := gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)
	defer closeAll(a, b)
	p := newTestPool(t, a, b)
	before := p.targets()
	ch, err := p.SetTargets(targetsOf(t, b, a))
	require.NoError(t, err)
	assert.Empty(t, ch.Added)
	assert.Empty(t, ch.Removed)
	assert.Same(t, before, p.targets())
	assert.Zero(t, p.Discovery().Changes)
}

func TestEmptyPoolFirstHostsDoNotWarm(t *testing.T) {
	a := gatewaytest.NewServer(gatewaytest.Healthy)
	defer a.Close()
	p := Empty()
	p.Logger = quietLogger
	hosts := withHosts(t, p, breaker.Settings{})
	front := poolFront(t, p)
	res, _ := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "an empty pool answers no_upstream")

	_, err := p.SetTargets(targetsOf(t, a))
	require.NoError(t, err)
	assert.Equal(t, "serving", hosts.HostState(hostOf(t, a)), "the first hosts of an empty pool take traffic at once")
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
	withHosts(t, p, breaker.Settings{})
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
