package retry_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

// Wrapping a ReverseProxy with retries. The first upstream is down; the
// POST goes to the second one, because the gateway Transport measured that
// nothing was sent to the first.
func Example() {
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	targets := []*url.URL{mustParse(down.URL), mustParse(up.URL)}

	transport := gateway.NewHTTPTransport()
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		// A minimal balancer: the first target this request has not tried.
		// gateway.Pool does this (and more) for real.
		Rewrite: func(pr *httputil.ProxyRequest) {
			trail := gateway.TrailFrom(pr.In.Context())
			for _, u := range targets {
				if !trail.Tried(u.Host) {
					trail.Add(u.Host)
					pr.SetURL(u)
					return
				}
			}
			pr.SetURL(targets[0])
		},
		Transport:    &gateway.Transport{Base: transport},
		ErrorHandler: gateway.NewErrorHandler(nil),
	}

	rt, err := retry.New(retry.Options{ // the zero value: 3 attempts, 25–250 ms backoff, budget
		OnRetry: func(attempt int, f *gateway.Failure, _ time.Duration) {
			fmt.Printf("attempt %d, after %s (sent: %t)\n", attempt, f.Class, f.Sent)
		},
	})
	if err != nil {
		panic(err)
	}
	front := httptest.NewServer(rt.Wrap(proxy))
	defer front.Close()

	res, err := front.Client().Post(front.URL, "text/plain", strings.NewReader("order=42"))
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Print(res.Status, ": ", string(body))
	// Output:
	// attempt 2, after refused (sent: false)
	// 200 OK: ok
}

// Hedging a GET: the first upstream stalls; after the hedge delay a copy
// goes to the second, whose answer wins. The stalled attempt is cancelled.
func ExampleOptions_hedges() {
	slow := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
			io.WriteString(w, "slow\n")
		case <-r.Context().Done(): // lost the race
		}
	}))
	defer slow.Close()
	fast := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "fast\n")
	}))
	defer fast.Close()
	targets := []*url.URL{mustParse(slow.URL), mustParse(fast.URL)}

	transport := gateway.NewHTTPTransport()
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { // the first target not tried: the hedge's is the second
			trail := gateway.TrailFrom(pr.In.Context())
			for _, u := range targets {
				if !trail.Tried(u.Host) {
					trail.Add(u.Host)
					pr.SetURL(u)
					return
				}
			}
		},
		Transport:    &gateway.Transport{Base: transport},
		ErrorHandler: gateway.NewErrorHandler(nil),
	}
	rt, err := retry.New(retry.Options{
		Hedges:     1,                     // on: the zero value leaves hedging off
		HedgeDelay: 50 * time.Millisecond, // fixed here; 0 adapts to recent latencies
		OnHedge: func(e retry.HedgeEvent, attempt int, _ time.Duration) {
			fmt.Printf("hedge %s (attempt %d)\n", e, attempt)
		},
	})
	if err != nil {
		panic(err)
	}
	front := httptest.NewServer(rt.Wrap(proxy))
	defer front.Close()

	res, err := front.Client().Get(front.URL)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Print(res.Status, ": ", string(body))
	// Output:
	// hedge sent (attempt 2)
	// hedge won (attempt 2)
	// 200 OK: fast
}

func mustParse(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
