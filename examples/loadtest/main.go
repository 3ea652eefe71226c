// Command loadtest drives concurrent load, on loopback only, through a bare
// httputil.ReverseProxy and through proxykit's full stack, over upstreams
// that fail in chosen ways, and prints one table:
//
//	go run ./examples/loadtest                      # every scenario
//	go run ./examples/loadtest -scenario reset20 -duration 10s -concurrency 32
//	go run ./examples/loadtest -scenario restart    # the four restart scenarios only
//	go run ./examples/loadtest -scenario restart1,badroute -rate 400
//	go run ./examples/loadtest -scenario overload   # the overload scenario
//	go run ./examples/loadtest -scenario hedging    # stall, stall5 and nostall
//	go run ./examples/loadtest -scenario evidence   # slowupload and conncap
//	go run ./examples/loadtest -scenario healthy    # healthy traffic that looks unusual
//	go run ./examples/loadtest -scenario discovery  # DNS service discovery (discovery.go)
//	go run ./examples/loadtest -markdown            # the table for BENCHMARKS.md
//	go run ./examples/loadtest -scenario happy -stacks proxykit -cpuprofile kit.cpu  # one stack, profiled
//
// Fault scenarios (3 upstreams each, fresh for every run; closed-loop load
// by -concurrency clients for -duration):
//
//	happy      all healthy; also the naive proxy (NewSingleHostReverseProxy
//	           on http.DefaultTransport), proxykit without its per-host
//	           limiter (kit-nolimit: what the limiter costs) and without
//	           hedging (kit-nohedge: what hedging costs) for comparison
//	refuse1    1 of 3 refuses connections
//	reset20    1 of 3 resets 20% of requests after reading them (half POSTs:
//	           a POST delivered twice would show in the dup column)
//	slow1      1 of 3 answers after 1 s; proxykit has a 250 ms per-try timeout
//	outage     all refuse for 2 s, then recover; runs at least 16 s, so
//	           that the breakers' 10 s open period ends within the run
//	outage503  all answer 503 (retry budget: upstream requests per request)
//
// Restart scenarios (-scenario restart runs these four): an
// open-loop load of -rate GET requests a second (default 400), sent on
// schedule whatever the answers (Poisson arrivals drawn from -seed, the
// same for both stacks), through proxykit with its defaults and the bare
// proxy:
//
//	restart1   1 upstream; after 0.5 s it refuses connections for -outage
//	           (default 1 s: its listener closed, its port kept), then
//	           listens again on the same port; watched for -after (5 s)
//	restart3   the same with 3 upstreams, all down together
//	dead1      3 upstreams; after 0.5 s the third goes down for good (it
//	           resets every connection it accepts: a refused connection
//	           cannot be counted at the host); its accepted connections
//	           are counted from 2 s after it went down, for -after
//	badroute   1 upstream whose /bad answers 502; /bad gets 50 req/s, three
//	           other routes share the rest of -rate, for -after
//
// Overload scenario: one upstream of fixed capacity (8 workers
// × 10 ms = 800 requests/s; the rest wait in its queue until the caller
// gives up), offered -overload-rate GET/s (default 1,200) open-loop for
// 4 s, per-try timeout 1 s (the bare proxy: a 1 s response-header
// timeout), through the bare proxy, proxykit, and proxykit with retries
// off (kit-noretry). A second table gives goodput (200s complete within
// 250 ms, per second), the p99 of the 200s, the p99 of the rest, and how
// many of the rest were 503 with Retry-After.
//
// Stall scenarios (-scenario hedging runs all three): 3 healthy
// upstreams, GET traffic from -stall-clients (8) clients, closed-loop,
// -stall-requests (10,000) measured requests per run after a warm-up of
// 1,000 (connections; the adaptive hedge delay):
//
//	stall      each upstream stalls a random 2% of its responses by 300 ms;
//	           through the bare proxy, proxykit with hedging off
//	           (kit-nohedge: retry.Options{Hedges: -1}) and proxykit with
//	           its defaults (hedging on)
//	stall5     each upstream stalls a random 5% of its responses by
//	           100 ms (a delay learned from the stalls would not hedge);
//	           the same stacks
//	nostall    no stalls (the happy path): kit-nohedge and proxykit, for
//	           what hedging costs when nothing is late
//
// A second table gives p50, p99, p99.9, upstream requests per request,
// requests/s, and the hedges sent and won (retry Stats) and the hedge
// delay at the end.
//
// Evidence scenarios (-scenario evidence runs both; see evidence.go): one
// upstream, healthy, with traffic that looks unusual:
//
//	slowupload 4 POSTs whose bodies move a byte every 300 ms for 3 s,
//	           beside 50 GET/s for 4 s: through the bare proxy (1 s
//	           response-header timeout) and proxykit with a 1 s per-try
//	           timeout; then the bare proxy and proxykit (kit-reqtimeout)
//	           with a 2 s deadline on each request
//	conncap    MaxConnsPerHost 8, every connection held by a stream for
//	           2 s, 50 GET/s beside them (per-try timeout 300 ms); "first
//	           200" and "after" are measured from the streams' end
//
// Healthy scenarios (-scenario healthy runs these five): upstreams that
// keep pace with traffic that merely looks unusual, through the bare proxy
// and proxykit with its defaults; open-loop Poisson GETs (-seed) to /api
// and to a cheap route answered 404 at once. "after" is the share of
// requests answered with their route's own status (200, or the cheap
// route's 404), "others" the same for /api alone:
//
//	healthy-mix1      1 upstream: /api 10 ms at 250/s, cheap route 2/s, 10 s
//	healthy-mix3      3 upstreams: /api 10 ms at 450/s, cheap route 2/s, 10 s
//	healthy-slower3   3 upstreams: /api at 120/s, 1 ms, then 250 ms for
//	                  every request from 3 s on (a slower dependency), 10 s
//	healthy-attacker  1 upstream: /api 10 ms at 250/s beside an attacker's
//	                  cheap requests at 8/s, 12 s
//	healthy-quiet     1 upstream of capacity 8 (8 workers × 10 ms) offered
//	                  1,200/s for 2 s, then 12 s without a request, then a
//	                  burst of 30 and 6 clients for 3 s (the row counts these)
//
// Columns: requests sent, success (2xx/3xx), latency, upstream requests
// read per client request, POSTs an upstream read twice, failures by class
// (problem+json "class", or the status for a bare proxy). With a restart
// scenario in the run, four more: "first 200" (from the upstreams' return
// to the first success; "never" when none within -after), "after" (share
// of the requests sent in the -after window after the return that
// succeeded), "probe/s" (connections per second the dead host accepted)
// and "others" (share of the routes other than /bad served). A line
// "scenario: missed: …" follows the table for every target (checkRestart,
// checkOverload, checkStall) that proxykit missed in the run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(2)
	}
}

