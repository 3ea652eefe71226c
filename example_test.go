package proxykit_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
	"github.com/proxykit/proxykit/status"
)

// The recommended stack in one call: a pool over two upstreams, one of
// them down. Every request is served by the healthy one.
func Example() {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the upstream\n")
	}))
	defer up.Close()
	down := httptest.NewServer(nil)
	down.Close() // nothing listens there any more: connections are refused

	st, err := proxykit.New(proxykit.Config{
		Upstreams: []*url.URL{mustParse(up.URL), mustParse(down.URL)},
		Pages:     errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}},
		Logger:    slog.New(slog.DiscardHandler), // your logger; nil: slog.Default()
	})
	if err != nil {
		panic(err)
	}
	defer st.Close()
	front := httptest.NewServer(st) // in production: proxykit.NewServer(st, logger)
	defer front.Close()

	for range 4 {
		res, err := http.Get(front.URL + "/")
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		fmt.Print(res.StatusCode, " ", string(body))
	}
	// Output:
	// 200 hello from the upstream
	// 200 hello from the upstream
	// 200 hello from the upstream
	// 200 hello from the upstream
}

// A ReverseProxy of your own keeps its Rewrite (or Director) and
// ModifyResponse; proxykit wraps it instead of replacing it.
func ExampleNew_existingProxy() {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path %s, tenant %s\n", r.URL.Path, r.Header.Get("X-Tenant"))
	}))
	defer up.Close()
	target := mustParse(up.URL)

	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Set("X-Tenant", "acme")
		},
		ModifyResponse: func(res *http.Response) error {
			res.Header.Set("X-Served-By", "my-proxy")
			return nil
		},
	}
	st, err := proxykit.New(proxykit.Config{Proxy: proxy, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()

	res, err := http.Get(front.URL + "/orders")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Print(res.Header.Get("X-Served-By"), ": ", string(body))

	// An ErrorHandler of your own would cut the failure hand-off.
	_, err = proxykit.New(proxykit.Config{Proxy: &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		ErrorHandler: func(http.ResponseWriter, *http.Request, error) {},
	}})
	fmt.Println(strings.SplitN(err.Error(), ":", 2)[0]+":", err == proxykit.ErrOwnErrorHandler)
	// Output:
	// my-proxy: path /orders, tenant acme
	// proxykit: true
}

// The same stack wired by hand, for a service that wants only some layers
// or another order. Each Wrap method is a func(http.Handler) http.Handler,
// so it also fits a router's middleware chain (chi's r.Use(rt.Wrap)).
func Example_byHand() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer upstream.Close()
	target, err := url.Parse(upstream.URL)
	if err != nil {
		panic(err)
	}
	logger := slog.Default()

	hosts, err := breaker.PerHost(breaker.Settings{Logger: logger}) // one health model per upstream host
	if err != nil {
		panic(err)
	}
	defer hosts.Close()        // stops its health checks
	p, err := pool.New(target) // the balancer, over one or more targets
	if err != nil {
		panic(err)
	}
	p.Health = hosts // skip hosts that are out
	proxy := &httputil.ReverseProxy{
		Transport:    hosts.Transport(&gateway.Transport{}), // classified errors, measured "sent"
		ErrorHandler: gateway.NewErrorHandler(logger),       // honest status, no error text
	}
	if err := p.Attach(proxy); err != nil { // sets Rewrite and wraps Transport together
		panic(err)
	}
	monitor := &status.Monitor{Logger: logger}
	rt, err := retry.New(retry.Options{OnRetry: monitor.ObserveRetry, Logger: logger})
	if err != nil {
		panic(err)
	}
	pages, err := errorpage.New(errorpage.Options{Logger: logger})
	if err != nil {
		panic(err)
	}
	var h http.Handler = proxy
	h = rt.Wrap(h)
	h = pages.Wrap(h)
	h = monitor.Wrap(h) // outermost but for the request ID: it logs the one line per failure
	h = gateway.RequestID(h)
	h = gateway.ClientBodyTimeout(h, 0) // a stalled upload is the client's 408

	front := httptest.NewServer(h)
	defer front.Close()
	res, err := http.Get(front.URL)
	if err != nil {
		panic(err)
	}
	res.Body.Close()
	fmt.Println(res.StatusCode, monitor.Snapshot().Requests)
	// Output:
	// 200 1
}

func mustParse(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
