package pool

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.MustParseAddr("::1")
)

func targetHosts(ts []Target) []string {
	hs := make([]string, len(ts))
	for i, t := range ts {
		hs[i] = t.URL.Host
	}
	return hs
}

func TestDNSSourceResolvesEachAddress(t *testing.T) {
	zone := gatewaytest.NewZone()
	defer zone.Close()
	zone.SetAddrs("backend.test", loopback4, loopback6)
	src, err := NewDNSSource(mustURL(t, "dns+http://backend.test:8080/api?v=1"), DNSOptions{Resolver: zone.Addr})
	require.NoError(t, err)
	ts, err := src.Resolve(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:8080", "[::1]:8080"}, targetHosts(ts))
	for _, tg := range ts {
		assert.Equal(t, "http", tg.URL.Scheme)
		assert.Equal(t, "/api", tg.URL.Path)
		assert.Equal(t, "v=1", tg.URL.RawQuery)
		assert.Equal(t, "dns+http://backend.test:8080/api?v=1", tg.Source)
	}

	// The default port is the scheme's.
	src, err = NewDNSSource(mustURL(t, "dns+https://backend.test"), DNSOptions{Resolver: zone.Addr})
	require.NoError(t, err)
	ts, err = src.Resolve(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:443", "[::1]:443"}, targetHosts(ts))
}

func TestDNSSourceSRV(t *testing.T) {
	zone := gatewaytest.NewZone()
	defer zone.Close()
	zone.SetAddrs("a.test", loopback4)
	zone.SetAddrs("b.test", loopback4, loopback6)
	zone.SetSRV("_http._tcp.web.test",
		gatewaytest.SRV{Target: "a.test", Port: 9001, Weight: 10},
		gatewaytest.SRV{Target: "a.test", Port: 9002, Weight: 20},
		gatewaytest.SRV{Target: "b.test", Port: 9003, Weight: 30, Priority: 1},
		gatewaytest.SRV{Target: "gone.test", Port: 9004}, // NXDOMAIN: left out
	)
	src, err := NewDNSSource(mustURL(t, "srv+http://_http._tcp.web.test"), DNSOptions{Resolver: zone.Addr})
	require.NoError(t, err)
	ts, err := src.Resolve(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "[::1]:9003"}, targetHosts(ts))
	weights := map[string]int{}
	for _, tg := range ts {
		weights[tg.URL.Host] = tg.Weight
	}
	assert.Equal(t, map[string]int{"127.0.0.1:9001": 10, "127.0.0.1:9002": 20, "127.0.0.1:9003": 30, "[::1]:9003": 30}, weights)
}

func TestNewDNSSourceRejectsMalformed(t *testing.T) {
	for _, raw := range []string{
		"dns+ftp://backend:80",
		"dnsx+http://backend:80",
		"dns+http://",
		"dns+http://user@backend:80",
		"dns+http://backend:80#frag",
		"dns+http://backend:",
		"dns+http://backend:99999",
		"dns+http://-bad-.test:80",
		"dns+http://bad..test:80",
		"dns+http://b%21d.test:80",
		"dns+http://" + strings.Repeat("a", 64) + ".test:80",
		"dns+http://127.0.0.1:80",
		"srv+http://_http._tcp.web.test:80",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			continue // not even a URL: the caller's parse fails first
		}
		_, err = NewDNSSource(u, DNSOptions{})
		assert.Error(t, err, raw)
	}
	_, err := NewDNSSource(mustURL(t, "dns+http://backend.test:80"), DNSOptions{Resolver: "no-port"})
	assert.ErrorContains(t, err, "resolver address")
	_, err = NewDNSSource(mustURL(t, "dns+http://backend.test:80"), DNSOptions{Refresh: -1})
	assert.Error(t, err)
}

// logCounter counts log records by message.
type logCounter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	seen map[string]int
}

func (c *logCounter) logger() *slog.Logger {
	c.seen = map[string]int{}
	return slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range []string{"discovery failed", "discovery answers again", "upstream set changed", "older than MaxStale"} {
			if bytes.Contains(p, []byte(m)) {
				c.seen[m]++
			}
		}
		return c.buf.Write(p)
	}), nil))
}

