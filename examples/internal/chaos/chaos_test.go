package chaos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
	"github.com/proxykit/proxykit/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// long reports whether the long variants run (PROXYKIT_LONG=1).
func long() bool { return os.Getenv("PROXYKIT_LONG") == "1" }

// seedFor returns the seed of a randomized test: PROXYKIT_SEED if set, else
// a fresh one. It is logged at the start and again on failure.
func seedFor(t *testing.T) uint64 {
	t.Helper()
	seed := rand.Uint64()
	if s := os.Getenv("PROXYKIT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "PROXYKIT_SEED")
		seed = v
	}
	t.Logf("seed %d", seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FAILED with seed %d: replay with PROXYKIT_SEED=%d go test -race -run '^%s$' ./examples/internal/chaos/", seed, seed, t.Name())
		}
	})
	return seed
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// bodyHeader carries the SHA-256 of the body a client sent, so that an
// upstream can check what it received.
const bodyHeader = "X-Body-Sha256"

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// randomBody returns n random bytes drawn from seed.
func randomBody(seed uint64, n int) []byte {
	b := make([]byte, n)
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// opaque hides a reader's type, so that net/http derives neither a length
// nor GetBody from it (and so never resends it on its own).
type opaque struct{ io.Reader }

// verifying is an upstream handler that reads the body, checks it against
// the client's bodyHeader, and answers "ok" (or 500 "corrupt body").
func verifying(addr string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return // the proxy gave up on this attempt
		}
		if want := r.Header.Get(bodyHeader); want != "" && want != sum(b) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = fmt.Fprintf(w, "corrupt body: %d bytes, hash %s, want %s\n", len(b), sum(b), want)
			return
		}
		w.Header().Set("X-Upstream", addr)
		w.Header().Set(bodyHeader, sum(b))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
}

// fastStack is the recommended wiring of stack.Build — RequestID, Monitor,
// errorpage, retry, ReverseProxy over pool → breakers → gateway.Transport
// — with two settings changed so that a few seconds see many state
// changes: breakers open for openFor (default 10 s), and a per-try timeout
// so that a hanging upstream fails as a timeout.
type fastStack struct {
	handler http.Handler
	monitor *status.Monitor
	hosts   *breaker.Hosts
	retry   *retry.Retry
	close   func() // closes idle upstream connections

	mu          sync.Mutex
	transitions map[breaker.State]int // by the state entered
}

func buildFast(t *testing.T, servers []*gatewaytest.Server, openFor, tryTimeout time.Duration) *fastStack {
	t.Helper()
	fs := &fastStack{transitions: map[breaker.State]int{}}
	targets := make([]*url.URL, len(servers))
	for i, s := range servers {
		targets[i] = mustURL(t, s.URL)
	}
	st, err := proxykit.New(proxykit.Config{
		Upstreams: targets,
		Retry:     retry.Options{PerTryTimeout: tryTimeout},
		Pages:     errorpage.Options{Brand: errorpage.Brand{Name: "Chaos"}},
		Logger:    quiet,
		Breaker: breaker.Settings{Timeout: openFor, OnStateChange: func(_, _ string, _, to breaker.State) {
			fs.mu.Lock()
			fs.transitions[to]++
			fs.mu.Unlock()
		}},
	})
	require.NoError(t, err)
	fs.handler, fs.monitor, fs.hosts, fs.retry, fs.close = st.Handler, st.Monitor, st.Hosts, st.Retry, st.Close
	return fs
}

func (fs *fastStack) entered(s breaker.State) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.transitions[s]
}

// verdict is what one client got, judged.
type verdict struct {
	label   string // "ok", "aborted", "upstream_503", or the failure class
	problem string // non-empty: an invariant broke
}

