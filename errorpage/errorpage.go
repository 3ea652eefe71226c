// Package errorpage turns proxy failures into honest, branded error
// responses: an HTML page for browsers, an RFC 9457 problem document
// (application/problem+json) for API clients, or plain text, chosen from the
// request's Accept header (see [Negotiate]).
//
// Wrap a handler (typically the httputil.ReverseProxy, or the retry layer
// around it) and every failure the gateway generated below it — a refused
// connection, a timeout, an open circuit breaker, no upstream left — is
// replaced by a response that says what broke, where, what the visitor can
// do, and which request ID to quote. An upstream's own 502/503/504 passes
// through untouched unless Options.Upstream5xx opts in, because an API's
// error body matters to its clients.
//
//	h, err := errorpage.New(errorpage.Options{
//		Brand: errorpage.Brand{Name: "Acme", StatusPageURL: "https://status.acme.example"},
//	})
//	if err != nil { … }
//	http.ListenAndServe(":8080", gateway.RequestID(h.Wrap(proxy)))
//
// Failures reach errorpage through the ResponseWriter chain: the gateway's
// ErrorHandler (and inner layers such as retry) call [gateway.RecordFailure]
// before writing a status. errorpage sits on a [gateway.Interceptor], so
// what it does not replace streams through at no cost.
//
// Nothing that identifies the infrastructure reaches an untrusted client:
// no upstream address, no error text. Operators see both, with a hint on
// what to check, when Options.Debug is set or Options.Trusted approves the
// request.
package errorpage

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// UpstreamMode says what happens to a 502, 503 or 504 that the upstream
// sent itself (as opposed to one the gateway generated).
type UpstreamMode uint8

const (
	// UpstreamPass passes the upstream's response through unchanged: its
	// body may be an API error document that clients parse. The default.
	UpstreamPass UpstreamMode = iota
	// UpstreamReplaceEmptyOrHTML replaces the upstream's response when its
	// body is empty (Content-Length: 0) or HTML (text/html or
	// application/xhtml+xml, such as a bare web server's default error
	// page), and passes JSON and other bodies through.
	UpstreamReplaceEmptyOrHTML
	// UpstreamReplace replaces every upstream 502, 503 and 504.
	UpstreamReplace
)

// Options configure a Handler. The zero value is ready to use; every
// default is listed with its field.
type Options struct {
	// Brand is how the built-in page presents the site: name, logo,
	// colours, support and status-page links. Default: a neutral page.
	Brand Brand

	// Debug shows operator details (failure class, upstream address,
	// attempts, the operator hint and the error text) to every client.
	// Default false. Never enable it on a public endpoint.
	Debug bool

	// Trusted, if set, is called for each failed request; when it returns
	// true the client sees the operator details as if Debug were on. Use
	// it for requests from an office network or carrying an admin session.
	// Default nil: nobody is trusted.
	Trusted func(*http.Request) bool

	// Templates holds custom html/template files for the HTML page, at the
	// root of the file system. For a failure, the first of these that
	// exists is used: "<class>.html" (e.g. "open.html",
	// "connect_timeout.html"), "<status>.html" (e.g. "503.html"),
	// "default.html"; if none exists, or the template fails while
	// rendering, the built-in page is served. Every *.html file is parsed
	// into one set at construction, so files can {{template "x.html" .}}
	// each other. A parse or escaping error, or a page template that fails
	// on a sample page with every field set (a misspelt field), is a
	// constructor error naming the file. Templates receive a *[Page].
	// Default nil: only the built-in page.
	Templates fs.FS

	// ContentSecurityPolicy replaces the Content-Security-Policy sent with
	// HTML pages. Default, for the built-in page: "default-src 'none';
	// style-src 'sha256-…'; img-src data:; base-uri 'none'; form-action
	// 'none'; frame-ancestors 'none'" (the stylesheet allowed by its hash,
	// the logo's origin added to img-src when LogoURL is an http(s) URL);
	// for custom templates the same with style-src 'unsafe-inline'.
	ContentSecurityPolicy string

	// Upstream5xx says what to do with a 502, 503 or 504 the upstream sent
	// itself. Default UpstreamPass.
	Upstream5xx UpstreamMode

	// Logger receives one line per failure that errorpage is the last to
	// see (see [Handler.Wrap]), and a warning when a custom template fails.
	// Default nil: slog.Default() at the time of each call.
	Logger *slog.Logger

	// Now returns the current time, for the time shown on the page and the
	// logged duration. Default time.Now; set it in tests.
	Now func() time.Time
}

