// Package proxykit builds the recommended stack of its sub-packages in one
// call: a reverse proxy that survives its upstreams.
//
//	st, err := proxykit.New(proxykit.Config{Upstreams: targets})
//	if err != nil { … }
//	defer st.Close()
//	http.ListenAndServe(":8080", st)          // the public listener
//	http.ListenAndServe("127.0.0.1:8081", st.Status) // the admin listener
//
// Outermost first, the stack is:
//
//	gateway.ClientBodyTimeout  a stalled request body is the client's 408
//	gateway.RequestID     keep or mint X-Request-ID, forward it upstream
//	status.Monitor        count outcomes, log the one line per failed request
//	errorpage             render the final failure: HTML, problem+json, text
//	maintenance           while switched on (Stack.Maintenance), answer 503
//	                      "planned maintenance" without reaching an upstream
//	retry                 re-run the proxy on a safe, retryable failure
//	httputil.ReverseProxy Rewrite: the pool's balancer (skips tried and
//	                      out hosts, passes over resting and warming ones)
//	  pool's Transport    observes latency and failures per host
//	  limiter per host    adaptive concurrency limit: queue briefly or shed
//	                      (overloaded, 503) once the host falls behind
//	  breaker per host    the host-health model: fast-fails an out host
//	                      without touching it, probes it back
//	  gateway.Transport   classifies errors, measures "sent"
//	  base transport      gateway.NewHTTPTransport, or the user's
//
// errorpage sits outside retry so that it renders only the final outcome;
// retry sits outside the breakers so that an open host sends the next
// attempt elsewhere; the breakers sit nearest the upstream so that they see
// every attempt. docs/ARCHITECTURE.md describes the request's path and the
// protocol between the layers.
//
// Every layer is also usable alone: New only wires the packages' public
// API, and the README shows the same stack wired by hand.
package proxykit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
	"github.com/proxykit/proxykit/status"
)

