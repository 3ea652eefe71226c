package errorpage_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestRealProxyFailures drives real faults on loopback through a real
// ReverseProxy with the gateway's Transport and ErrorHandler, wrapped by
// errorpage, in each format: the failure is replaced, classified, and
// logged once (by errorpage; the ErrorHandler's own line drops to debug).
func TestRealProxyFailures(t *testing.T) {
	cases := []struct {
		name   string
		fault  gatewaytest.Fault
		mod    func(*http.Transport)
		class  gateway.Class
		status int
	}{
		{"refused", gatewaytest.Refused, nil, gateway.ClassRefused, 502},
		{"reset", gatewaytest.ResetAfterRequest, nil, gateway.ClassReset, 502},
		{"garbage", gatewaytest.Garbage, nil, gateway.ClassMalformed, 502},
		{"hang", gatewaytest.Hang, func(tr *http.Transport) { tr.ResponseHeaderTimeout = 100 * time.Millisecond },
			gateway.ClassTimeout, 504},
	}
	formats := []struct {
		accept, ctype string
	}{
		{acceptChrome, "text/html; charset=utf-8"},
		{acceptAxios, "application/problem+json"},
		{"text/plain", "text/plain; charset=utf-8"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := gatewaytest.NewServer(c.fault)
			t.Cleanup(up.Close)
			var lg logs
			h := newHandler(t, errorpage.Options{Logger: lg.logger()})
			s := front(t, h.Wrap(proxyTo(t, up.URL, lg.logger(), c.mod)))
			for _, fm := range formats {
				res, body := get(t, s, "GET", "/some/path?token=hush", fm.accept)
				assert.Equal(t, c.status, res.StatusCode)
				assert.Equal(t, fm.ctype, res.Header.Get("Content-Type"))
				assert.Equal(t, strconv.Itoa(len(body)), res.Header.Get("Content-Length"))
				id := res.Header.Get("X-Request-Id")
				assert.True(t, validRequestID(id), "a request ID is minted: %q", id)
				assert.Contains(t, string(body), id)
				assert.NotContains(t, string(body), "hush", "the query string is never echoed")
				f := &gateway.Failure{Class: c.class, Upstream: up.Addr}
				assertNoLeak(t, string(body), f)
				if fm.ctype == "application/problem+json" {
					p := decodeProblem(t, body)
					assert.Equal(t, c.class.String(), p.Class)
					assert.Equal(t, c.status, p.Status)
				}
			}
			warn := lg.lines(t, "WARN")
			require.Len(t, warn, len(formats), "one warn line per failed request")
			for _, l := range warn {
				assert.Equal(t, c.class.String(), l["class"])
				assert.NotEmpty(t, l["request_id"], "the minted ID is logged")
				assert.Equal(t, up.Addr, l["upstream"], "operators get the address in the log")
			}
			assert.Len(t, lg.lines(t, "DEBUG"), len(formats), "the ErrorHandler's own line is debug")
		})
	}
}