// scenario sets up three upstreams and says how to load them.
type scenario struct {
	name     string
	post     float64                                        // share of POSTs
	setup    func(ups []*gatewaytest.Server) error          // faults at start
	recover  func(ups []*gatewaytest.Server)                // at recoverAt, if set
	stacks   []string                                       // which stacks run it
	tryLimit time.Duration                                  // proxykit's per-try timeout
	check    func(kit loadgen.Row, bare loadgen.Row) string // "" or a missed target

	recoverAt, minDuration time.Duration
}

var scenarios = []scenario{
	{name: "happy", post: 0.2, stacks: []string{"naive", "bare", "proxykit", "kit-nolimit", "kit-nohedge"},
		check: func(k, _ loadgen.Row) string {
			return want(k.Failures["overloaded"] == 0, "nothing shed on a healthy upstream")
		}},
	{name: "refuse1", post: 0.3, setup: func(u []*gatewaytest.Server) error { return u[2].SetFault(gatewaytest.Refused) },
		check: func(k, _ loadgen.Row) string {
			return want(k.SuccessRate() == 100, "100% success with 1 of 3 refusing")
		}},
	{name: "reset20", post: 0.5, setup: func(u []*gatewaytest.Server) error { return u[2].SetFlaky(gatewaytest.ResetAfterRequest, 0.2) },
		check: func(k, _ loadgen.Row) string { return want(k.Duplicates == 0, "no POST delivered twice") }},
	{name: "slow1", post: 0.2, tryLimit: 250 * time.Millisecond, setup: func(u []*gatewaytest.Server) error {
		u[2].Delay = time.Second
		return u[2].SetFault(gatewaytest.SlowHeaders)
	}},
	{name: "outage", post: 0.2, setup: func(u []*gatewaytest.Server) error {
		for _, s := range u {
			if err := s.SetFault(gatewaytest.Refused); err != nil {
				return err
			}
		}
		return nil
	}, recover: func(u []*gatewaytest.Server) {
		for _, s := range u {
			_ = s.SetFault(gatewaytest.Healthy)
		}
	}, recoverAt: 2 * time.Second, minDuration: 16 * time.Second},
	{name: "outage503", post: 0.2, setup: func(u []*gatewaytest.Server) error {
		for _, s := range u {
			s.StatusCode, s.RetryAfter = 503, ""
			if err := s.SetFault(gatewaytest.Status); err != nil {
				return err
			}
		}
		return nil
	}, check: func(k, _ loadgen.Row) string { return want(k.Amplification() <= 1.25, "amplification ≤ 1.25×") }},
}

