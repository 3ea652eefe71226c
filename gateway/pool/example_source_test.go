package pool_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"time"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

// A control plane of your own (Kubernetes EndpointSlices, Consul's API, a
// file) feeds a pool through a Source: here, sets of targets arriving on
// a channel.
func ExamplePool_Follow() {
	var targets []*url.URL
	for _, name := range []string{"blue", "green"} {
		s := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, name)
		}))
		defer s.Close()
		u, _ := url.Parse(s.URL)
		targets = append(targets, u)
	}

	sets := make(chan []pool.Target)
	applied := make(chan error)
	src := pool.SourceFunc(func(ctx context.Context, update func([]pool.Target) error) error {
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case ts := <-sets:
				applied <- update(ts)
			}
		}
	})

	p := pool.Empty()
	p.Logger = slog.New(slog.DiscardHandler)
	p.OnChange = func(c pool.Change) {
		fmt.Printf("%s: %d added, %d removed\n", c.Source, len(c.Added), len(c.Removed))
	}
	transport := &gateway.Transport{}
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{ErrorHandler: gateway.NewErrorHandler(nil), Transport: transport}
	if err := p.Attach(proxy); err != nil {
		panic(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Follow(ctx, src)
	}()

	for _, u := range targets { // a blue/green switch
		sets <- []pool.Target{{URL: u}}
		if err := <-applied; err != nil {
			panic(err)
		}
		res, err := http.Get(front.URL)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		fmt.Print(string(body))
	}
	cancel()
	<-done
	// Output:
	// source-1: 1 added, 0 removed
	// blue
	// source-1: 1 added, 1 removed
	// green
}

// A name in DNS becomes one target per address. Pool.Follow keeps a pool
// up to date with it; proxykit.New does so for every dns+ or srv+ upstream.
func ExampleNewDNSSource() {
	zone := gatewaytest.NewZone() // a DNS server of the example's own
	defer zone.Close()
	zone.SetAddrs("backend.test", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"))

	u, _ := url.Parse("dns+http://backend.test:8080/api")
	src, err := pool.NewDNSSource(u, pool.DNSOptions{Resolver: zone.Addr, Refresh: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	targets, err := src.Resolve(context.Background())
	if err != nil {
		panic(err)
	}
	for _, t := range targets {
		fmt.Println(t.URL, "from", t.Source)
	}

	_, err = pool.NewDNSSource(&url.URL{Scheme: "srv+http", Host: "_http._tcp.backend.test:80"}, pool.DNSOptions{})
	fmt.Println(err)
	// Output:
	// http://127.0.0.1:8080/api from dns+http://backend.test:8080/api
	// http://[::1]:8080/api from dns+http://backend.test:8080/api
	// pool: NewDNSSource: "srv+http://_http._tcp.backend.test:80": an srv+ URL takes no port: the SRV records give it
}
