package errorpage_test

import (
	"net/http"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
)

func files(kv ...string) fstest.MapFS {
	m := fstest.MapFS{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = &fstest.MapFile{Data: []byte(kv[i+1])}
	}
	return m
}

// TestTemplateLookup: class, then status, then default, then built in.
func TestTemplateLookup(t *testing.T) {
	h := newHandler(t, errorpage.Options{Templates: files(
		"refused.html", `class {{.Class}} {{.RequestID}}`,
		"503.html", `status {{.Status}}`,
		"default.html", `{{template "layout.html" .}}`,
		"layout.html", `default {{.Title}}<style>{{.Style}}</style>`,
	)})
	render := func(c gateway.Class) (string, string) {
		w := serve(h.Wrap(fail(failure(c))), "GET", "/", acceptChrome, "X-Request-ID", "id-1")
		return w.Body.String(), w.Header().Get("Content-Security-Policy")
	}
	body, csp := render(gateway.ClassRefused)
	assert.Equal(t, "class refused id-1", body)
	assert.Contains(t, csp, "style-src 'unsafe-inline'", "custom pages may carry their own inline styles")
	body, _ = render(gateway.ClassNoUpstream)
	assert.Equal(t, "status 503", body)
	body, _ = render(gateway.ClassTimeout)
	assert.True(t, strings.HasPrefix(body, "default This is taking longer"), body)
	assert.Contains(t, body, "--accent:", "the built-in stylesheet is available to custom templates")

	only503 := newHandler(t, errorpage.Options{Templates: files("503.html", `status {{.Status}}`)})
	w := serve(only503.Wrap(fail(failure(gateway.ClassTimeout))), "GET", "/", acceptChrome)
	assert.Contains(t, w.Body.String(), "What you can do", "no match: the built-in page")
	assert.Contains(t, w.Header().Get("Content-Security-Policy"), "style-src 'sha256-")

	// Templates are for HTML; API clients still get the problem document.
	w = serve(h.Wrap(fail(failure(gateway.ClassRefused))), "GET", "/", acceptAxios)
	assert.Equal(t, "refused", decodeProblem(t, w.Body.Bytes()).Class)
}

// TestTemplateFailure: a template that fails while rendering (here, after
// writing some output, it reads .Operator.Hint on one path only, which the
// constructor's check cannot foresee, and Operator is nil for an untrusted
// visitor) yields the built-in page, never a blank or half-written one, and
// an error log.
func TestTemplateFailure(t *testing.T) {
	var lg logs
	h := newHandler(t, errorpage.Options{Logger: lg.logger(), Templates: files(
		"default.html", `<h1>partial output</h1>{{if eq .Path "/boom"}}{{.Operator.Hint}}{{end}}`,
	)})
	w := serve(h.Wrap(fail(failure(gateway.ClassReset))), "GET", "/boom", acceptChrome)
	assert.Equal(t, 502, w.Code)
	body := w.Body.String()
	assert.NotContains(t, body, "partial output")
	assert.True(t, strings.HasPrefix(body, "<!doctype html>"))
	assert.Contains(t, body, "The connection to the service broke")
	errs := lg.lines(t, "ERROR")
	require.Len(t, errs, 1)
	assert.Equal(t, "default.html", errs[0]["template"])
	assert.Contains(t, errs[0]["error"], "nil pointer")
}