// TestEveryClassEveryFormat renders each class in each format. (A recorded
// upstream_status failure follows Upstream5xx like an upstream's own 5xx.)
func TestEveryClassEveryFormat(t *testing.T) {
	h := newHandler(t, errorpage.Options{Upstream5xx: errorpage.UpstreamReplace})
	for _, c := range gateway.Classes() {
		if c == gateway.ClassCanceled {
			continue
		}
		f := failure(c)
		f.RetryAfter = 1500 * time.Millisecond
		status := c.Status()
		for _, accept := range []string{acceptFirefox, acceptCurl, "text/plain"} {
			t.Run(c.String()+"/"+errorpage.Negotiate(http.Header{"Accept": {accept}}).String(), func(t *testing.T) {
				w := serve(h.Wrap(fail(f)), "GET", "/orders/42", accept, "X-Request-ID", "req-"+c.String())
				body := w.Body.String()
				assert.Equal(t, status, w.Code)
				ra := 2 // rounded up
				if spreads(c) {
					var err error
					ra, err = strconv.Atoi(w.Header().Get("Retry-After"))
					require.NoError(t, err)
					assert.True(t, ra >= 2 && ra <= 4, "Retry-After %d spread over [2, 4]", ra)
				}
				assert.Equal(t, strconv.Itoa(ra), w.Header().Get("Retry-After"))
				assert.Equal(t, "req-"+c.String(), w.Header().Get("X-Request-Id"))
				assertNoLeak(t, body, f)
				switch {
				case strings.HasPrefix(accept, "text/html"):
					assert.Contains(t, body, "<title>"+strconv.Itoa(status)+" "+html.EscapeString(http.StatusText(status)))
					assert.Contains(t, body, html.EscapeString(c.Explanation()))
					assert.Contains(t, body, "req-"+c.String())
					assert.Contains(t, body, "2025-03-14 15:09:26 UTC")
					assert.Contains(t, body, `<meta http-equiv="refresh" content="`+strconv.Itoa(ra)+`">`)
					assert.Contains(t, body, `aria-current="step"`)
					assert.Equal(t, 1, strings.Count(body, `aria-current="step"`), "one failing hop")
				case accept == "text/plain":
					assert.True(t, strings.HasPrefix(body, strconv.Itoa(status)+" "+http.StatusText(status)+"\n"))
					assert.Contains(t, body, c.Explanation())
					assert.Contains(t, body, "Request ID: req-"+c.String())
				default:
					p := decodeProblem(t, w.Body.Bytes())
					assert.Equal(t, problemDoc{
						Type: "about:blank", Title: http.StatusText(status), Status: status,
						Detail: c.Explanation(), Instance: "/orders/42", RequestID: "req-" + c.String(),
						Class: c.String(), RetryAfter: ra, Time: "2025-03-14T15:09:26Z",
					}, p)
				}
			})
		}
	}
}

// TestOperatorDetails: the hint, upstream, attempts and error text appear
// with Debug, or for requests Trusted approves, and never otherwise.
func TestOperatorDetails(t *testing.T) {
	f := failure(gateway.ClassRefused)
	f.Attempts = 3
	trusted := func(r *http.Request) bool { return r.Header.Get("X-Office") == "yes" }
	debug := newHandler(t, errorpage.Options{Debug: true})
	pred := newHandler(t, errorpage.Options{Trusted: trusted})

	for _, accept := range []string{acceptChrome, acceptCurl, "text/plain"} {
		for name, w := range map[string]*httptest.ResponseRecorder{
			"debug":   serve(debug.Wrap(fail(f)), "GET", "/", accept),
			"trusted": serve(pred.Wrap(fail(f)), "GET", "/", accept, "X-Office", "yes"),
		} {
			body := w.Body.String()
			if strings.HasPrefix(accept, "text/html") {
				body = html.UnescapeString(body)
			}
			assert.Contains(t, body, secretUpstream, name)
			assert.Contains(t, body, secretError, name)
			assert.Contains(t, body, f.Hint(), name)
			assert.Contains(t, body, "3", name)
		}
		w := serve(pred.Wrap(fail(f)), "GET", "/", accept, "X-Office", "no")
		assertNoLeak(t, w.Body.String(), f)
	}
	p := decodeProblem(t, serve(debug.Wrap(fail(f)), "GET", "/", "").Body.Bytes())
	assert.Equal(t, secretUpstream, p.Upstream)
	assert.Equal(t, 3, p.Attempts)
	assert.Equal(t, secretError, p.Error)
	assert.Equal(t, f.Hint(), p.Hint)
}

// TestEscaping: hostile path, Host, X-Request-ID and Accept come back
// escaped or not at all, in every format, even in debug mode where the
// request line is shown.
func TestEscaping(t *testing.T) {
	h := newHandler(t, errorpage.Options{Debug: true, Brand: errorpage.Brand{Name: `Acme <i>"&'`}})
	probe := `<script>alert(1)</script>`
	for _, accept := range []string{acceptChrome, acceptCurl, "text/plain"} {
		r := httptest.NewRequest("GET", "/p", nil)
		r.URL.Path = "/" + probe + `/"><img src=x onerror=alert(1)>`
		r.URL.RawPath = ""
		r.Host = `evil"><svg onload=alert(1)>.example`
		r.Header.Set("Accept", accept+", "+probe)
		r.Header.Set("X-Request-ID", probe)
		w := httptest.NewRecorder()
		h.Wrap(fail(failure(gateway.ClassTimeout))).ServeHTTP(w, r)
		body := w.Body.String()
		for _, bad := range []string{"<script>alert", "<img src=x", "<svg onload", "<i>"} {
			assert.NotContains(t, body, bad, accept)
		}
		id := w.Header().Get("X-Request-Id")
		assert.NotEqual(t, probe, id, "an invalid inbound ID is replaced")
		assert.True(t, validRequestID(id))
		assert.Contains(t, body, id)
		if strings.HasPrefix(accept, "text/html") {
			assert.Contains(t, body, "evil&#34;&gt;&lt;svg onload=alert(1)&gt;.example", "Host shown escaped to the operator")
			assert.Contains(t, body, "Acme &lt;i&gt;&#34;&amp;&#39;")
		}
	}
}

