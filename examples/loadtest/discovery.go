package main

// The discovery scenarios: upstreams that follow a fleet through DNS. A
// fleet of upstreams on 127.0.0.1, each on its own port, is published as
// the SRV records of one name on a DNS server of the run's own
// (gatewaytest.Zone); the fleet changes under an open-loop load of -rate
// requests a second, one in five a POST:
//
//	rolling      3 addresses; three times: a new address is added to DNS,
//	             1 s later an old one is removed from DNS, and 1 s after
//	             that it stops (http.Server.Shutdown: idle keep-alives
//	             closed, requests in flight finished)
//	scaleout     3 addresses; at 1 s, 6 more join (9)
//	scalein      3 addresses; at 1 s, 6 more join (9); 2 s later the 6
//	             leave and stop 1 s after that (3)
//	dnsdown      3 addresses; from 1 s the DNS server stops answering for
//	             -dns-down (default 30 s)
//	refuse1of10  10 addresses, one of which refuses connections
//	churn        6 upstreams; the answer changes every 100 ms for
//	             -churn (default 60 s), rotating which 3 are in it;
//	             goroutines and heap from 2 s in to the end
//
// proxykit follows the name (srv+http://…, Discovery.Refresh -dns-refresh,
// default 500 ms), with its defaults and without its per-host limiter
// (kit-nolimit); the bare proxy beside them is a ReverseProxy on the same
// tuned transport, round-robin over the addresses a loop of its own
// resolves every -dns-refresh (what a hand-written follower does: no
// health, no retries). A second table gives, per run: requests that
// reached an address after its removal from DNS plus one refresh
// interval (late: +10% for the jitter, +100 ms for the lookup), POSTs an upstream read twice, how long new addresses
// took to get their first request after joining DNS and the share of
// requests they got in that first second (slow start: below their full
// share), the "discovery failed" log lines, whether the status view showed
// the answer stale, and goroutines and heap (after GC) before and after.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

// discSpec shapes the discovery scenarios.
type discSpec struct {
	rate    float64       // requests/s, open-loop, evenly spaced
	refresh time.Duration // proxykit's Discovery.Refresh and the bare follower's
	down    time.Duration // dnsdown: how long DNS does not answer
	churn   time.Duration // churn: how long the set changes every 100 ms
}

var defaultDisc = discSpec{rate: 300, refresh: 500 * time.Millisecond, down: 30 * time.Second, churn: 60 * time.Second}

// srvName is the SRV name the fleet is published under.
const srvName = "_http._tcp.fleet.test"

// heapSlack is how much more heap at rest after a run than before counts
// as flat: the heap is the whole process's (the load generator's ledger
// and samples included), and the proxy's buffer pool keeps up to 256 idle
// 32 KiB buffers (8 MiB, gateway.NewBufferPool) after a burst of
// concurrency, whatever the upstream set did. The per-host state (hosts,
// breakers, limiters) is counted exactly.
const heapSlack = 9 << 20

// discFigures are a discovery run's own figures.
type discFigures struct {
	late       int64         // requests at an address after removal + refresh
	firstAfter time.Duration // slowest first request at a new address after it joined DNS
	newShare   float64       // share of requests the new addresses got in their first second
	fullShare  float64       // the share they would get at full weight
	failLogs   int64         // "discovery failed" lines
	staleShown bool          // the status view showed the answer stale
	gBefore    int           // goroutines and heap at rest before the load, and after it
	gAfter     int           // (idle connections closed)
	heapBefore uint64
	heapAfter  uint64
	statePeak  [3]int  // scalein: hosts in the pool, breakers and limiters at 9 hosts
	stateAfter [3]int  // and at the end
	outState   string  // refuse1of10: the refusing address's state at the end
	outShare   float64 // and its share of the attempts
}

// discScenario is one discovery scenario.
type discScenario struct {
	name    string
	quiesce bool // goroutines and heap compared at rest, before and after the run
	initial int  // addresses at the start
	spare   int  // addresses started but not in DNS
	length  func(sp discSpec) time.Duration
	// timeline changes the fleet; it returns when done or ctx ends.
	timeline func(ctx context.Context, f *fleet, sp discSpec, figs *discFigures)
	check    func(k loadgen.Row, f *discFigures) string
}