// Handler renders failures. It is safe for concurrent use; build it once
// with New.
type Handler struct {
	opts      Options
	now       func() time.Time
	brand     resolvedBrand
	builtin   *template.Template
	custom    *template.Template // nil without Options.Templates
	cspPage   string             // for the built-in page
	cspCustom string             // for custom templates

	states  sync.Pool // of *state
	renders sync.Pool // of *renderState
}

// New returns a Handler for opts. It validates the Brand (URLs, colours,
// e-mail address) and parses the templates; an error names what is wrong.
func New(opts Options) (*Handler, error) {
	rb, err := resolveBrand(opts.Brand)
	if err != nil {
		return nil, err
	}
	h := &Handler{opts: opts, now: opts.Now, brand: rb}
	if h.now == nil {
		h.now = time.Now
	}
	h.builtin, err = builtinTemplate()
	if err != nil {
		return nil, err // a bug: the built-in page is tested
	}
	// img-src data: admits the page's <link rel="icon" href="data:,">, which
	// stops browsers from asking the failing site for /favicon.ico.
	img := " img-src data:;"
	if rb.imgSrc != "" && rb.imgSrc != "data:" {
		img = " img-src data: " + rb.imgSrc + ";"
	}
	const rest = " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	h.cspPage = "default-src 'none'; style-src " + rb.styleHash + ";" + img + rest
	h.cspCustom = "default-src 'none'; style-src 'unsafe-inline';" + img + rest
	if opts.ContentSecurityPolicy != "" {
		h.cspPage, h.cspCustom = opts.ContentSecurityPolicy, opts.ContentSecurityPolicy
	}
	if opts.Templates != nil {
		if h.custom, err = parseCustom(opts.Templates, h.samplePage()); err != nil {
			return nil, err
		}
	}
	h.states.New = func() any { return new(state) }
	h.renders.New = func() any { return new(renderState) }
	return h, nil
}

// parseCustom parses every *.html file at the root of fsys into one set,
// then executes each page template (one Lookup can return: named after a
// class, a status, or "default") with a sample page that has every field
// set. That surfaces, at construction, html/template's escaping errors and
// mistakes such as a misspelt field, which would otherwise fail every
// render. What fails only on some data (say .Operator.Hint, nil for
// untrusted visitors) is left to render time, where it falls back to the
// built-in page.
func parseCustom(fsys fs.FS, sample *Page) (*template.Template, error) {
	names, err := fs.Glob(fsys, "*.html")
	if err != nil {
		return nil, fmt.Errorf("errorpage: reading Options.Templates: %w", err)
	}
	if len(names) == 0 {
		return nil, errors.New("errorpage: Options.Templates has no *.html file at its root (for an embed.FS with a directory, pass fs.Sub(fsys, dir))")
	}
	set, err := template.New("").ParseFS(fsys, names...)
	if err != nil {
		return nil, fmt.Errorf("errorpage: parsing Options.Templates: %w", err)
	}
	for _, name := range names {
		if !isPageTemplate(name) {
			continue // a partial, checked through the pages that use it
		}
		if err := set.ExecuteTemplate(io.Discard, name, sample); err != nil {
			return nil, fmt.Errorf("errorpage: template %s: %w", name, err)
		}
	}
	return set, nil
}