// TestHEAD: headers only, with the Content-Length a GET would get.
func TestHEAD(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	s := front(t, gateway.RequestID(h.Wrap(fail(failure(gateway.ClassOpen)))))
	for _, accept := range []string{acceptSafari, acceptAxios, "text/plain"} {
		getRes, getBody := get(t, s, "GET", "/", accept)
		headRes, headBody := get(t, s, "HEAD", "/", accept)
		assert.Equal(t, 503, headRes.StatusCode)
		assert.Empty(t, headBody)
		assert.Equal(t, getRes.Header.Get("Content-Type"), headRes.Header.Get("Content-Type"))
		// The request IDs differ, and so may the length when IDs differ in
		// length; minted IDs have a fixed length.
		assert.Equal(t, int64(len(getBody)), headRes.ContentLength, accept)
	}
}

// TestResponseHeaders: the replaced response's representation headers do
// not leak, the error response's own are set, and headers an enclosing
// handler set before errorpage (CORS, Vary) are kept.
func TestResponseHeaders(t *testing.T) {
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html")
		h.Set("Content-Encoding", "identity")
		h.Set("ETag", `"abc"`)
		h.Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
		h.Set("Set-Cookie", "session=stolen")
		h.Set("Cache-Control", "public, max-age=3600")
		h.Set("Content-Security-Policy", "default-src *")
		h.Set("Retry-After", "120")
		h.Set("X-Upstream-Version", "7")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("<h1>nginx: 503</h1>"))
	}))
	t.Cleanup(up.Close)
	h := newHandler(t, errorpage.Options{Upstream5xx: errorpage.UpstreamReplaceEmptyOrHTML})
	outer := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Access-Control-Allow-Origin", "https://app.example")
			w.Header().Set("Vary", "Origin")
			next.ServeHTTP(w, r)
		})
	}
	s := front(t, outer(h.Wrap(proxyTo(t, up.URL, discardLogger, nil))))
	for _, accept := range []string{acceptChrome, acceptAxios, "text/plain"} {
		res, body := get(t, s, "GET", "/", accept)
		assert.Equal(t, 503, res.StatusCode)
		assert.NotContains(t, string(body), "nginx")
		for _, k := range []string{"Content-Encoding", "Etag", "Last-Modified", "Set-Cookie", "X-Upstream-Version"} {
			assert.Empty(t, res.Header.Values(k), k)
		}
		assert.Equal(t, []string{"no-store"}, res.Header.Values("Cache-Control"))
		assert.Equal(t, "nosniff", res.Header.Get("X-Content-Type-Options"))
		assert.Equal(t, "120", res.Header.Get("Retry-After"), "the upstream's Retry-After, parsed and re-sent")
		assert.Equal(t, strconv.Itoa(len(body)), res.Header.Get("Content-Length"))
		assert.Equal(t, []string{"Origin", "Accept"}, res.Header.Values("Vary"))
		assert.Equal(t, "https://app.example", res.Header.Get("Access-Control-Allow-Origin"))
		assert.Equal(t, "no-referrer", res.Header.Get("Referrer-Policy"))
		csp := res.Header.Get("Content-Security-Policy")
		assert.True(t, strings.HasPrefix(csp, "default-src 'none'"), csp)
		if strings.HasPrefix(accept, "text/html") {
			assert.Contains(t, csp, "style-src 'sha256-")
			assert.Contains(t, csp, "frame-ancestors 'none'")
			assert.NotContains(t, csp, "unsafe")
			assert.Contains(t, string(body), `<meta http-equiv="refresh" content="120">`)
		}
	}
}

