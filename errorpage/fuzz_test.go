package errorpage_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
)

// FuzzNegotiate: any Accept header yields one of the three formats without
// panicking, the same one every time, and HTML only when the header names
// text/html or application/xhtml+xml. Seeds: testdata/fuzz/FuzzNegotiate.
func FuzzNegotiate(f *testing.F) {
	for _, s := range []string{acceptChrome, acceptFirefox, acceptAxios, acceptCurl, acceptOldIE, "",
		"text/plain", "text/html;q=0", "text/html;q=0.5, application/json;q=0.6", ";;,,q=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, accept string) {
		h := http.Header{"Accept": {accept}}
		got := errorpage.Negotiate(h)
		if got != errorpage.FormatHTML && got != errorpage.FormatJSON && got != errorpage.FormatText {
			t.Fatalf("Negotiate(%q) = %d", accept, got)
		}
		if again := errorpage.Negotiate(h); again != got {
			t.Fatalf("Negotiate(%q) not deterministic: %v then %v", accept, got, again)
		}
		lower := strings.ToLower(accept)
		if got == errorpage.FormatHTML && !strings.Contains(lower, "text/html") && !strings.Contains(lower, "xhtml+xml") {
			t.Fatalf("Negotiate(%q) = HTML without text/html being named", accept)
		}
	})
}

// FuzzRender: whatever the request (method, Host, path, request ID,
// Accept) and failure, the response is a well-formed error response: an
// error status, a Content-Length that matches, valid UTF-8 JSON or text or
// HTML without any markup from the request, and no upstream address or
// error text. Seeds: testdata/fuzz/FuzzRender.
func FuzzRender(f *testing.F) {
	f.Add("GET", "example.com", "/", "", acceptChrome, uint8(gateway.ClassRefused), uint32(0), false)
	f.Add("POST", "a.example:8443", "/orders/1", "id-1", acceptAxios, uint8(gateway.ClassTimeout), uint32(30), false)
	f.Add("HEAD", "<b>", "/<script>", "<script>", "text/plain", uint8(gateway.ClassOpen), uint32(86400), true)
	f.Add("GET", "\xff\xfe", "/\xc3", "x", "*/*", uint8(200), uint32(1<<31), false)
	h, err := errorpage.New(errorpage.Options{Logger: discardLogger})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, host, path, id, accept string, class uint8, retry uint32, sent bool) {
		r := &http.Request{Method: method, Host: host, URL: &url.URL{Path: path},
			Header: http.Header{"Accept": {accept}, "X-Request-Id": {id}}}
		fl := &gateway.Failure{Class: gateway.Class(class), Upstream: "10.9.8.7:6543", Sent: sent,
			RetryAfter: time.Duration(retry) * time.Second, Err: errors.New("secret-error-text")}
		fl.Status = fl.Class.Status()
		w := httptest.NewRecorder()
		h.Write(w, r, fl)
		if fl.Class == gateway.ClassCanceled {
			if w.Body.Len() != 0 || len(w.Header()) != 0 {
				t.Fatal("wrote a response for a canceled request")
			}
			return
		}
		if want := fl.Class.Status(); w.Code != want { // 400 for client_body, 5xx otherwise
			t.Fatalf("status %d, want %d", w.Code, want)
		}
		body := w.Body.String()
		if method == http.MethodHead {
			if body != "" {
				t.Fatal("HEAD got a body")
			}
		} else if w.Header().Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("Content-Length %s for %d bytes", w.Header().Get("Content-Length"), len(body))
		}
		// A minted request ID is random base32, which may spell "6543".
		shown := strings.ReplaceAll(body, w.Header().Get("X-Request-Id"), "")
		if strings.Contains(shown, "10.9.8.7") || strings.Contains(shown, "6543") || strings.Contains(shown, "secret-error-text") {
			t.Fatalf("leak: %s", body)
		}
		switch ct := w.Header().Get("Content-Type"); ct {
		case "application/problem+json":
			var doc map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil && method != http.MethodHead {
				t.Fatalf("invalid JSON: %v\n%s", err, body)
			}
		case "text/html; charset=utf-8":
			for _, bad := range []string{"<script", "<b>", "<img"} { // the page itself has none of these
				if strings.Contains(body, bad) {
					t.Fatalf("markup %q from the request in the page", bad)
				}
			}
		case "text/plain; charset=utf-8":
		default:
			t.Fatalf("Content-Type %q", ct)
		}
		if method != http.MethodHead && !utf8.ValidString(body) && utf8.ValidString(host+path) {
			t.Fatal("invalid UTF-8 from valid input")
		}
	})
}