// isPageTemplate reports whether name is one that lookup can return.
func isPageTemplate(name string) bool {
	base, ok := strings.CutSuffix(name, ".html")
	if !ok {
		return false
	}
	if base == "default" {
		return true
	}
	if len(base) == 3 && base[0] >= '1' && base[0] <= '5' && base[1] >= '0' && base[1] <= '9' && base[2] >= '0' && base[2] <= '9' {
		return true
	}
	var c gateway.Class
	return c.UnmarshalText([]byte(base)) == nil
}

// samplePage is the page used to check custom templates at construction.
func (h *Handler) samplePage() *Page {
	p := new(Page)
	r, _ := http.NewRequest(http.MethodGet, "http://example.com/", nil)
	f := gateway.NewFailure(gateway.ClassRefused, "127.0.0.1:1", errors.New("sample"))
	f.RetryAfter = time.Second
	h.buildPage(p, r, f, f.StatusCode(), "sample", true)
	return p
}

// state is the per-request state of Wrap, pooled. It embeds the
// Interceptor by value and is its Decider.
type state struct {
	gateway.Interceptor
	h         *Handler
	replacing *gateway.Failure // what a Discard will replace
	unlogged  bool             // replacing is not errorpage's to log
}

// Decide implements gateway.Decider: replace what the gateway generated,
// and an upstream's own 502/503/504 as Upstream5xx says.
func (st *state) Decide(status int, hdr http.Header, f *gateway.Failure) gateway.Decision {
	if f != nil && f.Class != gateway.ClassUpstreamStatus {
		st.replacing = f
		return gateway.Discard
	}
	if !gateway.IsFailureStatus(status) {
		return gateway.Pass
	}
	if status == http.StatusBadGateway && bareProxyError(hdr) {
		// httputil.ReverseProxy's default ErrorHandler (no gateway in
		// sight): it logged the error itself, and all we know is that the
		// proxy failed.
		st.replacing, st.unlogged = &gateway.Failure{Class: gateway.ClassInternal, Status: status, Sent: true}, true
		return gateway.Discard
	}
	if !st.h.replacesUpstream(hdr) {
		return gateway.Pass
	}
	if f == nil {
		// Classify now: Retry-After is about to be rolled back with the
		// rest of the discarded response's header.
		f = gateway.ClassifyStatus(status, hdr, "", st.h.now())
	}
	st.replacing = f
	return gateway.Discard
}

// bareProxyError reports whether a 502 carrying header was written by
// httputil.ReverseProxy's default ErrorHandler, which sets no header at
// all. A proxied upstream response carries at least the upstream's Date
// (RFC 9110 §6.6.1) or a Content-Type or Content-Length.
func bareProxyError(hdr http.Header) bool {
	return hdr["Date"] == nil && hdr["Content-Type"] == nil && hdr["Content-Length"] == nil && hdr["Transfer-Encoding"] == nil
}

func (h *Handler) replacesUpstream(hdr http.Header) bool {
	switch h.opts.Upstream5xx {
	case UpstreamReplace:
		return true
	case UpstreamReplaceEmptyOrHTML:
		if hdr.Get("Content-Length") == "0" {
			return true
		}
		mt, _, _ := strings.Cut(hdr.Get("Content-Type"), ";")
		mt = trimOWS(mt)
		return strings.EqualFold(mt, "text/html") || strings.EqualFold(mt, "application/xhtml+xml")
	}
	return false
}