// judge checks one response against the invariant: the client gets the
// upstream's answer (200 "ok" with its own body's hash, the upstream's own
// 503, or a 200 cut short because the upstream broke mid-body — aborted,
// never replaced), or a correctly classified gateway failure:
// problem+json naming a known class, whose status is that class's (502,
// 503, 504; 503 with Retry-After for open and no_upstream), quoting the
// request ID, and naming no upstream address.
func judge(res *http.Response, body []byte, bodyErr error, sentHash string, upstreams []string) verdict {
	ct := res.Header.Get("Content-Type")
	if res.StatusCode == http.StatusOK && bodyErr != nil {
		if res.ContentLength == 1<<20 && len(body) < 1<<20 {
			return verdict{label: "aborted"} // close_mid_body: the connection was cut, not a page
		}
		return verdict{problem: fmt.Sprintf("200 with a broken body (%d bytes, Content-Length %d): %v", len(body), res.ContentLength, bodyErr)}
	}
	if bodyErr != nil {
		return verdict{problem: fmt.Sprintf("status %d with a broken body: %v", res.StatusCode, bodyErr)}
	}
	switch {
	case res.StatusCode == http.StatusOK:
		if string(body) != "ok\n" || !slices.Contains(upstreams, res.Header.Get("X-Upstream")) {
			return verdict{problem: fmt.Sprintf("200 that is not an upstream's answer: %q from %q", body, res.Header.Get("X-Upstream"))}
		}
		if sentHash != "" && res.Header.Get(bodyHeader) != sentHash {
			return verdict{problem: "the upstream received another body than the client sent"}
		}
		return verdict{label: "ok"}
	case res.StatusCode == http.StatusServiceUnavailable && string(body) == "Service Unavailable from upstream\n":
		return verdict{label: "upstream_503"} // the upstream's own answer, passed through
	case strings.HasPrefix(ct, "application/problem+json"):
	default:
		return verdict{problem: fmt.Sprintf("status %d, Content-Type %q: neither an upstream answer nor a problem document: %.200q", res.StatusCode, ct, body)}
	}
	var doc struct {
		Status    int    `json:"status"`
		Class     string `json:"class"`
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return verdict{problem: fmt.Sprintf("invalid problem document: %v: %.200q", err, body)}
	}
	var c gateway.Class
	if err := c.UnmarshalText([]byte(doc.Class)); err != nil {
		return verdict{problem: fmt.Sprintf("unknown class %q", doc.Class)}
	}
	want := c.Status()
	switch {
	case c == gateway.ClassCanceled:
		return verdict{problem: "a canceled failure was written to a client that stayed"}
	case c == gateway.ClassUpstreamStatus:
		if res.StatusCode < 502 || res.StatusCode > 504 {
			return verdict{problem: fmt.Sprintf("upstream_status with status %d", res.StatusCode)}
		}
		want = res.StatusCode
	case (c == gateway.ClassOpen || c == gateway.ClassNoUpstream) && res.Header.Get("Retry-After") == "":
		return verdict{problem: doc.Class + " without Retry-After"}
	}
	if res.StatusCode != want || doc.Status != want {
		return verdict{problem: fmt.Sprintf("class %s with status %d (document says %d), want %d", doc.Class, res.StatusCode, doc.Status, want)}
	}
	if id := res.Header.Get("X-Request-Id"); id == "" || doc.RequestID != id {
		return verdict{problem: fmt.Sprintf("request_id %q, header %q", doc.RequestID, id)}
	}
	if bytes.Contains(body, []byte("127.0.0.1")) {
		return verdict{problem: "an upstream address reached the client: " + string(body)}
	}
	for _, u := range upstreams {
		if _, port, _ := strings.Cut(u, ":"); port != "" && bytes.Contains(body, []byte(":"+port)) {
			return verdict{problem: "an upstream port reached the client: " + string(body)}
		}
	}
	return verdict{label: doc.Class}
}

// scenario is one chaos run: servers, a stack over them, a fault
// schedule, and clients.
type scenario struct {
	seed     uint64
	duration time.Duration
	clients  int
	switchEv time.Duration // mean time between fault switches
	faults   []gatewaytest.Fault
	deadline time.Duration // per request, at the client
	openFor  time.Duration // breakers' open period
	// toggle: each switch flips a server between healthy and a random
	// fault; otherwise it takes a random fault (healthy 2 times in 5).
	toggle bool
}

// result is what a chaos run saw.
type result struct {
	requests   int64
	labels     map[string]int
	problems   []string
	duplicates int
	stack      *fastStack
}