// TestUpstream5xx: an upstream's own 5xx passes through by default, body
// and headers, internal details included; the opt-in modes replace every
// 502/503/504, only empty and HTML ones, or every 5xx.
// A replaced response keeps its status and loses the upstream's body and
// headers; a replaced application 500 is not logged, as when it passes.
func TestUpstream5xx(t *testing.T) {
	type resp struct {
		status int
		ctype  string
		body   string
	}
	upstreams := map[string]resp{
		"json503":  {503, "application/problem+json", `{"title":"db down"}`},
		"empty503": {503, "", ""},
		"empty502": {502, "", ""}, // carries Date and Content-Length: 0, unlike a bare proxy error
		"html502":  {502, "text/html; charset=utf-8", "<html>bad gateway</html>"},
		"text504":  {504, "text/plain", "upstream timed out"},
		"empty500": {500, "", ""},
		"trace500": {500, "text/plain", "panic: dial tcp 10.9.8.7:5432: db7.corp.example: connection refused"},
		"text501":  {501, "text/plain", "not implemented on db7.corp.example"},
		"ok200":    {200, "text/plain", "fine"},
		"json404":  {404, "application/json", `{"error":"no such order"}`},
	}
	replaced := map[errorpage.UpstreamMode]map[string]bool{
		errorpage.UpstreamPass:               {},
		errorpage.UpstreamReplaceEmptyOrHTML: {"empty503": true, "empty502": true, "html502": true},
		errorpage.UpstreamReplace:            {"json503": true, "empty503": true, "empty502": true, "html502": true, "text504": true},
		errorpage.UpstreamReplaceAll: {"json503": true, "empty503": true, "empty502": true, "html502": true, "text504": true,
			"empty500": true, "trace500": true, "text501": true},
	}
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := upstreams[strings.TrimPrefix(r.URL.Path, "/")]
		if u.ctype != "" {
			w.Header().Set("Content-Type", u.ctype)
		}
		w.Header().Set("Server", "internal-lb-3")
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(u.status)
		_, _ = w.Write([]byte(u.body))
	}))
	t.Cleanup(up.Close)
	for mode, repl := range replaced {
		for name, u := range upstreams {
			t.Run(fmt.Sprintf("mode%d/%s", mode, name), func(t *testing.T) {
				var lg logs
				h := newHandler(t, errorpage.Options{Upstream5xx: mode, Logger: lg.logger()})
				s := front(t, h.Wrap(proxyTo(t, up.URL, discardLogger, nil)))
				res, body := get(t, s, "GET", "/"+name, acceptAxios)
				assert.Equal(t, u.status, res.StatusCode)
				if !repl[name] {
					assert.Equal(t, u.body, string(body), "passed through")
					assert.Equal(t, "internal-lb-3", res.Header.Get("Server"), "headers too: the documented exception")
					assert.Empty(t, lg.lines(t, ""), "a passed response is not errorpage's to log")
					return
				}
				assert.NotContains(t, string(body), "db7")
				assert.NotContains(t, string(body), "10.9.8.7")
				assert.Empty(t, res.Header.Get("Server"), "the upstream's headers go with its body")
				p := decodeProblem(t, body)
				assert.Equal(t, "upstream_status", p.Class)
				assert.Equal(t, u.status, p.Status)
				assert.Equal(t, http.StatusText(u.status), p.Title)
				assert.Equal(t, 5, p.RetryAfter)
				if !gateway.IsFailureStatus(u.status) {
					assert.Empty(t, lg.lines(t, ""), "an application's 5xx is not a failure to log")
					return
				}
				warn := lg.lines(t, "WARN")
				require.Len(t, warn, 1)
				assert.Equal(t, "upstream_status", warn[0]["class"])
			})
		}
	}
}

// TestReplacedUpstreamBodyBreaks: an upstream 502 whose body breaks midway
// makes ReverseProxy panic with http.ErrAbortHandler while errorpage is
// discarding that response; nothing reached the client yet, so the client
// gets the page, not an aborted connection.
func TestReplacedUpstreamBodyBreaks(t *testing.T) {
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n<html>partial")
		_ = c.Close()
	}))
	t.Cleanup(up.Close)
	h := newHandler(t, errorpage.Options{Upstream5xx: errorpage.UpstreamReplace, Logger: discardLogger})
	s := front(t, h.Wrap(proxyTo(t, up.URL, discardLogger, nil)))
	res, body := get(t, s, "GET", "/", acceptAxios)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	assert.Equal(t, "upstream_status", decodeProblem(t, body).Class)
}