func want(ok bool, target string) string {
	if ok {
		return ""
	}
	return "missed: " + target
}

// job is one scenario: how to run it through one stack, on which stacks,
// and its targets.
type job struct {
	name   string
	stacks []string
	length time.Duration // how long one run takes, or
	count  int           // how many requests it sends
	one    func(ctx context.Context, stack string) (loadgen.Row, error)
	check  func(kit, bare loadgen.Row) string
}

func run(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	duration := fs.Duration("duration", 3*time.Second, "duration of each fault-scenario run")
	concurrency := fs.Int("concurrency", 16, "concurrent clients of the fault scenarios")
	only := fs.String("scenario", "all", "scenarios to run, comma-separated: names, or all, faults, restart")
	markdown := fs.Bool("markdown", false, "print a Markdown table")
	onlyStacks := fs.String("stacks", "", "stacks to run, comma-separated (default: each scenario's own)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (generator, proxy and upstreams) to this file")
	tl := defaultTimeline
	fs.Float64Var(&tl.rate, "rate", tl.rate, "restart scenarios: requests per second, open-loop")
	fs.Uint64Var(&tl.seed, "seed", tl.seed, "restart scenarios: seed of the Poisson arrivals")
	fs.DurationVar(&tl.outage, "outage", tl.outage, "restart1, restart3: how long the upstreams refuse connections")
	fs.DurationVar(&tl.after, "after", tl.after, "restart scenarios: how long they are watched after the return (dead1: counted; badroute: run)")
	ov := defaultOverload
	fs.Float64Var(&ov.rate, "overload-rate", ov.rate, "overload scenario: offered GET/s, open-loop (capacity is 800/s)")
	sp := defaultStall
	fs.IntVar(&sp.requests, "stall-requests", sp.requests, "stall scenarios: measured requests per run")
	fs.IntVar(&sp.clients, "stall-clients", sp.clients, "stall scenarios: concurrent clients")
	ds := defaultDisc
	fs.Float64Var(&ds.rate, "discovery-rate", ds.rate, "discovery scenarios: requests per second, open-loop, 1 in 5 a POST")
	fs.DurationVar(&ds.refresh, "dns-refresh", ds.refresh, "discovery scenarios: DNS refresh interval")
	fs.DurationVar(&ds.down, "dns-down", ds.down, "dnsdown: how long the DNS server does not answer")
	fs.DurationVar(&ds.churn, "churn", ds.churn, "churn: how long the set changes every 100 ms")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fs.PrintDefaults()
			return nil
		}
		return err
	}
	if *duration <= 0 || *duration > 10*time.Minute {
		return fmt.Errorf("-duration %v: want (0, 10m]", *duration)
	}
	if *concurrency < 1 || *concurrency > 1024 {
		return fmt.Errorf("-concurrency %d: want 1 to 1024", *concurrency)
	}
	if !(tl.rate >= 1 && tl.rate <= 20000) {
		return fmt.Errorf("-rate %v: want 1 to 20000", tl.rate)
	}
	if tl.outage <= 0 || tl.outage > time.Minute || tl.after <= 0 || tl.after > 10*time.Minute {
		return fmt.Errorf("-outage %v, -after %v: want (0, 1m] and (0, 10m]", tl.outage, tl.after)
	}
	if !(ov.rate >= 1 && ov.rate <= 20000) {
		return fmt.Errorf("-overload-rate %v: want 1 to 20000", ov.rate)
	}
	if sp.requests < 1 || sp.requests > 10_000_000 || sp.clients < 1 || sp.clients > 1024 {
		return fmt.Errorf("-stall-requests %d, -stall-clients %d: want 1 to 10000000 and 1 to 1024", sp.requests, sp.clients)
	}
	if err := ds.validate(); err != nil {
		return err
	}
	chosen, err := choose(*only, append(jobs(*duration, *concurrency, tl, ov, sp), discJobs(ds)...))
	if err != nil {
		return err
	}
	if chosen, err = keepStacks(chosen, *onlyStacks); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return runJobs(ctx, chosen, *markdown, out, errOut)
}

