// Package stack is the reference wiring of proxykit's recommended stack,
// shared by the gateway CLI, the demo and the load program. It uses only the
// public API; copy Build into your service and adapt it.
//
// Outermost first:
//
//	gateway.RequestID     keep or mint X-Request-ID, forward it upstream
//	gateway.Monitor       count outcomes, log the one line per failed request
//	errorpage             render the final failure: HTML, problem+json, text
//	retry                 re-run the proxy on a safe, retryable failure
//	httputil.ReverseProxy Rewrite: pool balancer (skips tried, resting and
//	                      open hosts)
//	  pool.Transport      observes latency and failures per host
//	  breaker per host    fast-fails an open host without touching it
//	  gateway.Transport   classifies errors, measures "sent"
//	  tuned http.Transport
//
// errorpage sits outside retry so that it renders only the final outcome;
// retry sits outside the breakers so that an open host sends the next
// attempt elsewhere; the breakers sit nearest the upstream so that they see
// every attempt.
package stack

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/retry"
)

// Config is what the programs let users choose. Zero values take the
// packages' defaults.
type Config struct {
	// Upstreams are the pool's targets; at least one.
	Upstreams []*url.URL
	// Attempts per request, retries included. 0: retry's default (3).
	Attempts int
	// TryTimeout bounds each attempt. 0: none.
	TryTimeout time.Duration
	// Brand is the name on error pages.
	Brand string
	// Debug shows operator hints on error pages.
	Debug bool
	// Logger receives every layer's logs. Nil: slog.Default().
	Logger *slog.Logger
	// Base is the outbound transport. Nil: gateway.NewHTTPTransport().
	Base http.RoundTripper
	// OnBreakerChange, if set, hears every breaker state change.
	OnBreakerChange func(name, key string, from, to breaker.State)
	// Breaker configures the per-host breakers (zero: the defaults). Its
	// Logger and OnStateChange, when unset, are Config's.
	Breaker breaker.Settings
}

// Stack is a built stack and the handles an operator needs.
type Stack struct {
	// Handler serves the public listener.
	Handler http.Handler
	// Status serves the status view (admin listener only).
	Status *gateway.StatusView

	Monitor *gateway.Monitor
	Pool    *gateway.Pool
	Hosts   *breaker.Hosts
	Retry   *retry.Retry
	Pages   *errorpage.Handler

	transport *gateway.Transport
}

// Close releases idle upstream connections.
func (s *Stack) Close() { s.transport.CloseIdleConnections() }

// Build wires the recommended stack over cfg.Upstreams.
func Build(cfg Config) (*Stack, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("stack: at least one upstream is required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	base := cfg.Base
	if base == nil {
		base = gateway.NewHTTPTransport()
	}

	// One breaker per upstream host, and the pool that routes around them.
	bs := cfg.Breaker
	if bs.Logger == nil {
		bs.Logger = logger
	}
	if bs.OnStateChange == nil {
		bs.OnStateChange = cfg.OnBreakerChange
	}
	hosts, err := breaker.PerHost(bs)
	if err != nil {
		return nil, err
	}
	pool, err := gateway.NewPool(cfg.Upstreams...)
	if err != nil {
		return nil, err
	}
	pool.Healthy, pool.RetryAfter = hosts.Allows, hosts.OpenFor
	pool.Logger = logger

	transport := &gateway.Transport{Base: base}
	proxy := &httputil.ReverseProxy{
		Rewrite:      pool.Rewrite,
		Transport:    pool.Transport(hosts.Transport(transport)),
		ErrorHandler: gateway.NewErrorHandler(logger),
		BufferPool:   gateway.NewBufferPool(0, 0),
		ErrorLog:     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}

	monitor := &gateway.Monitor{Logger: logger}
	retrying, err := retry.New(retry.Options{
		Attempts:      cfg.Attempts,
		PerTryTimeout: cfg.TryTimeout,
		OnRetry:       monitor.ObserveRetry,
		Logger:        logger,
	})
	if err != nil {
		return nil, err
	}
	pages, err := errorpage.New(errorpage.Options{
		Brand:  errorpage.Brand{Name: cfg.Brand},
		Debug:  cfg.Debug,
		Logger: logger,
	})
	if err != nil {
		return nil, err
	}

	var h http.Handler = proxy
	h = retrying.Wrap(h)
	h = pages.Wrap(h)
	h = monitor.Wrap(h)
	h = gateway.RequestID(h)

	return &Stack{
		Handler: h,
		Status: &gateway.StatusView{
			Monitor:   monitor,
			Upstreams: pool.Status,
			Breakers:  hosts.BreakerStatus,
		},
		Monitor:   monitor,
		Pool:      pool,
		Hosts:     hosts,
		Retry:     retrying,
		Pages:     pages,
		transport: transport,
	}, nil
}