// TestPassThrough: successes, other errors and streaming go through
// untouched, with Flush reaching the client.
func TestPassThrough(t *testing.T) {
	h := newHandler(t, errorpage.Options{Upstream5xx: errorpage.UpstreamReplace})
	read := make(chan struct{})
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/404":
			http.NotFound(w, r)
		case "/500":
			http.Error(w, "app error", http.StatusInternalServerError)
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = w.Write([]byte("data: 1\n\n"))
			require.NoError(t, http.NewResponseController(w).Flush())
			<-read // the client got the first event before the handler returned
			_, _ = w.Write([]byte("data: 2\n\n"))
		}
	})
	s := front(t, h.Wrap(inner))
	res, body := get(t, s, "GET", "/404", acceptChrome)
	assert.Equal(t, 404, res.StatusCode)
	assert.Equal(t, "404 page not found\n", string(body))
	res, body = get(t, s, "GET", "/500", acceptChrome)
	assert.Equal(t, 500, res.StatusCode, "500 is the application's own error, never replaced")
	assert.Equal(t, "app error\n", string(body))

	sres, err := s.Client().Get(s.URL + "/stream")
	require.NoError(t, err)
	defer sres.Body.Close()
	buf := make([]byte, 9)
	_, err = io.ReadFull(sres.Body, buf)
	require.NoError(t, err)
	assert.Equal(t, "data: 1\n\n", string(buf))
	close(read)
}

// TestCanceled: a client that went away gets nothing written, and the
// failure is logged once, at debug level.
func TestCanceled(t *testing.T) {
	var lg logs
	h := newHandler(t, errorpage.Options{Logger: lg.logger()})
	w := &recorder{header: http.Header{}}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Accept", acceptChrome)
	func() {
		defer func() {
			assert.Equal(t, http.ErrAbortHandler, recover(),
				"outermost, errorpage aborts the connection rather than let net/http write an implicit 200")
		}()
		h.Wrap(fail(failure(gateway.ClassCanceled))).ServeHTTP(w, r)
	}()
	assert.Zero(t, w.status)
	assert.Zero(t, w.n)
	assert.Empty(t, lg.lines(t, "WARN"))
	assert.Len(t, lg.lines(t, "DEBUG"), 1)

	// Through a real proxy: the client leaves while the upstream hangs.
	up := gatewaytest.NewServer(gatewaytest.Hang)
	t.Cleanup(up.Close)
	done := make(chan struct{})
	s := front(t, h.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		proxyTo(t, up.URL, discardLogger, nil).ServeHTTP(w, r)
	})))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL, nil)
	go func() {
		for up.Requests() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, err := s.Client().Do(req)
	require.Error(t, err)
	<-done
	assert.Eventually(t, func() bool { return len(lg.lines(t, "DEBUG")) == 2 }, 5*time.Second, 5*time.Millisecond)
	assert.Empty(t, lg.lines(t, "WARN"))
}

// TestLoggedOnce: with an enclosing layer that records failures, errorpage
// hands the failure on and does not log; without one, it logs once.
func TestLoggedOnce(t *testing.T) {
	var lg logs
	h := newHandler(t, errorpage.Options{Logger: lg.logger()})
	f := failure(gateway.ClassRefused)

	var seen *gateway.Failure
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := newInterceptor(w, passAll{})
		h.Wrap(fail(f)).ServeHTTP(i, r)
		seen = i.Failure()
	})
	w := serve(outer, "GET", "/", acceptChrome)
	assert.Equal(t, 502, w.Code)
	assert.Same(t, f, seen, "the enclosing layer learns the failure")
	assert.Empty(t, lg.lines(t, ""), "the enclosing layer logs, not errorpage")

	w = serve(h.Wrap(fail(f)), "GET", "/x", acceptChrome)
	lines := lg.lines(t, "")
	require.Len(t, lines, 1)
	assert.Equal(t, "WARN", lines[0]["level"])
	assert.Equal(t, w.Header().Get("X-Request-Id"), lines[0]["request_id"], "the minted ID is in the log line")
	assert.Equal(t, "/x", lines[0]["path"])
}

