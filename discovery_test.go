package proxykit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
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
	"github.com/proxykit/proxykit/status"
)

// setSRV points the SRV name at servers (each on 127.0.0.1, its own port).
func setSRV(t testing.TB, zone *gatewaytest.Zone, name string, servers ...*gatewaytest.Server) {
	t.Helper()
	recs := make([]gatewaytest.SRV, len(servers))
	for i, s := range servers {
		port, err := strconv.Atoi(mustParse(s.URL).Port())
		require.NoError(t, err)
		recs[i] = gatewaytest.SRV{Target: "lo.test", Port: uint16(port)}
	}
	zone.SetAddrs("lo.test", netip.MustParseAddr("127.0.0.1"))
	zone.SetSRV(name, recs...)
}

// srvFleet starts n healthy servers and a loopback DNS zone whose
// _http._tcp.web.test SRV record lists them all (some tests publish
// another answer afterwards); both close when the test ends.
func srvFleet(t testing.TB, n int) (*gatewaytest.Zone, []*gatewaytest.Server) {
	t.Helper()
	zone := gatewaytest.NewZone()
	t.Cleanup(zone.Close)
	servers := make([]*gatewaytest.Server, n)
	for i := range servers {
		servers[i] = gatewaytest.NewServer(gatewaytest.Healthy)
		t.Cleanup(servers[i].Close)
	}
	setSRV(t, zone, "_http._tcp.web.test", servers...)
	return zone, servers
}

// sendMixed sends n requests, one in five a POST, and counts the non-2xx.
func sendMixed(t testing.TB, c *http.Client, base string, n int) (failed int) {
	t.Helper()
	for i := range n {
		var res *http.Response
		var err error
		if i%5 == 0 {
			res, err = c.Post(base+"/orders", "text/plain", strings.NewReader("order "+strconv.Itoa(i)))
		} else {
			res, err = c.Get(base + "/items")
		}
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode >= 300 {
			failed++
		}
	}
	return failed
}

func TestStackDiscoveryUpstream(t *testing.T) {
	zone, servers := srvFleet(t, 3)
	changes := make(chan pool.Change, 10)
	st, err := New(Config{
		Upstreams:        []*url.URL{mustParse("srv+http://_http._tcp.web.test")},
		Discovery:        pool.DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond},
		Logger:           quiet,
		OnUpstreamChange: func(c pool.Change) { changes <- c },
	})
	require.NoError(t, err)
	defer st.Close()
	require.Len(t, st.Pool.Status(), 3, "New waits for the first answer")
	first := <-changes
	assert.Len(t, first.Added, 3)
	assert.Equal(t, "srv+http://_http._tcp.web.test", first.Source)
	front := httptest.NewServer(st)
	defer front.Close()
	assert.Zero(t, sendMixed(t, front.Client(), front.URL, 60))
	for _, s := range servers {
		assert.Positive(t, s.Requests(), "each address is a host of the balancer")
	}

	rec := httptest.NewRecorder()
	st.Status.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	var rep status.Report
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep))
	require.Len(t, rep.Upstreams, 3)
	assert.Equal(t, "srv+http://_http._tcp.web.test", rep.Upstreams[0].Source)
	require.NotNil(t, rep.Discovery)
	require.Len(t, rep.Discovery.Sources, 1)
	assert.False(t, rep.Discovery.Sources[0].Stale)
	assert.Len(t, st.Limiter.Status(), 3, "one limiter per address")

	rec = httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Accept", "text/html")
	st.Status.ServeHTTP(rec, req)
	assert.Contains(t, rec.Body.String(), "_http._tcp.web.test")
	assert.Contains(t, rec.Body.String(), "fresh")

	// A rolling step: servers[0] leaves, a new address joins. The kept
	// hosts keep their breakers (their counts), the new one warms up, the
	// removed one's breaker and limiter are freed.
	counts := func() map[string]uint32 {
		m := map[string]uint32{}
		for _, b := range st.Hosts.States() {
			if b.Key != "" {
				m[b.Key] = b.Counts.Requests
			}
		}
		return m
	}
	before := counts()
	added := gatewaytest.NewServer(gatewaytest.Healthy)
	defer added.Close()
	setSRV(t, zone, "_http._tcp.web.test", servers[1], servers[2], added)
	gone, joined := gateway.UpstreamName(mustParse(servers[0].URL)), gateway.UpstreamName(mustParse(added.URL))
	require.Eventually(t, func() bool { _, ok := counts()[joined]; return ok }, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { _, ok := counts()[gone]; return !ok }, 5*time.Second, 10*time.Millisecond,
		"the removed address's breaker is freed")
	after := counts()
	for _, s := range servers[1:] {
		h := gateway.UpstreamName(mustParse(s.URL))
		assert.Equal(t, before[h], after[h], "a kept host keeps its breaker")
	}
	assert.Equal(t, pool.StateWarming, st.Hosts.HostState(joined), "a joining host warms up")
	assert.Len(t, st.Limiter.Status(), 3)
}

