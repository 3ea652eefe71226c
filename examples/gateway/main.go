// Command gateway is a small, real reverse proxy built from proxykit's
// public API with the recommended stack and the packages' defaults:
//
//	client body timeout → request ID → monitor → errorpage → maintenance
//	  → retry (+ hedges) → ReverseProxy (pool balancer, per-host
//	  concurrency limits, per-host health, instrumented tuned transport)
//
// The wiring is proxykit.New with the packages' defaults; the listeners are
// safe by default (proxykit.NewServer; the admin listener is read-only,
// answers only to its own Host names and warns when not on loopback).
// With -metrics or -otlp the stack records OpenTelemetry metrics and
// traces (package telemetry): -metrics serves them on the admin listener
// at /metrics in the Prometheus text format, -otlp sends them to an OTLP
// collector.
//
//	go run ./examples/gateway -upstream http://127.0.0.1:9001 -upstream http://127.0.0.1:9002 -admin 127.0.0.1:8081 -metrics
//
// Flags:
//
//	-listen ADDR       address to serve on (default 127.0.0.1:8080)
//	-upstream URL      an upstream base URL; repeat for a pool (at least one).
//	                   A name DNS resolves, each address a host, re-resolved
//	                   every -dns-refresh: dns+http://NAME:PORT (A/AAAA) or
//	                   srv+http://_SERVICE._tcp.NAME (SRV); dns+https and
//	                   srv+https alike
//	-resolver ADDR     the DNS server for those, e.g. 127.0.0.1:5353
//	                   (default: the system's)
//	-dns-refresh D     how often they are resolved again (default 5s)
//	-admin ADDR        serve the status view on ADDR (default: off)
//	-metrics           serve /metrics (Prometheus text format) on -admin
//	-otlp URL          export traces and metrics over OTLP/HTTP to the
//	                   collector at URL, e.g. http://127.0.0.1:4318
//	                   (sampling: OTEL_TRACES_SAMPLER, default parent-based
//	                   always-on; service name: OTEL_SERVICE_NAME, default
//	                   proxykit-gateway)
//	-debug             show operator hints on error pages (never in public)
//	-attempts N        attempts per request, retries included (default 3)
//	-try-timeout D     timeout per attempt, e.g. 2s (default: none)
//	-brand NAME        the name on error pages
//	-log-json          log JSON lines instead of text
//	-hide-upstream-5xx replace upstreams' own 502/503/504 bodies with the
//	                   error page (by default they pass through: API error
//	                   bodies matter, but they may carry internal details)
//	-hedge=false       do not hedge stalled GET/HEAD/OPTIONS requests
//	-no-limiter        turn off the per-upstream adaptive concurrency limits
//	-admin-token T     enable the admin operations under /admin/ on -admin
//	                   (drain an upstream, planned maintenance), each
//	                   request carrying "Authorization: Bearer T"; default
//	                   $PROXYKIT_ADMIN_TOKEN; off without a token
//
// It prints "listening on http://ADDR" once it accepts connections, and on
// SIGINT or SIGTERM stops accepting, drains in-flight requests (up to 10 s)
// and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
	"github.com/proxykit/proxykit/status"
)

// drainTimeout bounds graceful shutdown.
const drainTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(2)
	}
}

// urlList is a repeatable -upstream flag.
type urlList []*url.URL

func (l *urlList) String() string {
	s := make([]string, len(*l))
	for i, u := range *l {
		s[i] = u.String()
	}
	return strings.Join(s, ",")
}

func (l *urlList) Set(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("bad URL %q: %w", v, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https" && !pool.IsDiscoveryURL(u)) || u.Host == "" {
		return fmt.Errorf("bad URL %q: want http://, https://, dns+http:// or srv+http:// with a host", v)
	}
	*l = append(*l, u)
	return nil
}