// run drives sc and returns what happened. Every server, connection and
// goroutine it started is gone when it returns.
func (sc scenario) run(t *testing.T) result {
	t.Helper()
	ledger := &loadgen.Ledger{}
	servers := make([]*gatewaytest.Server, 3)
	addrs := make([]string, len(servers))
	for i := range servers {
		s := gatewaytest.NewServer(gatewaytest.Healthy)
		s.Handler = verifying(s.Addr)
		s.OnRequest = ledger.Observe
		// Fixed per server, set before the first request (the fields are
		// not synchronised): slow headers below, at and above the per-try
		// timeout; a short Retry-After that is waited out, a long one that
		// is passed to the client, and none.
		s.Delay = []time.Duration{100 * time.Millisecond, 250 * time.Millisecond, 450 * time.Millisecond}[i]
		s.RetryAfter = []string{"1", "30", ""}[i]
		servers[i], addrs[i] = s, s.Addr
	}
	st := buildFast(t, servers, sc.openFor, 300*time.Millisecond)
	front := httptest.NewServer(st.handler)

	ctx, stop := context.WithTimeout(context.Background(), sc.duration)
	defer stop()

	// The fault schedule: every ~switchEv, one server takes a random fault
	// (healthy more often than not), drawn from the seed.
	var schedule sync.WaitGroup
	schedule.Add(1)
	var switches atomic.Int64
	go func() {
		defer schedule.Done()
		rng := rand.New(rand.NewPCG(sc.seed, 0xc4a05))
		for {
			d := sc.switchEv/2 + time.Duration(rng.Int64N(int64(sc.switchEv)))
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			s := servers[rng.IntN(len(servers))]
			f := gatewaytest.Healthy
			switch {
			case sc.toggle && s.Fault() == gatewaytest.Healthy, !sc.toggle && rng.IntN(5) >= 2:
				f = sc.faults[rng.IntN(len(sc.faults))]
			}
			if err := s.SetFault(f); err != nil {
				t.Errorf("SetFault(%v): %v", f, err)
				return
			}
			switches.Add(1)
		}
	}()

	client := &http.Client{
		Timeout:   sc.deadline,
		Transport: &http.Transport{MaxIdleConnsPerHost: sc.clients, DisableCompression: true},
	}
	var (
		mu       sync.Mutex
		labels   = map[string]int{}
		problems []string
		requests atomic.Int64
		nextID   atomic.Int64
	)
	note := func(v verdict, what string) {
		mu.Lock()
		defer mu.Unlock()
		if v.problem != "" {
			if len(problems) < 20 {
				problems = append(problems, what+": "+v.problem)
			}
			labels["PROBLEM"]++
			return
		}
		labels[v.label]++
	}
	var load sync.WaitGroup
	for c := range sc.clients {
		load.Add(1)
		go func(c int) {
			defer load.Done()
			rng := rand.New(rand.NewPCG(sc.seed, uint64(c)))
			for ctx.Err() == nil {
				id := nextID.Add(1)
				method, body := http.MethodGet, []byte(nil)
				switch p := rng.IntN(10); {
				case p < 3:
					method = http.MethodPost
				case p < 5:
					method = http.MethodPut
				}
				if method != http.MethodGet {
					body = randomBody(rng.Uint64(), rng.IntN(64<<10))
				}
				req, err := http.NewRequest(method, front.URL+"/r/"+strconv.FormatInt(id, 10), opaque{bytes.NewReader(body)})
				if err != nil {
					note(verdict{problem: err.Error()}, "request")
					return
				}
				if body == nil {
					req.Body = nil
				} else {
					req.Header.Set(bodyHeader, sum(body))
					if rng.IntN(2) == 0 {
						req.ContentLength = int64(len(body))
					}
				}
				req.Header.Set(loadgen.LoadIDHeader, strconv.FormatInt(id, 10))
				req.Header.Set("Accept", "application/json")
				what := fmt.Sprintf("%s #%d", method, id)
				start := time.Now()
				requests.Add(1)
				res, err := client.Do(req)
				if err != nil {
					note(verdict{problem: fmt.Sprintf("no response after %v (deadline %v): %v", time.Since(start).Round(time.Millisecond), sc.deadline, err)}, what)
					continue
				}
				got, err := io.ReadAll(io.LimitReader(res.Body, 2<<20))
				res.Body.Close()
				if err != nil && errors.Is(err, context.DeadlineExceeded) {
					note(verdict{problem: fmt.Sprintf("the body hung past the deadline (%v)", sc.deadline)}, what)
					continue
				}
				hash := ""
				if body != nil {
					hash = sum(body)
				}
				note(judge(res, got, err, hash, addrs), what)
			}
		}(c)
	}
	load.Wait()
	schedule.Wait()
	client.CloseIdleConnections()

	// Quiesce: every server healthy, then everything closed; the stack
	// must have no request left in flight.
	for _, s := range servers {
		require.NoError(t, s.SetFault(gatewaytest.Healthy))
	}
	front.Close()
	st.close()
	for _, s := range servers {
		s.Close()
	}
	assert.Zero(t, st.monitor.Snapshot().InFlight, "requests still in flight after every client finished")
	t.Logf("%d requests, %d fault switches, %d retries; outcomes %v; breakers entered open %d, half-open %d, closed %d times",
		requests.Load(), switches.Load(), st.retry.Stats().TotalRetries, labels,
		st.entered(breaker.StateOpen), st.entered(breaker.StateHalfOpen), st.entered(breaker.StateClosed))
	return result{requests: requests.Load(), labels: labels, problems: problems, duplicates: ledger.Duplicates(), stack: st}
}