func TestStackRejectsMalformedDiscoveryName(t *testing.T) {
	_, err := New(Config{Upstreams: []*url.URL{mustParse("dns+http://bad..name:80")}, Logger: quiet})
	require.ErrorContains(t, err, "Upstreams[0]")
	require.ErrorContains(t, err, "invalid DNS name")
	_, err = New(Config{Upstreams: []*url.URL{mustParse("srv+http://_http._tcp.web.test:80")}, Logger: quiet})
	require.ErrorContains(t, err, "takes no port")
}

// TestStackDiscoveryOneAddressRefuses: one of ten addresses behind a name
// refuses connections: every request, POSTs included, is served by the
// other nine, and that one address alone is not serving.
func TestStackDiscoveryOneAddressRefuses(t *testing.T) {
	zone, servers := srvFleet(t, 10)
	require.NoError(t, servers[3].SetFault(gatewaytest.Refused))
	st, err := New(Config{
		Upstreams: []*url.URL{mustParse("srv+http://_http._tcp.web.test")},
		Discovery: pool.DNSOptions{Resolver: zone.Addr},
		Logger:    quiet,
	})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()
	assert.Zero(t, sendMixed(t, front.Client(), front.URL, 300), "100% served")
	bad := gateway.UpstreamName(mustParse(servers[3].URL))
	for _, s := range st.Pool.Status() {
		if s.Upstream == bad {
			// Never serving: its rest is timed, so on a busy machine it may
			// have ended during the run, leaving the host warming (back,
			// not yet proven) with no request sent it since.
			assert.Contains(t, []pool.State{pool.StateOut, pool.StateResting, pool.StateTrial, pool.StateWarming}, s.State)
		} else {
			assert.Contains(t, []pool.State{pool.StateServing, pool.StateWarming}, s.State, s.Upstream)
		}
	}
}