func (c *logCounter) count(m string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[m]
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// followed starts p following src until the test ends.
func followed(t *testing.T, p *Pool, src Source) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Follow(ctx, src)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// srvOf sets name's SRV records to servers' ports at 127.0.0.1 ("lo.test").
func srvOf(t *testing.T, zone *gatewaytest.Zone, name string, servers ...*gatewaytest.Server) {
	t.Helper()
	recs := make([]gatewaytest.SRV, len(servers))
	for i, s := range servers {
		port, err := strconv.Atoi(mustURL(t, s.URL).Port())
		require.NoError(t, err)
		recs[i] = gatewaytest.SRV{Target: "lo.test", Port: uint16(port), Weight: 1}
	}
	zone.SetAddrs("lo.test", loopback4)
	zone.SetSRV(name, recs...)
}

// TestDNSSourceFollowsTheFleet: a pool following an SRV name serves each
// address as a host, picks up a new address within a refresh, stops
// sending to a removed one, and keeps its last answer (once logged,
// shown stale) while DNS is down or answers nothing.
func TestDNSSourceFollowsTheFleet(t *testing.T) {
	zone := gatewaytest.NewZone()
	defer zone.Close()
	s := []*gatewaytest.Server{gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)}
	defer closeAll(s...)
	srvOf(t, zone, "_http._tcp.web.test", s[0], s[1])

	logs := &logCounter{}
	logger := logs.logger()
	src, err := NewDNSSource(mustURL(t, "srv+http://_http._tcp.web.test"),
		DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond, Timeout: 200 * time.Millisecond, Logger: logger})
	require.NoError(t, err)
	p := Empty()
	p.Logger = logger
	hosts := withHealth(t, p)
	front := poolFront(t, p)
	followed(t, p, src)

	require.Eventually(t, func() bool { return len(p.Status()) == 2 }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, StateServing, hosts.HostState(hostOf(t, s[0])), "the first answer fills an empty pool without slow start")
	for _, st := range p.Status() {
		assert.Equal(t, "srv+http://_http._tcp.web.test", st.Source)
		assert.Equal(t, 1, st.Weight)
	}
	for range 40 {
		res, _ := get(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
	assert.Positive(t, s[0].Requests())
	assert.Positive(t, s[1].Requests())

	// Rolling: s[2] added, s[0] removed.
	srvOf(t, zone, "_http._tcp.web.test", s[1], s[2])
	require.Eventually(t, func() bool {
		h := statusHosts(p)
		return len(h) == 2 && slices.Contains(h, hostOf(t, s[2])) && !slices.Contains(h, hostOf(t, s[0]))
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, StateWarming, hosts.HostState(hostOf(t, s[2])))
	gone := s[0].Requests()
	for range 40 {
		res, _ := get(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
	assert.Equal(t, gone, s[0].Requests(), "no request to a removed address")
	assert.Positive(t, s[2].Requests())

	// DNS down: the last answer stays; logged once; shown stale.
	zone.SetDown(true)
	require.Eventually(t, func() bool { return src.Status().Stale }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(500 * time.Millisecond) // several more failed refreshes
	assert.Equal(t, 1, logs.count("discovery failed"), "logged once")
	d := p.Discovery()
	require.Len(t, d.Sources, 1)
	assert.True(t, d.Sources[0].Stale)
	assert.NotEmpty(t, d.Sources[0].Error)
	assert.Equal(t, 2, d.Sources[0].Hosts)
	assert.Len(t, p.Status(), 2, "served from the last good answer")
	for range 20 {
		res, _ := get(t, front.Client(), front.URL)
		require.Equal(t, http.StatusOK, res.StatusCode)
	}

	// Back, but answering no record: still the last answer.
	zone.SetSRV("_http._tcp.web.test")
	zone.SetDown(false)
	time.Sleep(400 * time.Millisecond)
	assert.True(t, src.Status().Stale)
	assert.Len(t, p.Status(), 2)
	assert.Equal(t, 1, logs.count("discovery failed"))

	// Answering again.
	srvOf(t, zone, "_http._tcp.web.test", s[2])
	require.Eventually(t, func() bool { return !src.Status().Stale && len(p.Status()) == 1 }, 5*time.Second, 10*time.Millisecond, "%+v %v", src.Status(), statusHosts(p))
	assert.Equal(t, 1, logs.count("discovery answers again"))
	assert.Equal(t, 3, logs.count("upstream set changed"), "first answer, rolling step, scale-in")
}

func TestDNSSourceMaxStale(t *testing.T) {
	zone := gatewaytest.NewZone()
	defer zone.Close()
	zone.SetAddrs("backend.test", loopback4)
	src, err := NewDNSSource(mustURL(t, "dns+http://backend.test:8080"),
		DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, MaxStale: 300 * time.Millisecond, Logger: quietLogger})
	require.NoError(t, err)
	p := Empty()
	p.Logger = quietLogger
	followed(t, p, src)
	require.Eventually(t, func() bool { return len(p.Status()) == 1 }, 5*time.Second, 10*time.Millisecond)
	zone.SetDown(true)
	require.Eventually(t, func() bool { return len(p.Status()) == 0 }, 5*time.Second, 10*time.Millisecond,
		"past MaxStale the source's hosts leave")
	zone.SetDown(false)
	require.Eventually(t, func() bool { return len(p.Status()) == 1 }, 5*time.Second, 10*time.Millisecond)
}

// TestDNSSourceSRVTargetFailing: an SRV target whose address lookup fails
// transiently (SERVFAIL) keeps the whole last good answer, shown stale,
// instead of dropping a healthy host; a target that is gone (NXDOMAIN) is
// left out.
func TestDNSSourceSRVTargetFailing(t *testing.T) {
	zone := gatewaytest.NewZone()
	defer zone.Close()
	zone.SetAddrs("a.test", loopback4)
	zone.SetAddrs("b.test", loopback4)
	zone.SetSRV("_http._tcp.web.test",
		gatewaytest.SRV{Target: "a.test", Port: 9001},
		gatewaytest.SRV{Target: "b.test", Port: 9002},
	)
	src, err := NewDNSSource(mustURL(t, "srv+http://_http._tcp.web.test"),
		DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond, Timeout: 500 * time.Millisecond, Logger: quietLogger})
	require.NoError(t, err)
	p := Empty()
	p.Logger = quietLogger
	followed(t, p, src)
	require.Eventually(t, func() bool { return len(p.Status()) == 2 }, 5*time.Second, 10*time.Millisecond)

	zone.SetFailing("b.test", true)
	require.Eventually(t, func() bool { return src.Status().Stale }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // several more refreshes
	assert.Equal(t, []string{"127.0.0.1:9001", "127.0.0.1:9002"}, statusHosts(p), "b kept while its lookup fails")

	zone.SetFailing("b.test", false)
	zone.SetSRV("_http._tcp.web.test",
		gatewaytest.SRV{Target: "a.test", Port: 9001},
		gatewaytest.SRV{Target: "gone.test", Port: 9002}, // NXDOMAIN
	)
	require.Eventually(t, func() bool { return !src.Status().Stale && len(p.Status()) == 1 }, 5*time.Second, 10*time.Millisecond,
		"a target that is gone leaves: %v", statusHosts(p))
}

// TestDNSSourceSharedByTwoPools: each pool that follows one DNSSource gets
// the answer, whenever it starts following.
func TestDNSSourceSharedByTwoPools(t *testing.T) {
	zone := gatewaytest.NewZone()
	defer zone.Close()
	zone.SetAddrs("backend.test", loopback4)
	src, err := NewDNSSource(mustURL(t, "dns+http://backend.test:8080"),
		DNSOptions{Resolver: zone.Addr, Refresh: 100 * time.Millisecond, Logger: quietLogger})
	require.NoError(t, err)
	a, b := Empty(), Empty()
	a.Logger, b.Logger = quietLogger, quietLogger
	followed(t, a, src)
	require.Eventually(t, func() bool { return len(a.Status()) == 1 }, 5*time.Second, 10*time.Millisecond)
	followed(t, b, src)
	require.Eventually(t, func() bool { return len(b.Status()) == 1 }, 5*time.Second, 10*time.Millisecond,
		"the second pool gets the answer the first already has")
}