// Config configures the stack. The zero value of every field takes the
// default of the package it configures; only Upstreams (or a Proxy that
// routes by itself) is required.
type Config struct {
	// Upstreams are the pool's targets: absolute http or https URLs with
	// distinct hosts, optionally with a path prefix. With none, Proxy must
	// route by itself (its Rewrite or Director) and no pool is built.
	//
	// An upstream may also be a name that DNS resolves, re-resolved every
	// Discovery.Refresh (see [pool.DNSSource]): dns+http://name:port
	// (each A and AAAA address a host) or srv+http://_service._proto.name
	// (each SRV record's addresses, at its port), dns+https and srv+https
	// alike. Each address is a host of its own in the health model, the
	// balancer, the limiter and the status view. New waits up to
	// Discovery.Timeout for the first answers; a name that does not
	// resolve then joins the pool when it does.
	Upstreams []*url.URL
	// Discovery configures the resolution of the discovery upstreams:
	// the DNS server (default the system's), the refresh interval
	// (default 5 s), the maximum staleness of the last good answer while
	// DNS fails (default none: kept until DNS answers). Its Logger, when
	// nil, is Logger.
	Discovery pool.DNSOptions

	// Proxy is an existing ReverseProxy to wrap. Nil means a new one. New
	// works on a copy (Stack.Proxy) and leaves Proxy as it is, so the same
	// ReverseProxy may be given to several stacks or served on its own.
	// Its Rewrite or Director keeps running, in its own mode, before the
	// pool routes (see [pool.Pool.Attach]: the pool chooses where to
	// connect, the Host header stays as the hook left it); its
	// BufferPool, FlushInterval and ErrorLog are kept; its ModifyResponse
	// too, its errors classified [gateway.ClassResponseRejected] (see
	// [gateway.WrapModifyResponse]); its Transport becomes the base
	// transport unless Transport is set. An ErrorLog of its own receives,
	// beside Logger, the one line per failed request at info level and
	// above. New rejects a Proxy that ReverseProxy would refuse at every
	// request (both Rewrite and Director set), and one with an
	// ErrorHandler of its own, which would cut the failure hand-off
	// between the layers (see [gateway.NewErrorHandler]). An X-Real-IP
	// header from the client is removed before a Rewrite runs, as
	// ReverseProxy removes X-Forwarded-For and Forwarded (the Rewrite may
	// set it again, e.g. from pr.In.RemoteAddr); with a Director, all
	// three pass as ReverseProxy passes them.
	Proxy *httputil.ReverseProxy

	// Transport is the base transport that reaches the network. Nil means
	// Proxy's Transport, or else a new [gateway.NewHTTPTransport].
	Transport http.RoundTripper

	// Policy is the pool's balancer: pool.PeakEWMA (default) or
	// pool.RoundRobin.
	Policy pool.Policy
	// Breaker configures the per-host circuit breakers and the host-health
	// model (Breaker.Health: probing, resting — the passive health of the
	// pool's hosts — slow start, the rule for an upstream's own failure answers,
	// and an optional HTTP health check, Breaker.Health.Check; see
	// [breaker.HostHealth]). Its Logger, when nil, is Logger.
	Breaker breaker.Settings
	// Retry configures the retry layer. Its Logger, when nil, is Logger;
	// its OnRetry hook, when set, runs after the Monitor has counted the
	// retry.
	//
	// Hedging is on in the stack, unlike in the retry package's zero
	// value: Retry.Hedges 0 means 1 when there are two Upstreams or more,
	// so that a GET, HEAD or OPTIONS request stalled past the hedge delay
	// gets a copy on another upstream (see [retry.Options.Hedges]). Its
	// cost is bounded by the retry budget, which hedges share. Set
	// Retry.Hedges negative to turn hedging off.
	Retry retry.Options
	// Pages configures the error pages. Its Logger, when nil, is Logger.
	Pages errorpage.Options

	// Limiter configures the adaptive concurrency limit of each upstream
	// host (package admission), on by default: it enforces nothing until
	// a host falls behind its traffic (its requests in flight keep growing
	// while its answers stay flat), then holds the host to what it can
	// serve, queueing the excess briefly and shedding the rest (503,
	// class overloaded) or sending it to a host with headroom. Its
	// Logger, when nil, is Logger.
	Limiter admission.Settings
	// NoLimiter turns the per-host concurrency limits off (Stack.Limiter
	// is nil then, and upstreams cannot be drained).
	NoLimiter bool
	// MaintenanceAllow, if set, lets requests through while maintenance
	// is on (Stack.Maintenance): operators' addresses, health checks.
	MaintenanceAllow func(*http.Request) bool

	// RequestTimeout, if positive, bounds each request as a whole: every
	// attempt, the backoff between them, and the response body. When it
	// expires before a response header, the client gets the branded 504
	// (class timeout); a body still streaming is cut. When it expires while
	// the client's request body is still arriving, the client's pace is to
	// blame: 408 (class client_body), never counted against the host. Zero means no bound
	// beyond the transport's response-header timeout, so that long
	// downloads, server-sent events and WebSockets work. Use it rather than
	// http.TimeoutHandler around the stack, which answers its own unbranded
	// 503 while the stack logs a 504.
	RequestTimeout time.Duration

	// ClientBodyTimeout bounds how long a client may leave its request body
	// idle: every read that returns data pushes the deadline forward, so a
	// moving upload is never cut, while a stalled one is ended with 408
	// (class client_body) and releases its upstream connection (see
	// [gateway.ClientBodyTimeout]). Zero means 30 s; negative turns it off.
	ClientBodyTimeout time.Duration

	// OnFailure, if set, is called once per failed request with the final
	// Failure (see [status.Monitor.OnFailure]).
	OnFailure func(r *http.Request, f *gateway.Failure, elapsed time.Duration)
	// OnRequest, if set, is called once per finished request, failed or
	// not (see [status.Monitor.OnRequest]): the hook for request metrics.
	OnRequest func(r *http.Request, status int, f *gateway.Failure, elapsed time.Duration)

	// OnUpstreamChange, if set, is called after each change of the set
	// of upstream hosts (a discovery answer, Stack.SetUpstreams), one at
	// a time, with the hosts added, removed and kept (see
	// [pool.Pool.OnChange]): the hook for metrics of the set. It runs
	// after the Monitor has counted the change
	// ([status.Monitor.ObserveUpstreamChange]); each change is also logged
	// at INFO.
	OnUpstreamChange func(pool.Change)

	// Logger receives every layer's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Stack is a built stack: an http.Handler for the public listener, and the
// handles an operator needs. Its fields are the layers, for inspection;
// configure them through Config.
type Stack struct {
	// Handler is the outermost layer; Stack.ServeHTTP calls it.
	Handler http.Handler
	// Status serves the status view (JSON and HTML). It shows upstream
	// addresses: serve it on an admin listener, never the public one.
	Status *status.View

	Monitor *status.Monitor
	// Pool is the balancer over the upstreams (nil without
	// Config.Upstreams); Pool.Discovery reports its discovery upstreams.
	Pool  *pool.Pool
	Hosts *breaker.Hosts
	// Limiter holds each upstream host to its adaptive concurrency limit
	// and drains hosts (Limiter.Drain); nil with Config.NoLimiter.
	Limiter *admission.Limiter
	// Maintenance switches planned maintenance of the whole service on
	// and off (Maintenance.Start, Stop).
	Maintenance *admission.Maintenance
	Retry       *retry.Retry
	Pages       *errorpage.Handler
	// Proxy is the stack's own ReverseProxy: a copy of Config.Proxy (or a
	// new one) wired to the layers. It is already used by this stack:
	// give another New the ReverseProxy you built, not this one.
	Proxy *httputil.ReverseProxy

	base      http.RoundTripper
	discovery *discovery
}

// ServeHTTP implements http.Handler.
func (s *Stack) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.Handler.ServeHTTP(w, r) }