// TestChaos: a seeded, random fault schedule over a pool of three
// upstreams — refused, reset before and after the request, hang, slow
// headers, garbage, close mid-body, 503 with and without Retry-After —
// switching every ~50 ms under concurrent GET/PUT/POST load for 3 s
// (PROXYKIT_LONG=1: 30 s). Every client gets the upstream's answer (with
// its own body received byte-exact) or a correctly classified gateway
// failure, within its deadline; no POST reaches an upstream twice; nothing
// is left in flight and no goroutine leaks.
func TestChaos(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	sc := scenario{
		seed:     seedFor(t),
		duration: 3 * time.Second,
		clients:  32,
		switchEv: 50 * time.Millisecond,
		faults: []gatewaytest.Fault{gatewaytest.Refused, gatewaytest.ResetOnAccept, gatewaytest.ResetAfterRequest,
			gatewaytest.Hang, gatewaytest.SlowHeaders, gatewaytest.Garbage, gatewaytest.CloseMidBody, gatewaytest.Status},
		// 3 attempts of at most 300 ms and two waits of at most 1 s
		// (Retry-After) take under 3 s; the rest is room for a loaded,
		// raced machine. Without the per-try timeout a hang is forever.
		deadline: 8 * time.Second,
		openFor:  200 * time.Millisecond,
	}
	if long() {
		sc.duration, sc.clients = 30*time.Second, 64
	}
	res := sc.run(t)
	assert.Empty(t, res.problems, "invariants broken")
	assert.Zero(t, res.duplicates, "POSTs delivered twice")
	assert.Positive(t, res.labels["ok"], "some requests succeed")
	assert.Greater(t, res.requests, int64(20), "the load ran (a busy machine runs fewer requests: 58 seen under a CPU hog)")
	goleak.VerifyNone(t, ignore)
}

// TestChaosBreakerFlips: 256 concurrent clients through the full stack
// while all three upstreams flip between healthy and failing (refused,
// reset, 503) every ~100 ms, and breakers open for 100 ms: every breaker
// state is entered many times while requests run (under -race), and every
// client still gets an upstream answer or a classified failure, with no
// POST delivered twice.
func TestChaosBreakerFlips(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	sc := scenario{
		seed:     seedFor(t),
		duration: 2 * time.Second,
		clients:  256,
		switchEv: 100 * time.Millisecond,
		faults:   []gatewaytest.Fault{gatewaytest.Refused, gatewaytest.ResetAfterRequest, gatewaytest.Status},
		deadline: 10 * time.Second, // 256 clients on a small, raced machine
		openFor:  100 * time.Millisecond,
		toggle:   true,
	}
	if long() {
		sc.duration = 20 * time.Second
	}
	// A breaker closes only when a half-open probe lands in one of its
	// host's healthy spells; on a starved machine few probes finish in a
	// run, so the run is repeated (up to 3 times, each checked in full)
	// until every state has been entered. A breaker that never closes
	// fails all three.
	states := []breaker.State{breaker.StateOpen, breaker.StateHalfOpen, breaker.StateClosed}
	entered := map[breaker.State]int{}
	seed := sc.seed
	for run := 1; run <= 3; run++ {
		sc.seed = seed + uint64(run-1) // a replay with the logged seed repeats every run
		res := sc.run(t)
		assert.Empty(t, res.problems, "run %d: invariants broken", run)
		assert.Zero(t, res.duplicates, "run %d: POSTs delivered twice", run)
		all := true
		for _, s := range states {
			entered[s] += res.stack.entered(s)
			all = all && entered[s] > 0
		}
		if all {
			break
		}
	}
	for _, s := range states {
		assert.Positive(t, entered[s], "breakers entered %v during the runs", s)
	}
	goleak.VerifyNone(t, ignore)
}