// keepStacks narrows each job to the stacks named in list (comma-separated;
// "" keeps them all). A name no chosen job runs is an error, so that a typo
// does not pass for an empty run.
func keepStacks(chosen []job, list string) ([]job, error) {
	if list == "" {
		return chosen, nil
	}
	want := map[string]bool{}
	for n := range strings.SplitSeq(list, ",") {
		want[strings.TrimSpace(n)] = true
	}
	used := map[string]bool{}
	var kept []job
	for _, j := range chosen {
		all := j.stacks
		if all == nil {
			all = []string{"bare", "proxykit"}
		}
		var stacks []string
		for _, s := range all {
			if want[s] {
				stacks = append(stacks, s)
				used[s] = true
			}
		}
		if stacks != nil {
			j.stacks = stacks
			kept = append(kept, j)
		}
	}
	for n := range want {
		if !used[n] {
			return nil, fmt.Errorf("-stacks: no chosen scenario runs stack %q", n)
		}
	}
	return kept, nil
}

// jobs lists every scenario, fault scenarios first.
func jobs(d time.Duration, conc int, tl timeline, ov overloadSpec, sp stallSpec) []job {
	var all []job
	for _, sc := range scenarios {
		j := job{name: sc.name, stacks: sc.stacks, length: max(d, sc.minDuration), check: sc.check,
			one: func(ctx context.Context, stack string) (loadgen.Row, error) {
				return runOne(ctx, sc, stack, d, conc)
			}}
		all = append(all, j)
	}
	for _, sc := range restartScenarios {
		all = append(all, job{name: sc.name, length: sc.length(tl),
			one: func(ctx context.Context, stack string) (loadgen.Row, error) { return sc.run(ctx, stack, tl) },
			check: func(kit, _ loadgen.Row) string {
				if kit.Figures == nil {
					return ""
				}
				return sc.check(kit)
			}})
	}
	all = append(all, evidenceJobs()...)
	all = append(all, job{name: "overload", stacks: overloadStacks, length: ov.length,
		one:   func(ctx context.Context, stack string) (loadgen.Row, error) { return runOverload(ctx, stack, ov) },
		check: func(kit, _ loadgen.Row) string { return checkOverload(kit) }})
	all = append(all, stallJobs(sp)...)
	return append(all, healthyJobs(tl.seed)...)
}

// choose picks the jobs named in list: names, "all", "faults" (the fault
// scenarios), "restart" (the four restart scenarios) or "hedging" (stall and
// nostall), comma-separated, in table order. The overload scenario is in
// no group.
func choose(list string, all []job) ([]job, error) {
	restart := map[string]bool{}
	for _, sc := range restartScenarios {
		restart[sc.name] = true
	}
	hedging := map[string]bool{"stall": true, "stall5": true, "nostall": true}
	evidence := map[string]bool{"slowupload": true, "conncap": true}
	disc := map[string]bool{}
	for _, sc := range discScenarios {
		disc[sc.name] = true
	}
	want := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, j := range all {
			if name == "all" || name == j.name || (name == "restart" && restart[j.name]) ||
				(name == "hedging" && hedging[j.name]) || (name == "evidence" && evidence[j.name]) ||
				(name == "healthy" && healthyNames[j.name]) || (name == "discovery" && disc[j.name]) ||
				(name == "faults" && !restart[j.name] && !hedging[j.name] && !evidence[j.name] &&
					!healthyNames[j.name] && !disc[j.name] && j.name != "overload") {
				want[j.name], found = true, true
			}
		}
		if !found {
			names := make([]string, len(all))
			for i, j := range all {
				names[i] = j.name
			}
			return nil, fmt.Errorf("unknown -scenario %q: want all, faults, restart, hedging, evidence, healthy, discovery or %s", name, strings.Join(names, ", "))
		}
	}
	var chosen []job
	for _, j := range all {
		if want[j.name] {
			chosen = append(chosen, j)
		}
	}
	return chosen, nil
}