// TestStackChurn changes the set (DNS and the static upstreams) every few
// milliseconds while requests flow: every request is served, no data race
// (run with -race), and state and goroutines return to the size of the
// final set.
func TestStackChurn(t *testing.T) {
	zone, servers := srvFleet(t, 6)
	setSRV(t, zone, "_http._tcp.web.test", servers[0], servers[1]) // server 5 is a static upstream
	st, err := New(Config{
		Upstreams: []*url.URL{mustParse("srv+http://_http._tcp.web.test"), mustParse(servers[5].URL)},
		Discovery: pool.DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond},
		Logger:    quiet,
	})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()
	defer front.Client().CloseIdleConnections()
	baseline := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var served, failed atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				res, err := front.Client().Get(front.URL)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					served.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	// The SRV answer rotates over servers 0-4 (two at a time), and the
	// static upstreams switch between server 5 and hosts that exist only
	// in the set (drained, never sent to: they stand for churned hosts
	// whose state must be freed). They sit on 127.0.0.2, where no test
	// server listens, so a phantom's port can never be a real server's
	// ephemeral port (that would make SetUpstreams refuse a duplicate).
	for i := range 200 {
		setSRV(t, zone, "_http._tcp.web.test", servers[i%5], servers[(i+1)%5])
		phantom := mustParse(fmt.Sprintf("http://127.0.0.2:%d", 40000+i))
		st.Limiter.Watch(phantom)
		require.NoError(t, st.Limiter.Drain(phantom.Host))
		require.NoError(t, st.SetUpstreams([]*url.URL{mustParse(servers[5].URL), phantom}))
		time.Sleep(5 * time.Millisecond)
	}
	require.NoError(t, st.SetUpstreams([]*url.URL{mustParse(servers[5].URL)}))
	time.Sleep(300 * time.Millisecond) // the last SRV answer lands
	cancel()
	wg.Wait()

	assert.Positive(t, served.Load())
	assert.Zero(t, failed.Load(), "every request served through the churn")
	n := len(st.Pool.Status())
	assert.Equal(t, 3, n)
	assert.LessOrEqual(t, len(st.Limiter.Status()), n+5, "limiter state the size of the set")
	keyed := 0
	for _, b := range st.Hosts.States() {
		if b.Key != "" {
			keyed++
		}
	}
	assert.LessOrEqual(t, keyed, n+5, "breaker state the size of the set")
	front.Client().CloseIdleConnections()
	// Idle connections to the three hosts of the final set (each
	// connection: two goroutines in the transport, one in the server) may
	// stay; those to the removed hosts must not.
	assert.Eventually(t, func() bool { return runtime.NumGoroutine() <= baseline+3*4*3+10 }, 10*time.Second, 20*time.Millisecond,
		"goroutines back to the level before the churn")
	t.Logf("goroutines: %d before the churn, %d after", baseline, runtime.NumGoroutine())
}

// TestStackDNSDown: while the DNS server does not answer, every request is
// served from the last good answer, the failure is logged once, and the
// status view shows the answer stale.
func TestStackDNSDown(t *testing.T) {
	zone, _ := srvFleet(t, 3)
	logs := &syncBuffer{}
	st, err := New(Config{
		Upstreams: []*url.URL{mustParse("srv+http://_http._tcp.web.test")},
		Discovery: pool.DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond, Timeout: 100 * time.Millisecond},
		Logger:    logs.logger(),
	})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()

	zone.SetDown(true)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		assert.Zero(t, sendMixed(t, front.Client(), front.URL, 10))
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "discovery failed"), "logged once")
	d := st.Pool.Discovery()
	require.Len(t, d.Sources, 1)
	assert.True(t, d.Sources[0].Stale)
	assert.Equal(t, 3, d.Sources[0].Hosts)
	assert.Len(t, st.Pool.Status(), 3)
}

// syncBuffer is a log sink safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// TestStackRemovedHostKeepsItsUpgrade: an upgraded connection (a
// WebSocket) to a host that leaves the set lives on; new requests go to
// the new set.
func TestStackRemovedHostKeepsItsUpgrade(t *testing.T) {
	echo := gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(false))
	defer echo.Close()
	next := gatewaytest.NewHealthy(nil)
	defer next.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(echo.URL)}, Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()

	c, err := net.Dial("tcp", front.Listener.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)

	require.NoError(t, st.SetUpstreams([]*url.URL{mustParse(next.URL)}))
	assert.Equal(t, []string{gateway.UpstreamName(mustParse(next.URL))}, func() (hs []string) {
		for _, s := range st.Pool.Status() {
			hs = append(hs, s.Upstream)
		}
		return hs
	}())
	time.Sleep(1200 * time.Millisecond) // past the idle-connection close and the second Forget
	_, err = io.WriteString(c, "still there?\n")
	require.NoError(t, err)
	line, err := br.ReadString('\n')
	require.NoError(t, err, "the upgraded connection outlives its host's removal")
	assert.Equal(t, "still there?\n", line)

	res2, err := front.Client().Get(front.URL + "/after")
	require.NoError(t, err)
	res2.Body.Close()
	assert.Equal(t, http.StatusOK, res2.StatusCode)
	assert.Positive(t, next.Requests())
	assert.Error(t, st.SetUpstreams([]*url.URL{mustParse("dns+http://x.test:80")}), "discovery URLs are set in Config")
}