var discScenarios = []discScenario{
	{name: "rolling", initial: 3, spare: 3, length: func(discSpec) time.Duration { return 10 * time.Second },
		timeline: func(ctx context.Context, f *fleet, _ discSpec, _ *discFigures) {
			for i := range 3 {
				if !sleepCtx(ctx, time.Second) {
					return
				}
				f.publish(f.ups[3+i])
				if !sleepCtx(ctx, time.Second) {
					return
				}
				old := f.ups[i]
				f.unpublish(old)
				if !sleepCtx(ctx, time.Second) {
					return
				}
				f.stop(old)
			}
		},
		check: func(k loadgen.Row, f *discFigures) string {
			return join(want(k.SuccessRate() >= 99.99, "≥ 99.99% served"), want(k.Duplicates == 0, "0 POSTs applied twice"),
				want(f.late == 0, "no request to a removed address after removal + one refresh"))
		}},
	{name: "scaleout", initial: 3, spare: 6, length: func(discSpec) time.Duration { return 5 * time.Second },
		timeline: func(ctx context.Context, f *fleet, sp discSpec, figs *discFigures) {
			if !sleepCtx(ctx, time.Second) {
				return
			}
			f.publish(f.ups[3:]...)
			<-ctx.Done()
		},
		check: func(k loadgen.Row, f *discFigures) string {
			return join(want(k.SuccessRate() == 100, "0 failed"),
				want(f.firstAfter <= defaultDisc.refresh+time.Second, "new addresses get traffic within refresh + 1 s"))
		}},
	{name: "scalein", initial: 3, spare: 6, quiesce: true, length: func(sp discSpec) time.Duration { return sp.refresh + 7*time.Second },
		timeline: func(ctx context.Context, f *fleet, sp discSpec, figs *discFigures) {
			if !sleepCtx(ctx, time.Second) {
				return
			}
			extra := slices.Clone(f.ups[3:])
			f.publish(extra...)
			if !sleepCtx(ctx, 2*time.Second) {
				return
			}
			if f.stack != nil {
				figs.statePeak = stateSize(f.stack)
			}
			f.unpublish(extra...)
			if !sleepCtx(ctx, time.Second) {
				return
			}
			for _, u := range extra {
				f.stop(u)
			}
			<-ctx.Done()
		},
		check: func(k loadgen.Row, f *discFigures) string {
			return join(want(k.SuccessRate() == 100, "0 failed"),
				want(f.gAfter <= f.gBefore+2, "goroutines back to the 3-host level"),
				want(f.stateAfter == [3]int{3, 3, 3} || f.stateAfter == [3]int{3, 3, 0}, "state freed: 3 hosts, breakers and limiters"),
				want(f.heapAfter <= f.heapBefore+heapSlack, "memory back to the 3-host level"))
		}},
	{name: "dnsdown", initial: 3, length: func(sp discSpec) time.Duration { return sp.down + 2*time.Second },
		timeline: func(ctx context.Context, f *fleet, sp discSpec, figs *discFigures) {
			if !sleepCtx(ctx, time.Second) {
				return
			}
			f.zone.SetDown(true)
			deadline := time.Now().Add(sp.down)
			for time.Now().Before(deadline) && sleepCtx(ctx, 100*time.Millisecond) {
				if f.stack != nil {
					for _, s := range f.stack.Pool.Discovery().Sources {
						figs.staleShown = figs.staleShown || s.Stale
					}
				}
			}
			f.zone.SetDown(false)
		},
		check: func(k loadgen.Row, f *discFigures) string {
			return join(want(k.SuccessRate() == 100, "100% served from the last answer"),
				want(f.failLogs == 1, "logged once"), want(f.staleShown, "status view shows staleness"))
		}},
	{name: "refuse1of10", initial: 10, length: func(discSpec) time.Duration { return 5 * time.Second },
		timeline: func(ctx context.Context, _ *fleet, _ discSpec, _ *discFigures) { <-ctx.Done() },
		check: func(k loadgen.Row, f *discFigures) string {
			return join(want(k.SuccessRate() == 100, "100% served"),
				want(f.outShare < 0.02, "the refusing address out of rotation (< 2% of the attempts; full share 10%)"))
		}},
	{name: "churn", initial: 3, spare: 3, quiesce: true, length: func(sp discSpec) time.Duration { return sp.churn + sp.refresh + time.Second },
		timeline: func(ctx context.Context, f *fleet, sp discSpec, figs *discFigures) {
			start := time.Now()
			end := start.Add(sp.churn)
			for i := 0; time.Now().Before(end); i++ {
				if !sleepCtx(ctx, 100*time.Millisecond) {
					return
				}
				f.set(f.ups[i%6], f.ups[(i+1)%6], f.ups[(i+3)%6])
			}
			f.set(f.ups[:3]...) // back to the first answer
			<-ctx.Done()
		},
		check: func(k loadgen.Row, f *discFigures) string {
			return join(want(k.SuccessRate() == 100, "0 failed"),
				want(f.gAfter <= f.gBefore+2, "goroutines flat"), want(f.heapAfter <= f.heapBefore+heapSlack, "memory flat"))
		}},
}