type passAll struct{}

func (passAll) Decide(int, http.Header, *gateway.Failure) gateway.Decision { return gateway.Pass }

// TestRequestID: a valid inbound ID is kept and shown; without one, the ID
// minted by gateway.RequestID (or by errorpage) is.
func TestRequestID(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	f := failure(gateway.ClassDNS)
	w := serve(h.Wrap(fail(f)), "GET", "/", acceptCurl, "X-Request-ID", "abc-123")
	assert.Equal(t, "abc-123", w.Header().Get("X-Request-Id"))
	assert.Equal(t, "abc-123", decodeProblem(t, w.Body.Bytes()).RequestID)

	w = serve(gateway.RequestID(h.Wrap(fail(f))), "GET", "/", acceptCurl)
	id := w.Header().Get("X-Request-Id")
	assert.Len(t, w.Header().Values("X-Request-Id"), 1)
	assert.Equal(t, id, decodeProblem(t, w.Body.Bytes()).RequestID)
}

// TestReload: a known Retry-After makes GET pages reload themselves; a
// POST is never reloaded, and its visitor is told it may have been applied.
func TestReload(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	f := failure(gateway.ClassOpen)
	f.RetryAfter = 90 * time.Second
	f.Sent = true
	// open draws its wait per response from [90, 180] s (TestComebacksSpread).
	w := serve(h.Wrap(fail(f)), "GET", "/", acceptChrome)
	ra := w.Header().Get("Retry-After")
	n, err := strconv.Atoi(ra)
	require.NoError(t, err)
	assert.True(t, n >= 90 && n <= 180, "Retry-After %d", n)
	get := w.Body.String()
	assert.Contains(t, get, `<meta http-equiv="refresh" content="`+ra+`">`)
	assert.Contains(t, get, "reload by itself in <strong>")

	f.Class = gateway.ClassRefused // a fixed wait: the text is exact
	post := serve(h.Wrap(fail(f)), "POST", "/", acceptChrome)
	assert.Equal(t, "90", post.Header().Get("Retry-After"))
	body := post.Body.String()
	assert.NotContains(t, body, "http-equiv")
	assert.NotContains(t, body, `href=""`, "no reload link for a POST")
	assert.Contains(t, body, "Wait <strong>90 seconds</strong>")
	assert.Contains(t, body, "check whether it went through")

	f.RetryAfter = 0
	assert.NotContains(t, serve(h.Wrap(fail(f)), "GET", "/", acceptChrome).Body.String(), "http-equiv")
}

// TestChain: the failing hop is the service, except for no_upstream and a
// gateway's own refusal (a spent retry budget), where it is the gateway.
func TestChain(t *testing.T) {
	h := newHandler(t, errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}})
	failingHop := func(f *gateway.Failure) string {
		body := serve(h.Wrap(fail(f)), "GET", "/", acceptChrome).Body.String()
		_, after, ok := strings.Cut(body, `aria-current="step">`)
		require.True(t, ok)
		_, after, _ = strings.Cut(after, `<span class="name">`)
		name, _, _ := strings.Cut(after, "<")
		return name
	}
	assert.Equal(t, "Service", failingHop(failure(gateway.ClassRefused)))
	assert.Equal(t, "Service", failingHop(failure(gateway.ClassOpen)))
	assert.Equal(t, "Acme", failingHop(failure(gateway.ClassNoUpstream)))

	budget := gateway.NewFailure(gateway.ClassRefused, secretUpstream, fmt.Errorf("%w; %w", errors.New("refused"), gateway.ErrRetryBudget))
	assert.Equal(t, "Acme", failingHop(budget))
	body := serve(h.Wrap(fail(budget)), "GET", "/", acceptChrome).Body.String()
	assert.Contains(t, body, "stopped retrying")
}

// TestRecordedUnwritten: a failure recorded by an inner layer that then
// writes nothing is still answered.
func TestRecordedUnwritten(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gateway.RecordFailure(w, failure(gateway.ClassNoUpstream))
	})
	w := serve(h.Wrap(inner), "GET", "/", acceptCurl)
	assert.Equal(t, 503, w.Code)
	assert.Equal(t, "no_upstream", decodeProblem(t, w.Body.Bytes()).Class)
}

