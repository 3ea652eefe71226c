package errorpage_test

// Reliability tests: custom templates fuzzed with hostile page
// data, and http.ResponseController through errorpage's writer.

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// relTemplate is a custom page that puts every field of the template data
// in every HTML context a template author is likely to use: element text,
// quoted attributes, a URL query, a <pre>, a range, a with.
const relTemplate = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}} · {{.Brand.Name}}</title>
<style>{{.Style}}</style></head>
<body class="{{.Class}}" data-status="{{.Status}}">
<h1 title="{{.Title}}">{{.Status}} {{.StatusText}}</h1>
<p>{{.Detail}}</p><p>{{.Where}}</p>
<p id="m">{{.Method}}</p><p id="h" title="{{.Host}}">{{.Host}}</p><p id="p">{{.Path}}</p>
<a href="/again?path={{.Path}}&amp;id={{.RequestID}}">{{.Path}}</a>
<p data-id="{{.RequestID}}">{{.RequestID}} <time datetime="{{.TimeISO}}">{{.TimeText}}</time> {{.RetryText}}</p>
<pre>{{.Reference}}</pre>
<ol>{{range .Hops}}<li class="{{.State}}" title="{{.Role}}">{{.Name}}: {{.Note}}</li>{{end}}</ol>
{{with .Operator}}<dl><dd>{{.Hint}}</dd><dd title="{{.Upstream}}">{{.Upstream}}</dd><dd>{{.Error}}</dd><dd>{{.Attempts}} {{.Sent}}</dd></dl>{{end}}
</body></html>
`

// relStructure counts the characters that make HTML structure. Escaped
// data adds none of them: if a render has more than a benign render of
// the same template, data escaped into markup.
func relStructure(s string) [3]int {
	return [3]int{strings.Count(s, "<"), strings.Count(s, ">"), strings.Count(s, `"`)}
}

// FuzzTemplateData: whatever the request (method, Host, path, request ID)
// and failure (class, Retry-After, error text, trusted or not) and brand
// name, a custom template renders a complete page: an error status, a
// Content-Length that matches, and exactly the HTML structure of a benign
// render — no byte of the data becomes markup in any context. Untrusted
// clients never see the upstream address or the error text.
// Seeds: testdata/fuzz/FuzzTemplateData.
func FuzzTemplateData(f *testing.F) {
	f.Add("Acme", "GET", "example.com", "/", "req-1", "dial tcp: refused", uint8(gateway.ClassRefused), uint32(0), false)
	f.Add(`<b>"'&`, "POST", `evil"><svg onload=alert(1)>`, "/<script>alert(1)</script>", "<i>", `</dd><script>x()</script>`,
		uint8(gateway.ClassTimeout), uint32(30), true)
	fsys := fstest.MapFS{"default.html": {Data: []byte(relTemplate)}}
	baseline := map[bool][3]int{}
	for _, trusted := range []bool{false, true} {
		h, err := errorpage.New(errorpage.Options{Templates: fsys, Debug: trusted, Logger: discardLogger, Now: clock})
		require.NoError(f, err)
		r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		r.Header.Set("Accept", "text/html")
		w := httptest.NewRecorder()
		h.Write(w, r, failure(gateway.ClassRefused))
		require.Equal(f, "text/html; charset=utf-8", w.Header().Get("Content-Type"))
		baseline[trusted] = relStructure(w.Body.String())
	}
	f.Fuzz(func(t *testing.T, brand, method, host, path, id, errText string, class uint8, retry uint32, trusted bool) {
		h, err := errorpage.New(errorpage.Options{Templates: fsys, Debug: trusted, Logger: discardLogger, Now: clock,
			Brand: errorpage.Brand{Name: brand}})
		if err != nil {
			return // a brand the constructor refuses is not served
		}
		r := &http.Request{Method: method, Host: host, URL: &url.URL{Path: path},
			Header: http.Header{"Accept": {"text/html"}, "X-Request-Id": {id}}}
		fl := &gateway.Failure{Class: gateway.Class(int(class) % len(gateway.Classes())), Upstream: "10.9.8.7:6543",
			RetryAfter: time.Duration(retry) * time.Second, Err: errors.New("secret-" + errText)}
		fl.Status = fl.Class.Status()
		w := httptest.NewRecorder()
		h.Write(w, r, fl)
		if fl.Class == gateway.ClassCanceled {
			if w.Body.Len() != 0 {
				t.Fatal("wrote a page for a canceled request")
			}
			return
		}
		body := w.Body.String()
		if want := fl.Class.Status(); w.Code != want { // 400 for client_body, 5xx otherwise
			t.Fatalf("status %d, want %d", w.Code, want)
		}
		if ct := w.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Fatalf("Content-Type %q", ct)
		}
		if method != http.MethodHead {
			if w.Header().Get("Content-Length") != strconv.Itoa(len(body)) {
				t.Fatalf("Content-Length %s for %d bytes", w.Header().Get("Content-Length"), len(body))
			}
			if got, want := relStructure(body), baseline[trusted]; got != want {
				t.Fatalf("HTML structure (<, >, \" counts) %v, a benign render has %v: data became markup\n%s", got, want, body)
			}
			if !strings.Contains(body, `data-status="`+strconv.Itoa(w.Code)+`"`) {
				t.Fatalf("not the custom page (a fallback?):\n%s", body)
			}
		}
		if !trusted && (strings.Contains(body, "10.9.8.7") || strings.Contains(body, "secret-")) {
			t.Fatalf("operator details reached an untrusted client:\n%s", body)
		}
	})
}

// TestReliabilityResponseController: Flush, read and write deadlines and
// Hijack work through errorpage's writer, for responses it passes.
func TestReliabilityResponseController(t *testing.T) {
	gatewaytest.CheckResponseController(t, newHandler(t, errorpage.Options{}).Wrap)
}