// discStacks: the bare proxy with its hand-written DNS follower, proxykit,
// and proxykit without its per-host limiter (which, on a machine whose
// load makes every latency jump, sheds: the difference is the limiter's).
var discStacks = []string{"bare", "proxykit", "kit-nolimit"}

// discJobs returns a job for each discovery scenario.
func discJobs(sp discSpec) []job {
	var all []job
	for _, sc := range discScenarios {
		figs := map[string]*discFigures{}
		var mu sync.Mutex
		all = append(all, job{name: sc.name, length: sc.length(sp), stacks: discStacks,
			one: func(ctx context.Context, stack string) (loadgen.Row, error) {
				f := &discFigures{}
				mu.Lock()
				figs[stack] = f
				mu.Unlock()
				return runDiscovery(ctx, sc, stack, sp, f)
			},
			check: func(kit, bare loadgen.Row) string {
				mu.Lock()
				defer mu.Unlock()
				k, b, n := figs["proxykit"], figs["bare"], figs["kit-nolimit"]
				if k == nil || b == nil || n == nil {
					return ""
				}
				line := "proxykit " + k.String() + "; kit-nolimit " + n.String() + "; bare " + b.String()
				if miss := sc.check(kit, k); miss != "" {
					line += "\n" + sc.name + ": " + miss
				}
				return line
			}})
	}
	return all
}

func (f *discFigures) String() string {
	parts := []string{fmt.Sprintf("late %d", f.late)}
	if f.firstAfter > 0 {
		parts = append(parts, fmt.Sprintf("first request at a new address ≤ %v after it joined DNS", f.firstAfter.Round(time.Millisecond)))
	}
	if f.fullShare > 0 {
		parts = append(parts, fmt.Sprintf("new addresses' share in their first second %.0f%% (full %.0f%%)", 100*f.newShare, 100*f.fullShare))
	}
	if f.failLogs > 0 || f.staleShown {
		parts = append(parts, fmt.Sprintf("%d \"discovery failed\" lines, stale shown %v", f.failLogs, f.staleShown))
	}
	if f.gBefore > 0 {
		parts = append(parts, fmt.Sprintf("at rest before → after: goroutines %d → %d, heap %.1f → %.1f MiB", f.gBefore, f.gAfter,
			float64(f.heapBefore)/(1<<20), float64(f.heapAfter)/(1<<20)))
	}
	if f.statePeak[0] > 0 {
		parts = append(parts, fmt.Sprintf("hosts/breakers/limiters %d/%d/%d at 9 hosts → %d/%d/%d after", f.statePeak[0], f.statePeak[1], f.statePeak[2],
			f.stateAfter[0], f.stateAfter[1], f.stateAfter[2]))
	} else if f.stateAfter[0] > 0 {
		parts = append(parts, fmt.Sprintf("hosts/breakers/limiters %d/%d/%d at the end", f.stateAfter[0], f.stateAfter[1], f.stateAfter[2]))
	}
	if f.outState != "" {
		parts = append(parts, fmt.Sprintf("refusing address %s at the end, %.1f%% of the attempts", f.outState, 100*f.outShare))
	}
	return strings.Join(parts, ", ")
}