// TestWrite: the direct API, e.g. from a ReverseProxy ErrorHandler of the
// user's own.
func TestWrite(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	r := httptest.NewRequest("GET", "/", nil)
	w := httptest.NewRecorder()
	h.Write(w, r, nil)
	assert.Equal(t, 502, w.Code)
	assert.Equal(t, "internal", decodeProblem(t, w.Body.Bytes()).Class)

	w = httptest.NewRecorder()
	w.Header().Set("Content-Length", "999")
	w.Header().Set("Trailer:X-Sum", "1")
	h.Write(w, r, &gateway.Failure{Class: gateway.ClassTimeout, Status: 200})
	assert.Equal(t, 504, w.Code, "a non-error status is replaced by the class's")
	assert.Equal(t, strconv.Itoa(w.Body.Len()), w.Header().Get("Content-Length"))
	assert.Empty(t, w.Header().Values("Trailer:X-Sum"))

	rec := &recorder{header: http.Header{}}
	h.Write(rec, r, failure(gateway.ClassCanceled))
	assert.Zero(t, rec.status)
	assert.Zero(t, rec.n)
}

// TestCustomErrorHandler: Write as a ReverseProxy ErrorHandler.
func TestCustomErrorHandler(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	up := gatewaytest.NewServer(gatewaytest.Refused)
	t.Cleanup(up.Close)
	rp := proxyTo(t, up.URL, discardLogger, nil)
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		var f *gateway.Failure
		if !errors.As(err, &f) {
			f = gateway.ClassifyError(err, "", true)
		}
		h.Write(w, r, f)
	}
	w := serve(rp, "GET", "/", acceptCurl)
	assert.Equal(t, 502, w.Code)
	assert.Equal(t, "refused", decodeProblem(t, w.Body.Bytes()).Class)
	assertNoLeak(t, w.Body.String(), &gateway.Failure{Upstream: up.Addr})
}

// recorder records what reaches the wire, strictly.
type recorder struct {
	header http.Header
	status int
	n      int
}

func (w *recorder) Header() http.Header { return w.header }
func (w *recorder) WriteHeader(c int)   { w.status = c }
func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	w.n += len(p)
	return len(p), nil
}

// TestRecordedUpstreamStatus: an upstream's 503 that an inner layer (a
// retry that gave up) recorded as a Failure still passes through by
// default, with its body; errorpage, the outermost layer, logs it once.
func TestRecordedUpstreamStatus(t *testing.T) {
	var lg logs
	h := newHandler(t, errorpage.Options{Logger: lg.logger()})
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gateway.RecordFailure(w, &gateway.Failure{Class: gateway.ClassUpstreamStatus, Status: 503, Upstream: secretUpstream})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(503)
		_, _ = w.Write([]byte(`{"error":"maintenance"}`))
	})
	w := serve(h.Wrap(inner), "GET", "/", acceptChrome)
	assert.Equal(t, 503, w.Code)
	assert.Equal(t, `{"error":"maintenance"}`, w.Body.String())
	warn := lg.lines(t, "WARN")
	require.Len(t, warn, 1)
	assert.Equal(t, "upstream_status", warn[0]["class"])
}

// TestUpgrade: a 101 and a hijacked connection (WebSocket) pass through.
func TestUpgrade(t *testing.T) {
	h := newHandler(t, errorpage.Options{Upstream5xx: errorpage.UpstreamReplace})
	s := front(t, h.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "echo")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if !assert.NoError(t, err) {
			return
		}
		defer conn.Close()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	})))
	conn, err := net.Dial("tcp", s.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhi\n")
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	assert.Equal(t, "echo", res.Header.Get("Upgrade"))
	line, err := br.ReadString('\n') // the upgraded protocol, after the header
	require.NoError(t, err)
	assert.Equal(t, "echo: hi\n", line)
}

