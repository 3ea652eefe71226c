package breaker_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
)

// The full wiring: a pool over two upstreams, one breaker per upstream host
// around the instrumented transport, the breakers as the pool's health
// predicate, and retry outside. One upstream is down; clients never notice,
// and once its breaker is open the pool stops sending it anything.
func ExamplePerHost() {
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from the healthy upstream")
	}))
	defer up.Close()
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	u1, _ := url.Parse(up.URL)
	u2, _ := url.Parse(down.URL)

	logger := slog.New(slog.DiscardHandler) // a real service keeps slog.Default()
	hosts, err := breaker.PerHost(breaker.Settings{Logger: logger,
		Health: breaker.HostHealth{RestAfter: -1}}) // show the breaker alone
	if err != nil {
		panic(err)
	}
	p, err := pool.New(u1, u2)
	if err != nil {
		panic(err)
	}
	p.Policy = pool.RoundRobin
	p.Health = hosts // skip hosts whose breaker is open
	defer hosts.Close()

	transport := &gateway.Transport{}
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Transport:    hosts.Transport(transport),
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
	if err := p.Attach(proxy); err != nil {
		panic(err)
	}
	retrying, err := retry.New(retry.Options{Logger: logger})
	if err != nil {
		panic(err)
	}
	front := httptest.NewServer(retrying.Wrap(proxy))
	defer front.Close()

	for range 12 {
		res, err := http.Get(front.URL)
		if err != nil {
			panic(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			fmt.Println("failed:", res.Status)
		}
	}
	for _, s := range hosts.States() {
		if s.Key == down.Addr {
			fmt.Println("down host's breaker:", s.State)
		}
	}
	fmt.Println("down host allowed:", hosts.Allows(down.Addr))
	// Output:
	// down host's breaker: open
	// down host allowed: false
}

// A breaker in front of a handler. Once open it answers 503 with
// Retry-After at once, without calling the handler.
func ExampleBreaker_Wrap() {
	calls := 0
	failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		w.WriteHeader(http.StatusBadGateway)
	})
	b, err := breaker.New(breaker.Settings{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	h := b.Wrap(failing)
	for range 7 {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
		if ra := w.Header().Get("Retry-After"); ra != "" {
			// Drawn per answer from [1, 3] s, so that the clients
			// turned away together come back spread out.
			n, _ := strconv.Atoi(ra)
			fmt.Println(w.Code, "Retry-After 1-3 s:", n >= 1 && n <= 3)
		} else {
			fmt.Println(w.Code)
		}
	}
	fmt.Println("handler calls:", calls, "state:", b.States()[0].State)
	// Output:
	// 502
	// 502
	// 502
	// 502
	// 502
	// 503 Retry-After 1-3 s: true
	// 503 Retry-After 1-3 s: true
	// handler calls: 5 state: open
}
