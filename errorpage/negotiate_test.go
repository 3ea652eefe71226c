package errorpage_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/proxykit/proxykit/errorpage"
)

// Accept headers as real clients send them.
const (
	acceptChrome  = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
	acceptFirefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	acceptSafari  = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	acceptEdge    = acceptChrome
	acceptOldIE   = "image/gif, image/jpeg, image/pjpeg, application/x-ms-application, application/xaml+xml, application/x-ms-xbap, */*"
	acceptCurl    = "*/*"
	acceptAxios   = "application/json, text/plain, */*"
	acceptFetch   = "*/*" // fetch() and XMLHttpRequest without an Accept of their own
	acceptGoHTTP  = ""    // Go's http.Client, Python requests without headers: none
)

func TestNegotiate(t *testing.T) {
	html, json, text := errorpage.FormatHTML, errorpage.FormatJSON, errorpage.FormatText
	cases := []struct {
		name   string
		accept []string // nil: no Accept header at all
		want   errorpage.Format
	}{
		{"chrome", []string{acceptChrome}, html},
		{"firefox", []string{acceptFirefox}, html},
		{"safari", []string{acceptSafari}, html},
		{"edge", []string{acceptEdge}, html},
		{"old safari xhtml first", []string{"application/xml,application/xhtml+xml,text/html;q=0.9,text/plain;q=0.8,image/png,*/*;q=0.5"}, html},
		{"curl", []string{acceptCurl}, json},
		{"axios", []string{acceptAxios}, json},
		{"fetch", []string{acceptFetch}, json},
		{"no accept header", nil, json},
		{"empty accept", []string{acceptGoHTTP}, json},
		{"old IE: images and */*", []string{acceptOldIE}, json},
		{"problem+json", []string{"application/problem+json"}, json},
		{"vendor +json", []string{"application/vnd.api+json"}, json},
		{"application/*", []string{"application/*"}, json},
		{"plain text", []string{"text/plain"}, text},
		{"text/* only", []string{"text/*"}, text},
		{"text over json by q", []string{"application/json;q=0.5, text/plain"}, text},
		{"text named, json by wildcard", []string{"text/plain, */*"}, text},
		{"json named, text by wildcard", []string{"application/json, text/*"}, json},
		{"html explicit but refused q=0", []string{"text/html;q=0, */*"}, json},
		{"html tied with json", []string{"text/html, application/json"}, json},
		{"html tied with a wildcard", []string{"text/html, */*"}, html},
		{"html tied with text/*", []string{"text/html;q=0.5, text/*;q=0.5"}, html},
		{"lynx", []string{"text/html, text/plain, text/sgml, */*;q=0.01"}, text},
		{"html preferred over json", []string{"application/json;q=0.9, text/html"}, html},
		{"html below json", []string{"text/html;q=0.5, application/json"}, json},
		{"html only through text/*", []string{"text/*, application/json;q=0.1"}, text},
		{"html only through */*", []string{"*/*;q=1"}, json},
		{"everything q=0", []string{"*/*;q=0"}, json},
		{"nothing acceptable", []string{"image/png"}, json},
		{"json q=0 text acceptable", []string{"application/json;q=0, */*"}, text},
		{"specific range beats wildcard", []string{"*/*;q=0.9, application/json;q=0.1, text/html;q=0.5, text/plain;q=0.2"}, html},
		{"wildcard weight for the unnamed", []string{"*/*;q=0.9, application/json;q=0.1, text/html;q=0.5"}, text},
		{"upper case", []string{"TEXT/HTML,*/*;Q=0.8"}, html},
		{"whitespace and tabs", []string{" text/html \t; q=1 ,\t*/*; q=0.1 "}, html},
		{"q with three decimals", []string{"text/html;q=0.001, application/json;q=0.0001"}, html},
		{"params before q", []string{"text/html;level=1;q=0.9, application/json;q=0.8"}, html},
		{"several Accept lines", []string{"application/json;q=0.1", "text/html"}, html},
		// Malformed: never fails, bad ranges are skipped.
		{"garbage", []string{";;;,,,///"}, json},
		{"missing subtype", []string{"text/, text"}, json},
		{"bad q skipped", []string{"text/html;q=abc, application/json"}, json},
		{"q above 1 skipped", []string{"text/html;q=2, text/plain"}, text},
		{"q too precise skipped", []string{"text/html;q=0.12345, text/plain;q=0.1"}, text},
		{"empty q skipped", []string{"text/html;q=, text/plain;q=0.1"}, text},
		{"only separators", []string{",,,,"}, json},
		{"unicode", []string{"tëxt/html, ☃/☃"}, json},
		{"nul bytes", []string{"text/html\x00, application/json"}, json},
		{"bare wildcard subtype", []string{"*/html"}, json},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			if c.accept != nil {
				h["Accept"] = c.accept
			}
			assert.Equal(t, c.want, errorpage.Negotiate(h), "Accept: %q", c.accept)
		})
	}
}

// TestNegotiateBounded: a huge Accept header is read only up to the bound
// (what lies beyond it does not count), and costs microseconds.
func TestNegotiateBounded(t *testing.T) {
	junk := strings.Repeat("application/x-junk;q=0.5, ", 40_000) // ~1 MiB, net/http's header limit
	h := http.Header{"Accept": {junk + "text/html"}}
	start := time.Now()
	for range 100 {
		assert.Equal(t, errorpage.FormatJSON, errorpage.Negotiate(h), "text/html lies beyond the bound")
	}
	// 100 runs over the first 4 KiB: far below a millisecond each, with
	// room for a loaded CI machine.
	assert.Less(t, time.Since(start), 2*time.Second)

	many := make([]string, 100_000) // many empty Accept lines
	many[len(many)-1] = "text/html"
	assert.Equal(t, errorpage.FormatJSON, errorpage.Negotiate(http.Header{"Accept": many}))

	// Within the bound, the browser's header is honoured.
	assert.Equal(t, errorpage.FormatHTML, errorpage.Negotiate(http.Header{"Accept": {acceptChrome}}))
}

func TestNegotiateAllocs(t *testing.T) {
	h := http.Header{"Accept": {acceptChrome}}
	assert.Zero(t, testing.AllocsPerRun(100, func() { errorpage.Negotiate(h) }))
}

func TestFormatString(t *testing.T) {
	assert.Equal(t, "text/html", errorpage.FormatHTML.String())
	assert.Equal(t, "application/problem+json", errorpage.FormatJSON.String())
	assert.Equal(t, "text/plain", errorpage.FormatText.String())
}
