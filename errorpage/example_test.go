package errorpage_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing/fstest"
	"time"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// An API client (axios sends "application/json, text/plain, */*") calls
// through a proxy whose upstream is down, and gets an RFC 9457 problem
// document it can act on — no upstream address, no error text.
func Example_jsonClient() {
	upstream := gatewaytest.NewServer(gatewaytest.Refused) // a closed port
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)
	transport := gateway.NewHTTPTransport()
	defer transport.CloseIdleConnections()
	proxy := &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:    &gateway.Transport{Base: transport},
		ErrorHandler: gateway.NewErrorHandler(slog.New(slog.DiscardHandler)),
	}
	pages, err := errorpage.New(errorpage.Options{
		Logger: slog.New(slog.DiscardHandler),
		Now:    func() time.Time { return time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC) },
	})
	if err != nil {
		panic(err)
	}
	front := httptest.NewServer(gateway.RequestID(pages.Wrap(proxy)))
	defer front.Close()

	req, _ := http.NewRequest("GET", front.URL+"/api/orders", nil)
	req.Header.Set("Accept", "application/json, text/plain, */*")
	req.Header.Set("X-Request-ID", "req-7f3a")
	res, err := front.Client().Do(req)
	if err != nil {
		panic(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	fmt.Println(res.StatusCode, res.Header.Get("Content-Type"))
	fmt.Print(string(body))
	// Output:
	// 502 application/problem+json
	// {"type":"about:blank","title":"Bad Gateway","status":502,"detail":"The service refused the connection: nothing is accepting requests at its address right now.","instance":"/api/orders","request_id":"req-7f3a","class":"refused","time":"2025-03-14T15:09:26Z"}
}

// A branded page for browsers: name, accent colour, status page and
// support address. The same Handler answers API clients in JSON.
func ExampleBrand() {
	pages, err := errorpage.New(errorpage.Options{
		Brand: errorpage.Brand{
			Name:          "Acme",
			Accent:        "#7c3aed",
			StatusPageURL: "https://status.acme.example",
			SupportEmail:  "support@acme.example",
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	// Stand-in for a breaker that is open for another 20 seconds.
	open := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := gateway.NewFailure(gateway.ClassOpen, "10.0.0.5:8080", nil)
		f.RetryAfter = 20 * time.Second
		gateway.RecordFailure(w, f)
		gateway.WriteFailure(w, r, f)
	})
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	w := httptest.NewRecorder()
	pages.Wrap(open).ServeHTTP(w, req)

	page := w.Body.String()
	// The wait is drawn per answer from [20, 40] s, so that visitors
	// turned away together come back spread out; the page reloads after
	// the same wait.
	ra := w.Header().Get("Retry-After")
	n, _ := strconv.Atoi(ra)
	fmt.Println(w.Code, w.Header().Get("Content-Type"), "Retry-After 20-40 s:", n >= 20 && n <= 40)
	for _, re := range []string{`<title>.*</title>`, `<h1>.*</h1>`, `<a href="https://status[^>]*>`} {
		fmt.Println(regexp.MustCompile(re).FindString(page))
	}
	fmt.Println("reloads after it:", strings.Contains(page, `<meta http-equiv="refresh" content="`+ra+`">`))
	fmt.Println(strings.Contains(page, "10.0.0.5"))
	// Output:
	// 503 text/html; charset=utf-8 Retry-After 20-40 s: true
	// <title>503 Service Unavailable · Acme</title>
	// <h1>The service is recovering</h1>
	// <a href="https://status.acme.example">
	// reloads after it: true
	// false
}

// Custom templates: one per class, per status, or a default, from any
// fs.FS (typically an embed.FS). They receive a *Page.
func ExampleOptions_templates() {
	pages, err := errorpage.New(errorpage.Options{
		Templates: fstest.MapFS{
			"503.html": {Data: []byte(`<h1>{{.Title}}</h1><p>{{.Detail}} Ref: {{.RequestID}}</p>`)},
		},
	})
	if err != nil {
		panic(err)
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Accept", "text/html")
	req.Header.Set("X-Request-ID", "abc123")
	w := httptest.NewRecorder()
	pages.Write(w, req, gateway.NewFailure(gateway.ClassNoUpstream, "", nil))
	fmt.Println(w.Body.String())
	// Output:
	// <h1>No server can take your request right now</h1><p>No instance of the service is available right now. Ref: abc123</p>
}

// Handler.Write renders a Failure from your own code, here as plain text
// for a client that prefers it.
func ExampleHandler_Write() {
	pages, err := errorpage.New(errorpage.Options{
		Now: func() time.Time { return time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC) },
	})
	if err != nil {
		panic(err)
	}
	req := httptest.NewRequest("GET", "/report", nil)
	req.Header.Set("Accept", "text/plain")
	req.Header.Set("X-Request-ID", "req-42")
	w := httptest.NewRecorder()
	f := gateway.NewFailure(gateway.ClassTimeout, "10.0.0.5:8080", nil)
	f.RetryAfter = 10 * time.Second
	pages.Write(w, req, f)
	fmt.Print(w.Body.String())
	// Output:
	// 504 Gateway Timeout
	//
	// The service took too long to answer.
	//
	// Try again in 10 seconds.
	//
	// If you contact support, quote:
	//
	// Request ID: req-42
	// Time:       2025-03-14 15:09:26 UTC
	// Error:      504 timeout
}