// member is one upstream of a fleet: a real server that stops gracefully.
type member struct {
	srv       *http.Server
	ln        net.Listener
	port      uint16
	url       *url.URL
	joined    atomic.Int64 // Unix ns it (last) joined DNS; 0 never
	removed   atomic.Int64 // Unix ns it left DNS; 0 in it
	first     atomic.Int64 // Unix ns of its first request after joining
	hits      atomic.Int64
	late      atomic.Int64
	refusing  *gatewaytest.Server // a refusing member's port keeper
	stopped   atomic.Bool
	refresh   time.Duration
	earlyHits atomic.Int64 // requests within a second of its first
}

func (m *member) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UnixNano()
	m.hits.Add(1)
	if rm := m.removed.Load(); rm != 0 && now > rm+int64(m.refresh)*11/10+int64(100*time.Millisecond) {
		m.late.Add(1)
	}
	if m.joined.Load() != 0 {
		m.first.CompareAndSwap(0, now)
		if now-m.first.Load() < int64(time.Second) {
			m.earlyHits.Add(1)
		}
	}
	_, _ = io.Copy(io.Discard, r.Body)
	time.Sleep(time.Millisecond) // a little work: requests overlap
	_, _ = io.WriteString(w, "ok")
}

// fleet is the upstreams of a discovery run and their DNS.
type fleet struct {
	zone   *gatewaytest.Zone
	ledger *loadgen.Ledger
	ups    []*member
	stack  *proxykit.Stack // proxykit runs; nil for bare

	mu   sync.Mutex
	live []*member
}

func newFleet(n int, refresh time.Duration, ledger *loadgen.Ledger, refusing int) (*fleet, error) {
	f := &fleet{zone: gatewaytest.NewZone(), ledger: ledger}
	f.zone.SetAddrs("lo.test", netip.MustParseAddr("127.0.0.1"))
	for i := range n {
		m := &member{refresh: refresh}
		if i < refusing {
			// Its port stays reserved while it refuses: a closed
			// listener's port could be taken by an outbound connection.
			m.refusing = gatewaytest.NewServer(gatewaytest.Refused)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			f.close()
			return nil, err
		}
		m.ln = ln
		port := ln.Addr().(*net.TCPAddr).Port
		if m.refusing != nil {
			_ = ln.Close()
			u, _ := url.Parse(m.refusing.URL)
			port, _ = strconv.Atoi(u.Port())
		}
		m.port = uint16(port)
		m.url = &url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(port)}
		m.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ledger.Observe(r)
			m.ServeHTTP(w, r)
		}), ErrorLog: log.New(io.Discard, "", 0)}
		if m.refusing == nil {
			go func() { _ = m.srv.Serve(ln) }()
		}
		f.ups = append(f.ups, m)
	}
	return f, nil
}

// publish adds ms to the DNS answer.
func (f *fleet) publish(ms ...*member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now().UnixNano()
	for _, m := range ms {
		m.removed.Store(0)
		m.joined.Store(now)
		f.live = append(f.live, m)
	}
	f.answer()
}

// unpublish removes ms from the DNS answer.
func (f *fleet) unpublish(ms ...*member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now().UnixNano()
	for _, m := range ms {
		m.removed.Store(now)
		f.live = slices.DeleteFunc(f.live, func(x *member) bool { return x == m })
	}
	f.answer()
}

// set makes ms the whole DNS answer (churn: no figures per member).
func (f *fleet) set(ms ...*member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live = slices.Clone(ms)
	f.answer()
}

// answer publishes f.live. Under mu.
func (f *fleet) answer() {
	recs := make([]gatewaytest.SRV, len(f.live))
	for i, m := range f.live {
		recs[i] = gatewaytest.SRV{Target: "lo.test", Port: m.port, Weight: 1}
	}
	f.zone.SetSRV(srvName, recs...)
}

