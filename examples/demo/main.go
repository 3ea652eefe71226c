// Command demo shows proxykit in one command, on loopback only:
//
//	go run ./examples/demo
//
// It starts three embedded upstreams — one healthy, one flaky (resetting a
// share of requests after reading them), one hard down (nothing listens) — and the full
// stack in front of them. It first runs a short tour: the same requests
// through a bare httputil.ReverseProxy and through proxykit, side by side.
// Then it prints what to try and serves until Ctrl-C.
//
// Flags:
//
//	-listen ADDR        the proxy (default 127.0.0.1:8080)
//	-admin ADDR         the status view (default 127.0.0.1:8081)
//	-tour=false         skip the tour
//	-exit-after-tour    exit after the tour instead of serving
//	-requests N         requests per stack in the tour (default 300)
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
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
	"github.com/proxykit/proxykit/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
}

// flakyShare is the share of requests the flaky upstream resets after
// reading them: too late to retry a POST safely.
const flakyShare = 0.2

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen := fs.String("listen", "127.0.0.1:8080", "address of the proxy")
	admin := fs.String("admin", "127.0.0.1:8081", "address of the status view")
	tour := fs.Bool("tour", true, "run the side-by-side tour first")
	exitAfter := fs.Bool("exit-after-tour", false, "exit after the tour")
	requests := fs.Int("requests", 300, "requests per stack in the tour")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fs.PrintDefaults()
			return nil
		}
		return err
	}
	if *requests < 1 {
		return fmt.Errorf("-requests %d: want at least 1", *requests)
	}
	// The demo's pages show operator hints (upstream addresses, error
	// classes), and its status view is open: loopback only.
	for _, a := range []struct{ flag, addr string }{{"-listen", *listen}, {"-admin", *admin}} {
		if !status.IsLoopback(a.addr) {
			return fmt.Errorf("%s %s: the demo shows operator details and serves only on loopback (127.0.0.1, ::1, localhost)", a.flag, a.addr)
		}
	}

	// The upstreams, each answering with its name.
	healthy := upstream("healthy")
	defer healthy.Close()
	flaky := upstream("flaky")
	defer flaky.Close()
	if err := flaky.SetFlaky(gatewaytest.ResetAfterRequest, flakyShare); err != nil {
		return err
	}
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	targets := []*url.URL{mustURL(healthy.URL), mustURL(flaky.URL), mustURL(down.URL)}

	// Logs: warnings only, so that the tour's output stays readable.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	var trips atomic.Int64
	pages := errorpage.Options{
		Brand: errorpage.Brand{Name: "proxykit demo"},
		Debug: true, // loopback only: show the operator hints on the page
	}
	st, err := proxykit.New(proxykit.Config{
		Upstreams: targets,
		Pages:     pages,
		Logger:    logger,
		Retry:     retry.Options{PerTryTimeout: 2 * time.Second},
		Breaker: breaker.Settings{OnStateChange: func(_, _ string, _, to breaker.State) {
			if to == breaker.StateOpen {
				trips.Add(1)
			}
		}},
	})
	if err != nil {
		return err
	}
	defer st.Close()
	// A route whose only upstream is down, to show the error page.
	broken, err := proxykit.New(proxykit.Config{
		Upstreams: []*url.URL{mustURL(down.URL)}, Pages: pages, Logger: logger,
	})
	if err != nil {
		return err
	}
	defer broken.Close()
	mux := http.NewServeMux()
	mux.Handle("/", st.Handler)
	mux.Handle("/down/", broken.Handler)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	aln, err := net.Listen("tcp", *admin)
	if err != nil {
		ln.Close()
		return fmt.Errorf("admin: %w", err)
	}
	quiet := log.New(io.Discard, "", 0)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet}
	asrv := &http.Server{Handler: status.ReadOnly(st.Status, *admin), ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet}
	go func() { _ = srv.Serve(ln) }()
	go func() { _ = asrv.Serve(aln) }()
	defer asrv.Close()
	defer srv.Close()

	if *tour {
		if err := runTour(ctx, out, targets, "http://"+ln.Addr().String()+"/", *requests, st, &trips); err != nil {
			return err
		}
	}
	if *exitAfter {
		return nil
	}
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, `
proxykit is serving on %[1]s (status view: http://%[2]s)
  upstreams: healthy %[3]s · flaky %[4]s (resets %[5]d%% of requests) · down %[6]s

Try:
  curl -i %[1]s/                                    # always answered, though 1 of 3 upstreams is down
  curl -i %[1]s/down/                               # a route whose only upstream is down: RFC 9457 problem+json
  curl -i -H 'Accept: text/plain' %[1]s/down/       # the same failure as plain text
  curl -s http://%[2]s/ | head -30                  # the status view as JSON
Open in a browser:
  %[1]s/down/                                       # the error page (debug on: operator hints shown)
  http://%[2]s/                                     # the status view

Ctrl-C to stop.
`, base, aln.Addr(), healthy.Addr, flaky.Addr, int(flakyShare*100), down.Addr)
	<-ctx.Done()
	fmt.Fprintln(out, "\nstopping")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// runTour sends the same requests through a bare ReverseProxy and through