// Wrap returns middleware that serves next and replaces the responses of
// failures:
//
//   - A response for which an inner layer recorded a [gateway.Failure] (the
//     gateway's ErrorHandler, a retry layer, a breaker) is discarded —
//     status, headers and body — and replaced by the error response for
//     that failure, negotiated on Accept (see [Handler.Write]).
//   - An upstream's own 502, 503 or 504 passes through, or is replaced, as
//     Options.Upstream5xx says.
//   - The bare 502 of httputil.ReverseProxy's default ErrorHandler (a proxy
//     without gateway.NewErrorHandler; recognised by its empty header) is
//     replaced as gateway.ClassInternal, and not logged again: that
//     handler logged it. Use the gateway's ErrorHandler to get the class.
//   - A client that went away (gateway.ClassCanceled) gets nothing.
//   - Everything else — successes, other errors, 1xx, upgrades, streaming —
//     passes through as the inner handler writes it.
//
// Logging: the layer where a Failure stops travelling outward logs it once.
// errorpage consumes the failures it replaces, so it hands each one on with
// [gateway.RecordFailure] to any enclosing layer that wants it, and logs it
// with [gateway.LogFailure] (warn; debug for a canceled client) only when
// there is none. The same holds for a failure it passes through.
func (h *Handler) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := h.now()
		st := h.states.Get().(*state)
		st.h, st.replacing = h, nil
		st.Reset(w, st)
		serve(next, st, r)

		switch {
		case st.Discarded():
			st.Rollback()
			h.replace(w, r, st.replacing, !st.unlogged, start)
		case st.Committed():
			if f := st.Failure(); f != nil && !st.Forwarded() {
				h.log(r, f, "", start)
			}
		case st.Failure() != nil:
			// A failure was recorded but nothing written: the client left
			// (ErrorHandler writes nothing then), or a layer expects the
			// enclosing one to answer.
			h.replace(w, r, st.Failure(), true, start)
		}
		*st = state{} // drop references to this request's writer and failure
		h.states.Put(st)
	})
}

// serve runs next. A ReverseProxy whose upstream body breaks while being
// copied panics with http.ErrAbortHandler; when the response was being
// discarded (an upstream 5xx errorpage replaces), nothing reached the
// client yet, so the panic is absorbed and the page is written instead.
func serve(next http.Handler, st *state, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler && st.Discarded() {
				return
			}
			panic(v)
		}
	}()
	next.ServeHTTP(&st.Interceptor, r)
}

// replace hands f outward, logs it (if log) when nobody outside will, and
// writes its response.
func (h *Handler) replace(w http.ResponseWriter, r *http.Request, f *gateway.Failure, log bool, start time.Time) {
	if f == nil { // cannot happen: Decide sets it with every Discard
		f = gateway.NewFailure(gateway.ClassInternal, "", nil)
	}
	recorded := gateway.RecordFailure(w, f)
	outer := recorded || !log
	if f.Class == gateway.ClassCanceled {
		if !outer {
			h.log(r, f, "", start)
		}
		if !recorded {
			gateway.AbortIfCanceled(f)
		}
		return
	}
	id := requestID(r)
	if !outer {
		h.log(r, f, id, start)
	}
	h.write(w, r, f, id)
}

// log writes the failure's line. id is the request ID the client gets, when
// errorpage minted it (the request itself does not carry it then).
func (h *Handler) log(r *http.Request, f *gateway.Failure, id string, start time.Time) {
	if id != "" && gateway.RequestIDOf(r) != id {
		lr := r.WithContext(r.Context()) // shallow copy; r is not ours to change
		lr.Header = http.Header{gateway.RequestIDHeader: {id}}
		r = lr
	}
	gateway.LogFailure(h.opts.Logger, r, f, h.now().Sub(start))
}

// requestID returns r's valid X-Request-ID, or a new one.
func requestID(r *http.Request) string {
	if id := gateway.RequestIDOf(r); id != "" {
		return id
	}
	return gateway.NewRequestID()
}