// runJobs runs each job through each of its stacks and prints the table,
// then the targets proxykit missed.
func runJobs(ctx context.Context, chosen []job, markdown bool, out, errOut io.Writer) error {
	var rows []loadgen.Row
	var notes []string
	for _, j := range chosen {
		stacks := j.stacks
		if stacks == nil {
			stacks = []string{"bare", "proxykit"}
		}
		byStack := map[string]loadgen.Row{}
		for _, st := range stacks {
			if j.count > 0 {
				fmt.Fprintf(errOut, "running %s through %s for %d requests…\n", j.name, st, j.count)
			} else {
				fmt.Fprintf(errOut, "running %s through %s for %v…\n", j.name, st, j.length)
			}
			row, err := j.one(ctx, st)
			if err != nil {
				return fmt.Errorf("%s/%s: %w", j.name, st, err)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rows = append(rows, row)
			byStack[st] = row
		}
		if _, ran := byStack["proxykit"]; ran && j.check != nil { // its targets are proxykit's
			if miss := j.check(byStack["proxykit"], byStack["bare"]); miss != "" {
				notes = append(notes, j.name+": "+miss)
			}
		}
	}
	if markdown {
		loadgen.PrintMarkdown(out, rows)
	} else {
		loadgen.PrintTable(out, rows)
	}
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	return nil
}

// runOne runs one scenario through one stack on fresh upstreams.
func runOne(ctx context.Context, sc scenario, stackName string, d time.Duration, conc int) (loadgen.Row, error) {
	var ledger loadgen.Ledger
	ups := make([]*gatewaytest.Server, 3)
	targets := make([]*url.URL, 3)
	for i := range ups {
		ups[i] = gatewaytest.NewHealthy(nil)
		ups[i].OnRequest = ledger.Observe
		defer ups[i].Close()
		targets[i], _ = url.Parse(ups[i].URL)
	}
	if sc.setup != nil {
		if err := sc.setup(ups); err != nil {
			return loadgen.Row{}, err
		}
	}

	handler, cleanup, err := build(stackName, targets, sc.tryLimit)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer cleanup()
	front, stop, err := serveOn(handler)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()

	d = max(d, sc.minDuration)
	if sc.recover != nil {
		t := time.AfterFunc(sc.recoverAt, func() { sc.recover(ups) })
		defer t.Stop()
	}
	res := loadgen.Run(ctx, front+"/", loadgen.Options{
		Concurrency: conc, Duration: d, PostRatio: sc.post, Timeout: 10 * time.Second,
	})
	return loadgen.Row{Scenario: sc.name, Stack: stackName, Result: res,
		Upstream: ledger.Total(), Duplicates: ledger.Duplicates()}, nil
}

// serveOn serves h on a new loopback listener and returns its base URL.
func serveOn(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// build returns the handler for a stack: the naive proxy most code runs,
// a bare ReverseProxy on a tuned transport, or proxykit's full stack.
func build(name string, targets []*url.URL, tryTimeout time.Duration) (http.Handler, func(), error) {
	h, cleanup, _, err := buildStack(name, targets, tryTimeout)
	return h, cleanup, err
}

// buildStack is build, with proxykit's Stack for the proxykit stacks (nil
// for the others): proxykit with its defaults, kit-nolimit without its
// per-host limiter, kit-nohedge without hedging.
func buildStack(name string, targets []*url.URL, tryTimeout time.Duration) (http.Handler, func(), *proxykit.Stack, error) {
	quiet := log.New(io.Discard, "", 0)
	switch name {
	case "naive":
		// What most services write: one host, http.DefaultTransport (2 idle
		// connections per host). It sends everything to the first upstream.
		p := httputil.NewSingleHostReverseProxy(targets[0])
		p.ErrorLog = quiet
		return p, func() {}, nil, nil
	case "bare":
		var rr atomic.Uint64
		tr := gateway.NewHTTPTransport()
		p := &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(targets[rr.Add(1)%uint64(len(targets))]) },
			Transport:  tr,
			ErrorLog:   quiet,
			BufferPool: gateway.NewBufferPool(0, 0),
		}
		return p, tr.CloseIdleConnections, nil, nil
	case "proxykit", "kit-nolimit", "kit-nohedge":
		ro := retry.Options{PerTryTimeout: tryTimeout}
		if name == "kit-nohedge" {
			ro.Hedges = -1
		}
		st, err := proxykit.New(proxykit.Config{
			Upstreams: targets,
			Retry:     ro,
			Logger:    slog.New(slog.DiscardHandler),
			NoLimiter: name == "kit-nolimit",
		})
		if err != nil {
			return nil, nil, nil, err
		}
		return st.Handler, st.Close, st, nil
	}
	return nil, nil, nil, fmt.Errorf("unknown stack %q", name)
}