// stop shuts m down gracefully: idle keep-alives closed, in-flight finished.
func (f *fleet) stop(m *member) {
	if m.stopped.Swap(true) {
		return
	}
	if m.refusing != nil {
		m.refusing.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
}

// snapshot records goroutines and the heap after a GC.
func (f *fleet) snapshot(g *int, heap *uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	*g, *heap = runtime.NumGoroutine(), ms.HeapInuse
}

func (f *fleet) close() {
	for _, m := range f.ups {
		f.stop(m)
		_ = m.srv.Close()
	}
	f.zone.Close()
}

// runDiscovery runs one discovery scenario through one stack.
func runDiscovery(ctx context.Context, sc discScenario, stack string, sp discSpec, figs *discFigures) (loadgen.Row, error) {
	var ledger loadgen.Ledger
	refusing := 0
	if sc.name == "refuse1of10" {
		refusing = 1
	}
	f, err := newFleet(sc.initial+sc.spare, sp.refresh, &ledger, refusing)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer f.close()
	f.publish(f.ups[:sc.initial]...)
	for _, m := range f.ups[:sc.initial] {
		m.joined.Store(0) // the initial members are not "new"
	}

	var failLogs atomic.Int64
	logger := slog.New(countingHandler{msg: "discovery failed", n: &failLogs})
	var handler http.Handler
	switch stack {
	case "bare":
		h, stop := bareFollower(f.zone.Addr, sp.refresh)
		defer stop()
		handler = h
	case "proxykit", "kit-nolimit":
		st, err := proxykit.New(proxykit.Config{
			Upstreams: []*url.URL{{Scheme: "srv+http", Host: srvName}},
			Discovery: pool.DNSOptions{Resolver: f.zone.Addr, Refresh: sp.refresh},
			Logger:    logger,
			NoLimiter: stack == "kit-nolimit",
		})
		if err != nil {
			return loadgen.Row{}, err
		}
		defer st.Close()
		f.stack, handler = st, st
	default:
		return loadgen.Row{}, fmt.Errorf("unknown stack %q", stack)
	}
	front, stop, err := serveOn(handler)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()

	if sc.quiesce {
		f.snapshot(&figs.gBefore, &figs.heapBefore)
	}
	length := sc.length(sp)
	tctx, cancel := context.WithTimeout(ctx, length)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc.timeline(tctx, f, sp, figs)
	}()
	res := openMixed(ctx, front, sp.rate, length, 5)
	cancel()
	<-done
	if sc.quiesce {
		closeIdle(handler)
		// Closed connections' goroutines end; a removed host's state is
		// freed again a second after the last change.
		time.Sleep(1200 * time.Millisecond)
		if f.stack != nil {
			figs.stateAfter = stateSize(f.stack)
		}
		f.snapshot(&figs.gAfter, &figs.heapAfter)
	}

	for _, m := range f.ups {
		figs.late += m.late.Load()
		if j := m.joined.Load(); j != 0 {
			if first := m.first.Load(); first != 0 {
				figs.firstAfter = max(figs.firstAfter, time.Duration(first-j))
			} else {
				figs.firstAfter = time.Duration(math.MaxInt64) // never
			}
		}
	}
	if sc.name == "scaleout" {
		var early, all int64
		for _, m := range f.ups[3:] {
			early += m.earlyHits.Load()
		}
		all = int64(sp.rate) // requests in one second
		figs.newShare, figs.fullShare = float64(early)/float64(all), 6.0/9
	}
	if sc.name == "refuse1of10" {
		if f.stack != nil {
			var all int64
			for _, s := range f.stack.Pool.Status() {
				all += s.Requests
				if s.Upstream == f.ups[0].url.Host {
					figs.outState, figs.outShare = string(s.State), float64(s.Requests)
				}
			}
			figs.outShare /= float64(max(all, 1))
		}
	}
	figs.failLogs = failLogs.Load()
	return loadgen.Row{Scenario: sc.name, Stack: stack, Result: res,
		Upstream: ledger.Total(), Duplicates: ledger.Duplicates()}, nil
}

// stateSize returns the hosts in st's pool, its breakers and its limiters.
func stateSize(st *proxykit.Stack) [3]int {
	n := [3]int{len(st.Pool.Status())}
	for _, b := range st.Hosts.States() {
		if b.Key != "" && !b.Overflow {
			n[1]++
		}
	}
	if st.Limiter != nil {
		n[2] = len(st.Limiter.Status())
	}
	return n
}

