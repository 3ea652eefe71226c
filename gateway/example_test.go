package gateway_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"

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

// apology is the Decider of a layer that answers failures itself.
type apology struct{}

func (apology) Decide(_ int, _ http.Header, f *gateway.Failure) gateway.Decision {
	if f != nil {
		return gateway.Discard
	}
	return gateway.Pass
}

// A layer of your own that answers failures — here with a one-line
// apology — ends with the outermost layer's duty: HandOff gives the
// Failure to any layer outside, and when there is none, logs it once (and
// aborts for a client that went away).
func ExampleHandOff() {
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// What gateway.NewErrorHandler does for a refused connection.
		f := gateway.NewFailure(gateway.ClassRefused, "10.0.0.5:80", nil)
		gateway.RecordFailure(w, f)
		gateway.WriteFailure(w, r, f)
	})
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	layer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var i gateway.Interceptor
		i.Reset(w, apology{})
		proxy.ServeHTTP(&i, r)
		if f := i.Failure(); f != nil && i.Discarded() {
			i.Rollback() // the discarded answer's headers go
			gateway.HandOff(w, r, f, false, func() {
				w.WriteHeader(f.StatusCode())
				_, _ = io.WriteString(w, "Sorry, try again in a moment.\n")
			}, func() { gateway.LogFailure(logger, r, f, 0) })
		}
	})

	rec := httptest.NewRecorder()
	layer.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output:
	// level=WARN msg="proxy: upstream failure" class=refused status=502 upstream=10.0.0.5:80 sent=false attempts=1 method=GET path=/
	// 502 Sorry, try again in a moment.
}