// proxykit and prints the two results side by side.
func runTour(ctx context.Context, out io.Writer, targets []*url.URL, proxykitURL string, n int, st *proxykit.Stack, trips *atomic.Int64) error {
	// The bare proxy: stock ReverseProxy, round robin over the same three
	// upstreams, on the same tuned transport. What most setups run.
	var rr atomic.Uint64
	bareTransport := gateway.NewHTTPTransport()
	defer bareTransport.CloseIdleConnections()
	bare := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(targets[rr.Add(1)%uint64(len(targets))])
		},
		Transport: bareTransport,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	bsrv := &http.Server{Handler: bare, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = bsrv.Serve(bln) }()
	defer bsrv.Close()

	fmt.Fprintf(out, "Tour: %d requests (GET, and 20%% POST) through each stack, 8 at a time,\n", n)
	fmt.Fprintf(out, "to 3 upstreams: one healthy, one resetting %d%% of requests after reading them, one down.\n\n", int(flakyShare*100))
	opts := loadgen.Options{Concurrency: 8, MaxRequests: n, Duration: 6 * time.Second, PostRatio: 0.2, Timeout: 5 * time.Second}
	results := make([]loadgen.Result, 2)
	for i, s := range []struct{ name, url string }{{"bare ReverseProxy", "http://" + bln.Addr().String() + "/"}, {"proxykit", proxykitURL}} {
		o := opts
		o.Progress = func(done int) { fmt.Fprintf(out, "\r  %-18s %4d/%d", s.name, done, n) }
		results[i] = loadgen.Run(ctx, s.url, o)
		fmt.Fprintf(out, "\r  %-18s %4d/%d done\n", s.name, results[i].Requests, n)
		if ctx.Err() != nil {
			return nil
		}
	}
	retries := st.Monitor.Snapshot().Retries
	rested := 0
	for _, u := range st.Pool.Status() {
		if u.Failures > 0 {
			rested++
		}
	}
	b, p := results[0], results[1]
	fmt.Fprintln(out)
	fmt.Fprintf(out, "  %-22s %-26s %s\n", "", "bare ReverseProxy", "proxykit")
	row := func(label, a, b string) { fmt.Fprintf(out, "  %-22s %-26s %s\n", label, a, b) }
	row("success", fmt.Sprintf("%.1f%%", b.SuccessRate()), fmt.Sprintf("%.1f%%", p.SuccessRate()))
	row("latency p50 / p99", latency(b), latency(p))
	row("failures by class", classes(b), classes(p))
	row("retries spent", "-", fmt.Sprint(retries))
	row("breaker trips", "-", fmt.Sprint(trips.Load()))
	row("upstreams rested", "-", fmt.Sprint(rested))
	fmt.Fprintln(out)
	fmt.Fprintln(out, "  The bare proxy sends every third request to the dead upstream and answers an opaque 502.")
	fmt.Fprintln(out, "  proxykit retried what was safe to retry (a refused connection sent nothing, so even a POST")
	fmt.Fprintln(out, "  is safe), rested upstreams after a failure so that POSTs, which cannot be retried once")
	fmt.Fprintln(out, "  read, stop landing on them, and classified whatever still failed.")
	return nil
}

func latency(r loadgen.Result) string {
	return fmt.Sprintf("%v / %v", r.Percentile(50).Round(10*time.Microsecond), r.Percentile(99).Round(10*time.Microsecond))
}

func classes(r loadgen.Result) string {
	if len(r.Failures) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range r.Failures {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func upstream(name string) *gatewaytest.Server {
	return gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "hello from the %s upstream\n", name)
	}))
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
