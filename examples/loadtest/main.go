// Command loadtest drives concurrent load, on loopback only, through a bare
// httputil.ReverseProxy and through proxykit's full stack, over upstreams
// that fail in chosen ways, and prints one table:
//
//	go run ./examples/loadtest                      # every scenario, 3 s each
//	go run ./examples/loadtest -scenario reset20 -duration 10s -concurrency 32
//	go run ./examples/loadtest -markdown            # the table for BENCHMARKS.md
//
// Scenarios (3 upstreams each, fresh for every run):
//
//	happy      all healthy; also the naive proxy (NewSingleHostReverseProxy
//	           on http.DefaultTransport) for comparison
//	refuse1    1 of 3 refuses connections
//	reset20    1 of 3 resets 20% of requests after reading them (half POSTs:
//	           a POST delivered twice would show in the dup column)
//	slow1      1 of 3 answers after 1 s; proxykit has a 250 ms per-try timeout
//	outage     all refuse for 2 s, then recover; runs at least 16 s, so
//	           that the breakers' 10 s open period ends within the run
//	outage503  all answer 503 (retry budget: upstream requests per request)
//
// Columns: requests sent, success (2xx/3xx), latency, upstream requests
// read per client request, POSTs an upstream read twice, failures by class
// (problem+json "class", or the status for a bare proxy).
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
	{name: "happy", post: 0.2, stacks: []string{"naive", "bare", "proxykit"}},
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

func run(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	duration := fs.Duration("duration", 3*time.Second, "duration of each run")
	concurrency := fs.Int("concurrency", 16, "concurrent clients")
	only := fs.String("scenario", "all", "scenario to run, or all")
	markdown := fs.Bool("markdown", false, "print a Markdown table")
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
	var chosen []scenario
	for _, s := range scenarios {
		if *only == "all" || *only == s.name {
			chosen = append(chosen, s)
		}
	}
	if len(chosen) == 0 {
		names := make([]string, len(scenarios))
		for i, s := range scenarios {
			names[i] = s.name
		}
		return fmt.Errorf("unknown -scenario %q: want all or one of %s", *only, strings.Join(names, ", "))
	}

	var rows []loadgen.Row
	var notes []string
	for _, sc := range chosen {
		stacks := sc.stacks
		if stacks == nil {
			stacks = []string{"bare", "proxykit"}
		}
		byStack := map[string]loadgen.Row{}
		for _, st := range stacks {
			fmt.Fprintf(errOut, "running %s through %s for %v…\n", sc.name, st, *duration)
			row, err := runOne(ctx, sc, st, *duration, *concurrency)
			if err != nil {
				return fmt.Errorf("%s/%s: %w", sc.name, st, err)
			}
			rows = append(rows, row)
			byStack[st] = row
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		if sc.check != nil {
			if miss := sc.check(byStack["proxykit"], byStack["bare"]); miss != "" {
				notes = append(notes, sc.name+": "+miss)
			}
		}
	}
	if *markdown {
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return loadgen.Row{}, err
	}
	srv := &http.Server{Handler: handler, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	d = max(d, sc.minDuration)
	if sc.recover != nil {
		t := time.AfterFunc(sc.recoverAt, func() { sc.recover(ups) })
		defer t.Stop()
	}
	res := loadgen.Run(ctx, "http://"+ln.Addr().String()+"/", loadgen.Options{
		Concurrency: conc, Duration: d, PostRatio: sc.post, Timeout: 10 * time.Second,
	})
	return loadgen.Row{Scenario: sc.name, Stack: stackName, Result: res,
		Upstream: ledger.Total(), Duplicates: ledger.Duplicates()}, nil
}

// build returns the handler for a stack: the naive proxy most code runs,
// a bare ReverseProxy on a tuned transport, or proxykit's full stack.
func build(name string, targets []*url.URL, tryTimeout time.Duration) (http.Handler, func(), error) {
	quiet := log.New(io.Discard, "", 0)
	switch name {
	case "naive":
		// What most services write: one host, http.DefaultTransport (2 idle
		// connections per host). It sends everything to the first upstream.
		p := httputil.NewSingleHostReverseProxy(targets[0])
		p.ErrorLog = quiet
		return p, func() {}, nil
	case "bare":
		var rr atomic.Uint64
		tr := gateway.NewHTTPTransport()
		p := &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(targets[rr.Add(1)%uint64(len(targets))]) },
			Transport:  tr,
			ErrorLog:   quiet,
			BufferPool: gateway.NewBufferPool(0, 0),
		}
		return p, tr.CloseIdleConnections, nil
	case "proxykit":
		st, err := proxykit.New(proxykit.Config{
			Upstreams: targets,
			Retry:     retry.Options{PerTryTimeout: tryTimeout},
			Logger:    slog.New(slog.DiscardHandler),
		})
		if err != nil {
			return nil, nil, err
		}
		return st.Handler, st.Close, nil
	}
	return nil, nil, fmt.Errorf("unknown stack %q", name)
}