// Close stops following DNS, stops the host-health probes and releases
// the base transport's idle connections. The stack keeps serving its last
// set of upstreams; Close is for shutdown.
func (s *Stack) Close() {
	s.discovery.stop()
	s.Hosts.Close()
	if c, ok := s.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// ErrOwnErrorHandler is returned by [New] for a Config.Proxy that has an
// ErrorHandler of its own.
var ErrOwnErrorHandler = errors.New("proxykit: Config.Proxy has an ErrorHandler: it would cut the failure hand-off between the layers; remove it and use Config.OnFailure to observe failures, or Config.Pages to change what clients see " +
	"(a Stack.Proxy is already used by a proxykit stack and has that stack's: give New the ReverseProxy you built, which New leaves unmodified)")

// ErrRewriteAndDirector is returned by [New] for a Config.Proxy with both a
// Rewrite and a Director, which ReverseProxy refuses at every request.
var ErrRewriteAndDirector = errors.New("proxykit: Config.Proxy has both a Rewrite and a Director; ReverseProxy refuses every request of such a proxy: keep one")

// New builds the recommended stack. It fails on an invalid option of any
// layer, on a Config with neither Upstreams nor a routing Proxy, on a
// Proxy with both a Rewrite and a Director ([ErrRewriteAndDirector]) and on
// a Proxy with its own ErrorHandler ([ErrOwnErrorHandler]).
func New(cfg Config) (*Stack, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	proxy := &httputil.ReverseProxy{}
	if cfg.Proxy != nil {
		*proxy = *cfg.Proxy // the user's stays theirs
	}
	if proxy.ErrorHandler != nil {
		return nil, ErrOwnErrorHandler
	}
	if proxy.Rewrite != nil && proxy.Director != nil {
		return nil, ErrRewriteAndDirector
	}
	failureLogger := logger
	if proxy.ErrorLog != nil {
		failureLogger = withErrorLog(logger, proxy.ErrorLog)
	}
	proxy.ModifyResponse = gateway.WrapModifyResponse(proxy.ModifyResponse)
	if cfg.RequestTimeout < 0 {
		return nil, fmt.Errorf("proxykit: RequestTimeout %v is negative", cfg.RequestTimeout)
	}
	if len(cfg.Upstreams) == 0 && proxy.Rewrite == nil && proxy.Director == nil {
		return nil, errors.New("proxykit: Config needs Upstreams, or a Proxy with a Rewrite or Director of its own")
	}
	base := cfg.Transport
	if base == nil {
		base = proxy.Transport
	}
	if base == nil {
		base = gateway.NewHTTPTransport()
	}

	bs := cfg.Breaker
	if bs.Logger == nil {
		bs.Logger = logger
	}
	hosts, err := breaker.PerHost(bs)
	if err != nil {
		return nil, err
	}
	proxy.Transport = hosts.Transport(&gateway.Transport{Base: base})
	var lim *admission.Limiter
	if !cfg.NoLimiter {
		ls := cfg.Limiter
		if ls.Logger == nil {
			ls.Logger = logger
		}
		if lim, err = admission.New(ls); err != nil {
			return nil, err
		}
		// Outside the breakers: a shed request never reaches one.
		proxy.Transport = lim.Transport(proxy.Transport)
	}
	proxy.ErrorHandler = gateway.NewErrorHandler(logger)
	if proxy.BufferPool == nil {
		proxy.BufferPool = gateway.NewBufferPool(0, 0)
	}
	if proxy.ErrorLog == nil {
		proxy.ErrorLog = slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	}
	if proxy.Director == nil {
		// ReverseProxy removes the client's X-Forwarded-For and Forwarded
		// before a Rewrite; X-Real-IP makes the same claim under another
		// name, so it goes with them (the Rewrite may set it).
		rewrite := proxy.Rewrite
		proxy.Rewrite = func(pr *httputil.ProxyRequest) {
			delete(pr.Out.Header, "X-Real-Ip")
			if rewrite != nil {
				rewrite(pr)
			}
		}
	}
	do := cfg.Discovery
	if do.Logger == nil {
		do.Logger = logger
	}
	static, staticAt, sources, err := splitUpstreams(cfg.Upstreams, do)
	if err != nil {
		return nil, err
	}
	monitor := &status.Monitor{Logger: failureLogger, OnFailure: cfg.OnFailure, OnRequest: cfg.OnRequest}
	var p *pool.Pool
	if len(cfg.Upstreams) > 0 {
		if p = pool.Empty(); len(static) > 0 {
			if p, err = pool.New(static...); err != nil {
				var te interface{ Target() int } // which of the pool's targets: name the user's field
				if errors.As(err, &te) {
					return nil, fmt.Errorf("proxykit: Config.Upstreams[%d]: %w", staticAt[te.Target()], errors.Unwrap(err))
				}
				return nil, fmt.Errorf("proxykit: Config.Upstreams: %w", err)
			}
		}
		p.Policy, p.Health, p.Logger, p.OnChange = cfg.Policy, hosts, logger, monitor.ObserveUpstreamChange
		if user := cfg.OnUpstreamChange; user != nil {
			p.OnChange = func(ch pool.Change) {
				monitor.ObserveUpstreamChange(ch)
				user(ch)
			}
		}
		if lim != nil {
			// Draining hosts are skipped, hosts at their limit passed over.
			p.Health = lim.Health(hosts)
			for _, u := range static {
				lim.Watch(u)
			}
		}
		if err := p.Attach(proxy); err != nil {
			return nil, err
		}
	}

	ro := cfg.Retry
	if ro.Logger == nil {
		ro.Logger = logger
	}
	switch {
	case ro.Hedges < 0:
		ro.Hedges = 0
	case ro.Hedges == 0 && (len(cfg.Upstreams) >= 2 || len(sources) > 0) && ro.Attempts != 1: // a hedge is an attempt
		ro.Hedges = 1
	}
	if user := ro.OnRetry; user != nil {
		ro.OnRetry = func(attempt int, f *gateway.Failure, delay time.Duration) {
			monitor.ObserveRetry(attempt, f, delay)
			user(attempt, f, delay)
		}
	} else {
		ro.OnRetry = monitor.ObserveRetry
	}
	if user := ro.OnHedge; user != nil {
		ro.OnHedge = func(e retry.HedgeEvent, attempt int, delay time.Duration) {
			monitor.ObserveHedge(e, attempt, delay)
			user(e, attempt, delay)
		}
	} else {
		ro.OnHedge = monitor.ObserveHedge
	}
	retrying, err := retry.New(ro)
	if err != nil {
		return nil, err
	}
	po := cfg.Pages
	if po.Logger == nil {
		po.Logger = logger
	}
	pages, err := errorpage.New(po)
	if err != nil {
		return nil, err
	}

	var h http.Handler = proxy
	h = retrying.Wrap(h)
	if cfg.RequestTimeout > 0 {
		h = withTimeout(h, cfg.RequestTimeout)
	}
	maint := &admission.Maintenance{Allow: cfg.MaintenanceAllow, Logger: logger}
	h = maint.Wrap(h) // inside the pages, which render it; outside retry: never retried
	h = pages.Wrap(h)
	h = monitor.Wrap(h)
	h = gateway.RequestID(h)
	if cfg.ClientBodyTimeout >= 0 {
		// Outermost: it wraps the body before any layer keeps it, and
		// reaches the connection through every layer's Unwrap.
		h = gateway.ClientBodyTimeout(h, cfg.ClientBodyTimeout)
	}

	view := &status.View{Monitor: monitor, Breakers: hosts.States, Maintenance: maint.State}
	if lim != nil {
		view.Admission = lim.Status
	}
	var disc *discovery
	if p != nil {
		view.Upstreams = p.Status
		if len(sources) > 0 {
			view.Discovery = p.Discovery
			wait := do.Timeout
			if wait <= 0 {
				wait = pool.DefaultDNSTimeout
			}
			disc = follow(p, sources, wait)
		}
	}
	return &Stack{
		Handler:     h,
		Status:      view,
		Monitor:     monitor,
		Pool:        p,
		Hosts:       hosts,
		Limiter:     lim,
		Maintenance: maint,
		Retry:       retrying,
		Pages:       pages,
		Proxy:       proxy,
		base:        base,
		discovery:   disc,
	}, nil
}

// withTimeout bounds each request's context by d, inside the error pages
// (which render the resulting timeout) and outside the retries (which stop
// when no attempt can finish in the time left). Whose the timeout is —
// the upstream's, or the client's when its body was still arriving — is
// decided where the request was waiting, in gateway.Transport.
func withTimeout(next http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