// closeIdle closes the idle connections of a proxy's transport: the
// stack's, or the bare proxy's.
func closeIdle(h http.Handler) {
	switch p := h.(type) {
	case *proxykit.Stack:
		if c, ok := p.Proxy.Transport.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	case *httputil.ReverseProxy:
		if c, ok := p.Transport.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

// countingHandler counts the log records whose message contains msg.
type countingHandler struct {
	msg string
	n   *atomic.Int64
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.msg) {
		h.n.Add(1)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// bareFollower is the bare proxy of the discovery scenarios: a
// ReverseProxy on the tuned transport, round-robin over the addresses its
// own loop resolves from the SRV name every refresh (keeping the last
// answer when DNS fails), as a hand-written follower would.
func bareFollower(resolver string, refresh time.Duration) (http.Handler, func()) {
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, resolver)
	}}
	var targets atomic.Pointer[[]*url.URL]
	targets.Store(&[]*url.URL{})
	resolve := func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, recs, err := res.LookupSRV(ctx, "", "", srvName)
		if err != nil || len(recs) == 0 {
			return
		}
		var ts []*url.URL
		for _, r := range recs {
			ts = append(ts, &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(int(r.Port)))})
		}
		targets.Store(&ts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	resolve(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(refresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				resolve(ctx)
			}
		}
	}()
	var rr atomic.Uint64
	tr := gateway.NewHTTPTransport()
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			ts := *targets.Load()
			if len(ts) == 0 {
				pr.Out.URL.Host = "127.0.0.1:1" // nothing resolved: fails
				return
			}
			pr.SetURL(ts[rr.Add(1)%uint64(len(ts))])
		},
		Transport:  tr,
		ErrorLog:   log.New(io.Discard, "", 0),
		BufferPool: gateway.NewBufferPool(0, 0),
	}
	return p, func() {
		cancel()
		wg.Wait()
		tr.CloseIdleConnections()
	}
}

// openMixed sends rate requests a second for d, evenly spaced, whatever
// the answers; every postEvery-th is a POST with a load ID (for the
// ledger's duplicates), the rest GETs.
func openMixed(ctx context.Context, base string, rate float64, d time.Duration, postEvery int) loadgen.Result {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}
	defer client.CloseIdleConnections()
	n := int(rate * d.Seconds())
	samples := make([]loadgen.Sample, n)
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 && !sleepCtx(ctx, wait) {
			samples = samples[:i]
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &samples[i]
			s.Start = time.Now()
			defer func() { s.End = time.Now() }()
			method, body := http.MethodGet, io.Reader(nil)
			if i%postEvery == 0 {
				method, body = http.MethodPost, strings.NewReader("order "+strconv.Itoa(i))
			}
			req, err := http.NewRequestWithContext(ctx, method, base+"/orders", body)
			if err != nil {
				s.Class = "client_error"
				return
			}
			req.Header.Set(loadgen.LoadIDHeader, strconv.Itoa(i))
			req.Header.Set("Accept", "application/json")
			res, err := client.Do(req)
			if err != nil {
				s.Class = "client_error"
				return
			}
			s.Status = res.StatusCode
			if res.StatusCode >= 400 {
				s.Class = loadgen.ClassOf(res)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}()
	}
	wg.Wait()
	return loadgen.OpenResult{Start: start, Samples: samples}.Result()
}

// sleepCtx sleeps d, or less when ctx ends first (then false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// errDiscSpec reports an out-of-range discovery flag.
var errDiscSpec = errors.New("want -dns-refresh in [100ms, 5m], -dns-down and -churn in (0, 10m]")

func (sp discSpec) validate() error {
	if sp.refresh < pool.MinDNSRefresh || sp.refresh > pool.MaxDNSRefresh || sp.down <= 0 || sp.down > 10*time.Minute ||
		sp.churn <= 0 || sp.churn > 10*time.Minute || !(sp.rate >= 1 && sp.rate <= 20000) {
		return errDiscSpec
	}
	return nil
}