// run is the whole program; main only supplies the signal context.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by main
	var (
		upstreams  urlList
		listen     = fs.String("listen", "127.0.0.1:8080", "address to serve on")
		admin      = fs.String("admin", "", "address for the status view (default: off)")
		metrics    = fs.Bool("metrics", false, "serve /metrics (Prometheus text format) on the -admin listener")
		otlp       = fs.String("otlp", "", "export traces and metrics over OTLP/HTTP to this collector URL, e.g. http://127.0.0.1:4318")
		debug      = fs.Bool("debug", false, "show operator hints on error pages")
		attempts   = fs.Int("attempts", 3, "attempts per request, retries included")
		tryTimeout = fs.Duration("try-timeout", 0, "timeout per attempt (0: none)")
		brand      = fs.String("brand", "", "the name on error pages")
		logJSON    = fs.Bool("log-json", false, "log JSON lines")

		hideUpstream5xx = fs.Bool("hide-upstream-5xx", false, "replace the bodies of upstreams' own 502/503/504 with the error page (they may carry internal details)")
		hedge           = fs.Bool("hedge", true, "hedge GET, HEAD and OPTIONS requests stalled past the usual latency (another copy to another upstream; bounded by the retry budget)")
		noLimiter       = fs.Bool("no-limiter", false, "turn off the per-upstream adaptive concurrency limits")
		resolver        = fs.String("resolver", "", "DNS server (host:port) for dns+ and srv+ upstreams, e.g. 127.0.0.1:5353 (default: the system's)")
		dnsRefresh      = fs.Duration("dns-refresh", pool.DefaultDNSRefresh, "how often dns+ and srv+ upstreams are resolved again")
		adminToken      = fs.String("admin-token", os.Getenv("PROXYKIT_ADMIN_TOKEN"), "bearer token for the admin operations (drain, maintenance) under /admin/ on -admin; default $PROXYKIT_ADMIN_TOKEN; without one they are off")
	)
	fs.Var(&upstreams, "upstream", "upstream base URL (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if len(upstreams) == 0 {
		return errors.New("at least one -upstream URL is required")
	}
	if *attempts < 1 {
		return fmt.Errorf("-attempts %d: want at least 1", *attempts)
	}
	if *tryTimeout < 0 {
		return fmt.Errorf("-try-timeout %v: want a positive duration", *tryTimeout)
	}
	if *metrics && *admin == "" {
		return errors.New("-metrics serves /metrics on the admin listener: set -admin too")
	}
	if *otlp != "" {
		if u, err := url.Parse(*otlp); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-otlp %q: want an http:// or https:// collector URL", *otlp)
		}
	}

	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if *logJSON {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	logger := slog.New(handler)

	upstreamMode := errorpage.UpstreamPass
	if *hideUpstream5xx {
		upstreamMode = errorpage.UpstreamReplace
	}
	ro := retry.Options{Attempts: *attempts, PerTryTimeout: *tryTimeout}
	if !*hedge {
		ro.Hedges = -1 // proxykit.New hedges by default
	}
	cfg := proxykit.Config{
		Upstreams: upstreams,
		Discovery: pool.DNSOptions{Resolver: *resolver, Refresh: *dnsRefresh},
		NoLimiter: *noLimiter,
		Retry:     ro,
		Pages: errorpage.Options{
			Brand:       errorpage.Brand{Name: *brand},
			Debug:       *debug,
			Upstream5xx: upstreamMode,
		},
		Logger: logger,
	}
	var (
		st  *proxykit.Stack
		obs *observability
		err error
	)
	if *metrics || *otlp != "" {
		if obs, err = newObservability(ctx, *metrics, *otlp); err != nil {
			return err
		}
		defer obs.shutdown(logger)
		st, err = obs.tel.NewStack(cfg)
	} else {
		st, err = proxykit.New(cfg)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	if *debug && !status.IsLoopback(*listen) {
		logger.Warn("-debug shows operator hints (upstream addresses, error classes) to every client of a non-loopback listener", "listen", *listen)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := proxykit.NewServer(st, logger)
	servers := []*http.Server{srv}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()

	if *admin != "" {
		aln, err := net.Listen("tcp", *admin)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("admin: %w", err)
		}
		if !status.IsLoopback(*admin) {
			logger.Warn("the admin listener is not on loopback: it shows upstream addresses to whoever reaches it; bind it to 127.0.0.1 or a private interface", "admin", *admin)
		}
		var readOnly http.Handler = st.Status
		if obs != nil && obs.metrics != nil {
			mux := http.NewServeMux()
			mux.Handle("/metrics", obs.metrics)
			mux.Handle("/", st.Status)
			readOnly = mux
		}
		names := []string{*admin, aln.Addr().String()}
		adminHandler := status.ReadOnly(readOnly, names...)
		if *adminToken != "" {
			ops, err := admission.NewAdmin(admission.AdminOptions{Token: *adminToken,
				Limiter: st.Limiter, Maintenance: st.Maintenance, Logger: logger})
			if err != nil {
				_ = srv.Close()
				return fmt.Errorf("-admin-token: %w", err)
			}
			mux := http.NewServeMux()
			mux.Handle("/admin/", status.SameHost(ops, names...)) // changes: token, own Host only
			mux.Handle("/", adminHandler)                         // views: read-only
			adminHandler = mux
		} else {
			logger.Info("admin operations (drain, maintenance) are off: set -admin-token or PROXYKIT_ADMIN_TOKEN to enable them under /admin/")
		}
		asrv := &http.Server{
			Handler:           adminHandler,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second, // a drain's wait (up to 10m) extends its own
			IdleTimeout:       time.Minute,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(handler, slog.LevelWarn),
		}
		servers = append(servers, asrv)
		go func() { errc <- asrv.Serve(aln) }()
		fmt.Fprintf(stdout, "status view on http://%s\n", aln.Addr())
		if *adminToken != "" {
			fmt.Fprintf(stdout, "admin operations on http://%s/admin/ (Authorization: Bearer …)\n", aln.Addr())
		}
		if obs != nil && obs.metrics != nil {
			fmt.Fprintf(stdout, "metrics on http://%s/metrics\n", aln.Addr())
		}
	}
	fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr())
	logger.Info("gateway started", "listen", ln.Addr().String(), "upstreams", upstreams.String())

	select {
	case err := <-errc:
		for _, s := range servers {
			_ = s.Close()
		}
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down: draining in-flight requests", "timeout", drainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	var shutdownErr error
	for _, s := range servers {
		if err := s.Shutdown(sctx); err != nil {
			shutdownErr = errors.Join(shutdownErr, err)
		}
	}
	return shutdownErr
}
