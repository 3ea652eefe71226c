package gateway_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// An existing ReverseProxy gains classified failures, honest statuses and
// request IDs by swapping in the Transport and ErrorHandler.
func Example() {
	upstream := gatewaytest.NewServer(gatewaytest.Refused) // nothing listens there
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)

	transport := &gateway.Transport{}
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:    transport,
		ErrorHandler: gateway.NewErrorHandler(slog.New(slog.DiscardHandler)),
		BufferPool:   gateway.NewBufferPool(0, 0),
	}
	front := httptest.NewServer(gateway.RequestID(proxy))
	defer front.Close()

	res, err := http.Get(front.URL)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Println(res.StatusCode, gateway.ValidRequestID(res.Header.Get("X-Request-ID")))
	fmt.Print(string(body))
	// Output:
	// 502 true
	// 502 Bad Gateway: The service refused the connection: nothing is accepting requests at its address right now.
}

// A layer learns why a response failed by wrapping the ResponseWriter in an
// Interceptor; the ErrorHandler records the Failure there.
func ExampleInterceptor() {
	upstream := gatewaytest.NewServer(gatewaytest.ResetAfterRequest)
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)
	transport := &gateway.Transport{}
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:    transport,
		ErrorHandler: gateway.NewErrorHandler(slog.New(slog.DiscardHandler)),
	}

	rec := httptest.NewRecorder()
	i := gateway.NewInterceptor(rec, nil) // a nil Decider passes everything
	proxy.ServeHTTP(i, httptest.NewRequest("POST", "/orders", nil))
	f := i.Failure()
	fmt.Println(f.Class, f.StatusCode(), "sent:", f.Sent)
	// Output: reset 502 sent: true
}

// A ModifyResponse that rejects an answer is a decision of the proxy's own
// code: wrapped, its error is a Failure of class response_rejected, which
// no layer retries or counts against the upstream.
func ExampleWrapModifyResponse() {
	upstream := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Internal", "1")
		_, _ = io.WriteString(w, "internal details")
	}))
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)

	proxy := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: &gateway.Transport{},
		ModifyResponse: gateway.WrapModifyResponse(func(res *http.Response) error {
			if res.Header.Get("X-Internal") != "" {
				return fmt.Errorf("policy: internal response for %s", res.Request.URL.Path)
			}
			return nil
		}),
		ErrorHandler: gateway.NewErrorHandler(slog.New(slog.DiscardHandler)),
	}
	front := httptest.NewServer(proxy)
	defer front.Close()

	res, err := http.Get(front.URL + "/admin")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Print(res.StatusCode, " ", string(body))
	// Output: 502 502 Bad Gateway: The gateway declined to pass on the service's answer.
}