// Write writes the error response for f to w, negotiated on r's Accept
// header: status, headers and (except for HEAD) body, exactly as Wrap would.
// Use it in your own handlers, e.g. in a ReverseProxy ErrorHandler of your
// own. It does not log and does not call gateway.RecordFailure. A nil f is
// written as gateway.ClassInternal; for gateway.ClassCanceled nothing is
// written. r must not be nil.
//
// Headers that belong to a response body (Content-Length,
// Content-Encoding, ETag, Last-Modified, Set-Cookie, caching and security
// headers, trailers …) are removed from w's header map before the error
// response's own are set; others, such as CORS headers set by an enclosing
// handler, are kept.
func (h *Handler) Write(w http.ResponseWriter, r *http.Request, f *gateway.Failure) {
	if f == nil {
		f = gateway.NewFailure(gateway.ClassInternal, "", nil)
	}
	if f.Class == gateway.ClassCanceled {
		return
	}
	h.write(w, r, f, requestID(r))
}

// statusFor returns the status to write for f: its own when it is an error
// status, else its class's.
func statusFor(f *gateway.Failure) int {
	s := f.StatusCode()
	if s < 400 || s > 599 || s == gateway.StatusClientClosedRequest {
		s = f.Class.Status()
		if s < 400 || s > 599 || s == gateway.StatusClientClosedRequest {
			s = http.StatusBadGateway
		}
	}
	return s
}

// renderState is the pooled scratch space for one response.
type renderState struct {
	page Page
	hops [3]Hop
	buf  bytes.Buffer
}

const maxPooledBuffer = 64 << 10

func (h *Handler) write(w http.ResponseWriter, r *http.Request, f *gateway.Failure, id string) {
	status := statusFor(f)
	rs := h.renders.Get().(*renderState)
	rs.buf.Reset()
	rs.page.Hops = rs.hops[:0]
	trusted := h.opts.Debug || (h.opts.Trusted != nil && h.opts.Trusted(r))
	h.buildPage(&rs.page, r, f, status, id, trusted)

	ctype, csp := h.render(&rs.buf, r, &rs.page, Negotiate(r.Header))

	hdr := w.Header()
	cleanHeader(hdr)
	hdr[gateway.RequestIDHeader] = []string{id}
	hdr["Content-Type"] = []string{ctype}
	hdr["Content-Length"] = []string{strconv.Itoa(rs.buf.Len())}
	hdr["Cache-Control"] = []string{"no-store"}
	hdr["X-Content-Type-Options"] = []string{"nosniff"}
	hdr["Content-Security-Policy"] = []string{csp}
	hdr["Referrer-Policy"] = []string{"no-referrer"}
	if rs.page.RetryAfter > 0 {
		hdr["Retry-After"] = []string{strconv.Itoa(rs.page.RetryAfter)}
	}
	addVary(hdr, "Accept")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(rs.buf.Bytes())
	}

	rs.page = Page{}
	rs.hops = [3]Hop{}
	if rs.buf.Cap() <= maxPooledBuffer {
		h.renders.Put(rs)
	}
}

// replacedHeaders describe the body being replaced, or are set anew for
// the error response; Write removes them from the header map.
var replacedHeaders = []string{
	"Accept-Ranges", "Age", "Cache-Control", "Content-Digest", "Content-Disposition",
	"Content-Encoding", "Content-Language", "Content-Length", "Content-Location",
	"Content-Md5", "Content-Range", "Content-Security-Policy",
	"Content-Security-Policy-Report-Only", "Content-Type", "Digest", "Etag", "Expires",
	"Last-Modified", "Link", "Location", "Pragma", "Refresh", "Repr-Digest", "Retry-After",
	"Set-Cookie", "Trailer", "Transfer-Encoding", "X-Content-Type-Options",
}

func cleanHeader(h http.Header) {
	for _, k := range replacedHeaders {
		delete(h, k)
	}
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			delete(h, k)
		}
	}
}

// addVary adds token to the Vary header unless it is listed already.
func addVary(h http.Header, token string) {
	for _, v := range h["Vary"] {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if t = trimOWS(t); t == "*" || strings.EqualFold(t, token) {
				return
			}
		}
	}
	h["Vary"] = append(h["Vary"], token)
}