// TestConcurrent: one Handler serves many failing and succeeding requests
// at once (run with -race): pooled state never crosses requests.
func TestConcurrent(t *testing.T) {
	h := newHandler(t, errorpage.Options{Templates: files("open.html", `open {{.RequestID}}`)})
	classes := []gateway.Class{gateway.ClassRefused, gateway.ClassOpen, gateway.ClassTimeout}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				c := classes[i%len(classes)]
				inner := fail(failure(c))
				if i%4 == 0 {
					inner = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
				}
				accept := []string{acceptChrome, acceptAxios, "text/plain"}[i%3]
				w := serve(h.Wrap(inner), "GET", "/", accept, "X-Request-ID", id)
				if i%4 == 0 {
					assert.Equal(t, "ok", w.Body.String())
					continue
				}
				assert.Equal(t, c.Status(), w.Code)
				assert.Contains(t, w.Body.String(), id)
				assert.Equal(t, id, w.Header().Get("X-Request-Id"))
			}
		}()
	}
	wg.Wait()
}

// TestStockReverseProxy: errorpage alone, in front of a ReverseProxy with
// its default ErrorHandler (bare 502, no Failure recorded), still serves
// the page, as an unclassified failure that the proxy already logged.
func TestStockReverseProxy(t *testing.T) {
	up := gatewaytest.NewServer(gatewaytest.Refused)
	t.Cleanup(up.Close)
	var lg logs
	h := newHandler(t, errorpage.Options{Logger: lg.logger()})
	rp := proxyTo(t, up.URL, nil, nil)
	rp.ErrorHandler = nil
	rp.ErrorLog = log.New(io.Discard, "", 0)
	s := front(t, h.Wrap(rp))
	res, body := get(t, s, "GET", "/", acceptChrome)
	assert.Equal(t, 502, res.StatusCode)
	assert.Equal(t, "text/html; charset=utf-8", res.Header.Get("Content-Type"))
	assert.Contains(t, string(body), html.EscapeString(gateway.ClassInternal.Explanation()))
	assertNoLeak(t, string(body), &gateway.Failure{Upstream: up.Addr})
	assert.Empty(t, lg.lines(t, ""), "the stock proxy logged it already")
}

// failureSink is an enclosing layer's writer: it collects the failures
// handed outward with gateway.RecordFailure.
type failureSink struct {
	*httptest.ResponseRecorder
	got []*gateway.Failure
}

func (s *failureSink) RecordFailure(f *gateway.Failure) { s.got = append(s.got, f) }

// TestReplaceAllAnswers: with UpstreamReplaceAll an application's own 500
// loses its body (a stack trace naming internal hosts) but stays what it
// was, an answer: not logged, not handed outward as a failure; a 503 is
// still an upstream_status failure handed outward.
func TestReplaceAllAnswers(t *testing.T) {
	var lg logs
	h := newHandler(t, errorpage.Options{Upstream5xx: errorpage.UpstreamReplaceAll, Logger: lg.logger()})
	for _, status := range []int{500, 503} {
		inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", "db7.corp.example")
			http.Error(w, "panic: dial tcp 10.9.8.7:5432: db7.corp.example", status)
		})
		sink := &failureSink{ResponseRecorder: httptest.NewRecorder()}
		r := httptest.NewRequest("GET", "/orders", nil)
		r.Header.Set("Accept", acceptChrome)
		h.Wrap(inner).ServeHTTP(sink, r)
		assert.Equal(t, status, sink.Code)
		assert.NotContains(t, sink.Body.String(), "db7")
		assert.NotContains(t, sink.Body.String(), "10.9.8.7")
		assert.Empty(t, sink.Header().Get("X-Backend"))
		assert.Contains(t, sink.Body.String(), "The service")
		if status == 500 {
			assert.Empty(t, sink.got, "an answer is not a failure")
		} else if assert.Len(t, sink.got, 1) {
			assert.Equal(t, gateway.ClassUpstreamStatus, sink.got[0].Class)
			assert.Equal(t, 503, sink.got[0].StatusCode())
		}
	}
	assert.Empty(t, lg.lines(t, ""), "the enclosing layer logs the 503; nobody logs the 500")
}

func newInterceptor(w http.ResponseWriter, d gateway.Decider) *gateway.Interceptor {
	i := new(gateway.Interceptor)
	i.Reset(w, d)
	return i
}

// validRequestID is the documented request-ID syntax, written here
// independently of gateway's own check.
func validRequestID(id string) bool { return requestIDSyntax.MatchString(id) }

var requestIDSyntax = regexp.MustCompile(`^[A-Za-z0-9\-_.:+/=@]{1,128}$`)