// TestTemplateErrors: what is wrong with templates is a constructor error
// that names the file.
func TestTemplateErrors(t *testing.T) {
	cases := []struct {
		name string
		fs   fstest.MapFS
		want string
	}{
		{"parse error", files("ok.html", "fine", "bad.html", "{{.Title"), "bad.html"},
		{"unknown function", files("open.html", "{{nope .Title}}"), "open.html"},
		{"unknown field", files("503.html", "{{.NoSuchField}}"), "503.html"},
		{"ends inside an attribute", files("default.html", `<a href="{{.Path}}`), "default.html"},
		{"missing partial", files("default.html", `{{template "missing.html" .}}`), "default.html"},
		{"page fails on full data", files("refused.html", `{{index .Hops 7}}`), "refused.html"},
		{"partial misuse", files("504.html", `{{template "p.html" .}}`, "p.html", `{{.Nope}}`), "504.html"},
		{"no html at the root", files("templates/default.html", "x"), "no *.html file"},
		{"no page, only misnamed files", files("error.html", "x", "Default.html", "y"),
			`no page, only partials (Default.html, error.html) (names are case-sensitive: rename Default.html to default.html): name a page "default.html", "<status>.html" (e.g. "503.html") or "<class>.html" with class one of internal, dns, refused`},
		{"no page", files("error.html", "x"), `name a page "default.html"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := errorpage.New(errorpage.Options{Templates: c.fs})
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
			assert.True(t, strings.HasPrefix(err.Error(), "errorpage: "), err.Error())
		})
	}
}

// TestBrand: brand settings are validated at construction and shape the
// page and its Content-Security-Policy.
func TestBrand(t *testing.T) {
	bad := []struct {
		brand errorpage.Brand
		want  string
	}{
		{errorpage.Brand{LogoURL: "javascript:alert(1)"}, "LogoURL"},
		{errorpage.Brand{LogoURL: "/logo.png"}, "LogoURL"},
		{errorpage.Brand{SupportURL: "javascript:alert(1)"}, "SupportURL"},
		{errorpage.Brand{StatusPageURL: "status.example"}, "StatusPageURL"},
		{errorpage.Brand{StatusPageURL: "mailto:x@example.com"}, "StatusPageURL"},
		{errorpage.Brand{SupportEmail: "Support <help@example.com>"}, "SupportEmail"},
		{errorpage.Brand{Accent: "red"}, "Accent"},
		{errorpage.Brand{AccentDark: "#12345"}, "AccentDark"},
		{errorpage.Brand{Accent: "#ggg"}, "Accent"},
	}
	for _, c := range bad {
		_, err := errorpage.New(errorpage.Options{Brand: c.brand})
		if assert.Error(t, err, "%+v", c.brand) {
			assert.Contains(t, err.Error(), c.want)
		}
	}

	h := newHandler(t, errorpage.Options{Brand: errorpage.Brand{
		Name:          "Acme",
		LogoURL:       "https://cdn.acme.example/logo.svg",
		SupportURL:    "mailto:help@acme.example",
		StatusPageURL: "https://status.acme.example/",
		Accent:        "#fc0",
	}})
	w := serve(h.Wrap(fail(failure(gateway.ClassDNS))), "GET", "/", acceptChrome, "X-Request-ID", "r1")
	body := w.Body.String()
	assert.Contains(t, w.Header().Get("Content-Security-Policy"), "img-src data: https://cdn.acme.example;")
	assert.Contains(t, body, `<img class="logo" src="https://cdn.acme.example/logo.svg" alt="">`)
	assert.Contains(t, body, `href="mailto:help@acme.example"`)
	assert.Contains(t, body, `href="https://status.acme.example/"`)
	assert.NotContains(t, body, "--accent:#fc0", "a yellow accent is darkened for contrast")
	assert.Contains(t, body, "This usually needs a fix on our side", "dns is not transient")

	data := newHandler(t, errorpage.Options{Brand: errorpage.Brand{
		LogoURL:      "data:image/svg+xml;base64,PHN2Zy8+",
		SupportEmail: "help@acme.example",
	}})
	w = serve(data.Wrap(fail(failure(gateway.ClassDNS))), "GET", "/", acceptChrome, "X-Request-ID", "r1")
	body = w.Body.String()
	assert.Contains(t, body, `src="data:image/svg&#43;xml;base64,PHN2Zy8&#43;"`, "a data: logo survives html/template's URL filter")
	assert.NotContains(t, body, "ZgotmplZ")
	assert.Contains(t, body, `href="mailto:help@acme.example?subject=Error%20502%2C%20request%20ID%20r1"`)
	assert.Contains(t, w.Header().Get("Content-Security-Policy"), "img-src data:;")
}

// TestTemplateDefineStaysInItsPage: every page file is its own template
// set, so a {{define}} in one page overrides that block on its own page
// only — whether the block lives in a partial (layout.html) or in another
// page the file includes (default.html). Were all files one set, the last
// file parsed would win for every page.
func TestTemplateDefineStaysInItsPage(t *testing.T) {
	h := newHandler(t, errorpage.Options{Templates: files(
		// A page used as the layout of another page.
		"default.html", `<h1>{{block "headline" .}}{{.Title}}{{end}}</h1>`,
		"open.html", `{{define "headline"}}resting{{end}}{{template "default.html" .}}`,
		"502.html", `{{template "default.html" .}}`,
		// A partial used as a layout.
		"layout.html", `[{{block "note" .}}{{.Class}}{{end}}]`,
		"timeout.html", `{{define "note"}}slow{{end}}{{template "layout.html" .}}`,
		"reset.html", `{{template "layout.html" .}}`,
		// A page that overrides a block of a page it includes through another.
		"no_upstream.html", `{{define "headline"}}empty{{end}}{{template "502.html" .}}`,
	)})
	render := func(c gateway.Class) string {
		return serve(h.Wrap(fail(failure(c))), "GET", "/", acceptChrome).Body.String()
	}
	assert.Equal(t, "<h1>resting</h1>", render(gateway.ClassOpen))
	assert.Equal(t, "<h1>We can&#39;t reach the service right now</h1>", render(gateway.ClassRefused),
		"502.html through default.html: open.html's headline stays on the open page")
	assert.Equal(t, "<h1>We can&#39;t reach the service right now</h1>", render(gateway.ClassConnectTimeout),
		"504: default.html itself")
	assert.Equal(t, "[slow]", render(gateway.ClassTimeout))
	assert.Equal(t, "[reset]", render(gateway.ClassReset), "timeout.html's note stays on the timeout page")
	assert.Equal(t, "<h1>empty</h1>", render(gateway.ClassNoUpstream))
}

// TestTemplateCheckedAsVisitorsSeeIt: the constructor renders each page
// with the data its requests get. Page.Operator is nil for an untrusted
// visitor, so a template reading {{.Operator.Hint}} unguarded is refused
// unless Debug shows operator details to everyone; and with Trusted (or
// Debug) set, the operator's page is checked too.
func TestTemplateCheckedAsVisitorsSeeIt(t *testing.T) {
	unguarded := files("default.html", `<p>{{.Operator.Hint}}</p>`)
	guarded := files("default.html", `{{with .Operator}}<p>{{.Hint}}</p>{{end}}`)
	misspelt := files("open.html", `{{with .Operator}}<p>{{.Hnt}}</p>{{end}}`)
	trusted := func(*http.Request) bool { return false }

	for name, o := range map[string]errorpage.Options{
		"plain":   {Templates: unguarded},
		"trusted": {Templates: unguarded, Trusted: trusted},
	} {
		_, err := errorpage.New(o)
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), "errorpage: template default.html", name)
		assert.Contains(t, err.Error(), "Operator is nil", name)
		assert.Contains(t, err.Error(), "{{with .Operator}}", "%s: the fix is named", name)
		assert.Contains(t, err.Error(), "nil pointer", "%s: the template error is wrapped", name)
	}
	_, err := errorpage.New(errorpage.Options{Templates: unguarded, Debug: true})
	assert.NoError(t, err, "with Debug every visitor gets Operator")

	for name, o := range map[string]errorpage.Options{
		"plain":   {Templates: guarded},
		"trusted": {Templates: guarded, Trusted: trusted},
		"debug":   {Templates: guarded, Debug: true},
	} {
		_, err := errorpage.New(o)
		assert.NoError(t, err, name)
	}

	// The operator's page is checked whatever the mode: a misspelt operator
	// field is a mistake before anyone turns Debug on.
	for name, o := range map[string]errorpage.Options{
		"plain":   {Templates: misspelt},
		"trusted": {Templates: misspelt, Trusted: trusted},
		"debug":   {Templates: misspelt, Debug: true},
	} {
		_, err := errorpage.New(o)
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), "errorpage: template open.html", name)
		assert.Contains(t, err.Error(), "Hnt", name)
	}

	// What passes the check renders for visitors, not the fallback.
	var lg logs
	h := newHandler(t, errorpage.Options{Logger: lg.logger(), Templates: guarded})
	w := serve(h.Wrap(fail(failure(gateway.ClassRefused))), "GET", "/", acceptChrome)
	assert.Equal(t, "", w.Body.String())
	assert.Empty(t, lg.lines(t, "ERROR"))
}
