// Package errorpage turns proxy failures into honest, branded error
// responses: an HTML page for browsers, an RFC 9457 problem document
// (application/problem+json) for API clients, or plain text, chosen from the
// request's Accept header (see [Negotiate]).
//
// Wrap a handler (typically the httputil.ReverseProxy, or the retry layer
// around it) and every failure the gateway generated below it — a refused
// connection, a timeout, an open circuit breaker, no upstream left — is
// replaced by a response that says what broke, where, what the visitor can
// do, and which request ID to quote. An upstream's own 502/503/504 (or other
// 5xx) passes through untouched unless Options.Upstream5xx opts in, because
// an API's error body matters to its clients — see [UpstreamMode] for what
// that costs.
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
// Nothing that identifies the infrastructure reaches an untrusted client
// from errorpage: no upstream address, no error text. Operators see both,
// with a hint on what to check, when Options.Debug is set or
// Options.Trusted approves the request. The exception is what errorpage
// passes through: an upstream's own error response, body and headers, by
// default (see [UpstreamMode]).
package errorpage

import (
	"bytes"
	"crypto/rand"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// UpstreamMode says what happens to a 5xx response that the upstream sent
// itself, as opposed to a failure the gateway generated (which is always
// replaced). A replaced response keeps its status; its body and every
// header the upstream set are dropped and the error page is served in
// their place, as class upstream_status.
//
// Security trade-off: with [UpstreamPass], the default, the upstream's error
// response reaches the client exactly as the upstream wrote it, body and
// headers. Whatever the upstream puts there — a stack trace, a database
// address ("dial tcp 10.9.8.7:5432"), an internal host name, a Server or
// Via header naming an internal load balancer — every client sees. This is
// the one exception to "no upstream details reach an untrusted client":
// errorpage keeps that promise only for the responses it replaces. It is
// the default because an API's error body is often exactly what its
// clients need. On a public endpoint whose upstreams' error bodies are not
// written for the public, set [UpstreamReplace] (502, 503, 504) or
// [UpstreamReplaceAll] (every 5xx). [UpstreamReplaceEmptyOrHTML] hides a
// web server's default error page but still passes JSON and text bodies.
type UpstreamMode uint8

const (
	// UpstreamPass passes the upstream's response through unchanged: its
	// body may be an API error document that clients parse — or internal
	// details (see [UpstreamMode]). The default.
	UpstreamPass UpstreamMode = iota
	// UpstreamReplaceEmptyOrHTML replaces an upstream 502, 503 or 504 when
	// its body is empty (Content-Length: 0) or HTML (text/html or
	// application/xhtml+xml, such as a bare web server's default error
	// page), and passes JSON and other bodies, and other 5xx, through.
	UpstreamReplaceEmptyOrHTML
	// UpstreamReplace replaces every upstream 502, 503 and 504, the
	// statuses by which an upstream reports that it cannot serve (class
	// upstream_status); other 5xx pass through.
	UpstreamReplace
	// UpstreamReplaceAll replaces what UpstreamReplace does and every
	// other 5xx (500, 501, 505 …) that the wrapped handler writes,
	// including an application's own 500 with its stack trace. Such a
	// response is the application's answer to one request, not a gateway
	// failure: errorpage replaces its body and headers and keeps its
	// status, but neither logs it nor hands it to the enclosing layers as
	// a failure, exactly as if it had passed through.
	UpstreamReplaceAll
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
	// root of the file system. For a failure, the first of these pages
	// that exists is used: "<class>.html" (e.g. "open.html",
	// "connect_timeout.html"), "<status>.html" (e.g. "503.html"),
	// "default.html"; if none exists, or the template fails while
	// rendering, the built-in page is served. Templates receive a *[Page].
	//
	// Every other *.html file is a partial, shared by all pages. Each page
	// is a template set of its own: the partials, the pages it calls with
	// {{template "x.html" .}}, and the page itself, parsed last. So a page
	// can use another page or a partial as its layout and override its
	// {{block}}s with {{define}}, and such a {{define}} changes that page
	// only (open.html's headline never appears on the 502 page). A
	// template that every page shares belongs in a partial.
	//
	// Templates are checked at construction: a parse or escaping error, or
	// a page that fails on the data its requests get, is a constructor
	// error naming the file; a set with no page at all (only partials,
	// e.g. a misnamed "error.html" or "Default.html") is an error naming
	// the page names lookup expects. Each page is executed once with operator
	// details (every field set, so a misspelt field fails) and, unless
	// Debug is on, once as an untrusted visitor sees it, with
	// Page.Operator nil (so an unguarded {{.Operator.Hint}} fails). A page
	// that fails only on some requests' data is left to render time,
	// where it falls back to the built-in page and logs an error.
	//
	// Default nil: only the built-in page.
	Templates fs.FS

	// ContentSecurityPolicy replaces the Content-Security-Policy sent with
	// HTML pages. Default, for the built-in page: "default-src 'none';
	// style-src 'sha256-…'; img-src data:; base-uri 'none'; form-action
	// 'none'; frame-ancestors 'none'" (the stylesheet allowed by its hash,
	// the logo's origin added to img-src when LogoURL is an http(s) URL);
	// for custom templates the same with style-src 'unsafe-inline'.
	ContentSecurityPolicy string

	// Upstream5xx says what to do with a 5xx response the upstream sent
	// itself. Default UpstreamPass: it passes through with its body and
	// headers, which may carry internal details; set UpstreamReplace or
	// UpstreamReplaceAll on a public endpoint (see [UpstreamMode]).
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
	custom    customPages // nil without Options.Templates
	cspPage   string      // for the built-in page
	cspCustom string      // for custom templates

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
		if h.custom, err = h.parseCustom(opts.Templates); err != nil {
			return nil, err
		}
	}
	h.states.New = func() any { return new(state) }
	h.renders.New = func() any { return new(renderState) }
	return h, nil
}

// state is the per-request state of Wrap, pooled. It embeds the
// Interceptor by value and is its Decider.
type state struct {
	gateway.Interceptor
	h         *Handler
	replacing *gateway.Failure // what a Discard will replace
	unlogged  bool             // replacing is not errorpage's to log
	answer    bool             // replacing is an application's 5xx: neither logged nor handed on
}

// Decide implements gateway.Decider: replace what the gateway generated,
// and an upstream's own 5xx as Upstream5xx says.
func (st *state) Decide(status int, hdr http.Header, f *gateway.Failure) gateway.Decision {
	if f != nil && f.Class != gateway.ClassUpstreamStatus {
		st.replacing = f
		return gateway.Discard
	}
	if !gateway.IsFailureStatus(status) {
		if status < 500 || status > 599 || st.h.opts.Upstream5xx != UpstreamReplaceAll {
			return gateway.Pass
		}
		if f == nil {
			f, st.answer = upstreamAnswer(status, hdr, st.h.now()), true
		}
		st.replacing = f
		return gateway.Discard
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

// upstreamAnswer describes an application's own 5xx other than 502, 503
// and 504, for the page that replaces it.
func upstreamAnswer(status int, hdr http.Header, now time.Time) *gateway.Failure {
	f := &gateway.Failure{Class: gateway.ClassUpstreamStatus, Status: status, Sent: true}
	if d, ok := gateway.ParseRetryAfter(hdr.Get("Retry-After"), now); ok {
		f.RetryAfter = d
	}
	return f
}

// replacesUpstream reports whether an upstream's own 502, 503 or 504 with
// header hdr is replaced.
func (h *Handler) replacesUpstream(hdr http.Header) bool {
	switch h.opts.Upstream5xx {
	case UpstreamReplace, UpstreamReplaceAll:
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
//   - An upstream's own 502, 503 or 504 (or, with UpstreamReplaceAll, any
//     5xx) passes through, or is replaced, as Options.Upstream5xx says.
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
// there is none ([gateway.HandOff]). The same holds for a failure it passes
// through.
func (h *Handler) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := h.now()
		st := h.states.Get().(*state)
		st.h, st.replacing = h, nil
		st.Reset(w, st)
		serve(next, st, r)

		switch {
		case st.Discarded() && st.answer:
			st.Rollback()
			h.write(w, r, st.replacing, requestID(r))
		case st.Discarded():
			st.Rollback()
			h.replace(w, r, st.replacing, !st.unlogged, start)
		case st.Committed():
			if f := st.Failure(); f != nil && !st.Forwarded() {
				gateway.HandOff(w, r, f, true, nil, func() { h.log(r, f, "", start) })
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
	var id string // the request ID the page shows, for the log line too
	write := func() {
		id = requestID(r)
		h.write(w, r, f, id)
	}
	gateway.HandOff(w, r, f, false, write, func() {
		if log {
			h.log(r, f, id, start)
		}
	})
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
	return rand.Text() // the form gateway.RequestID mints: 26 characters of base32
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

// statusFor returns the status to write for f: f.StatusCode() (its own
// status when set, e.g. 408 for a client body that timed out, else its
// class's), unless that is no error status errorpage can write — a Failure
// built by hand with Status 200, or 499, which is logged but never written
// — and then its class's status, or 502. (*gateway.Failure).StatusCode
// alone does not guarantee a writable error status.
func statusFor(f *gateway.Failure) int {
	s := f.StatusCode()
	if s < 400 || s > 599 || s == gateway.ClassCanceled.Status() {
		s = f.Class.Status()
		if s < 400 || s > 599 || s == gateway.ClassCanceled.Status() {
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
	if f.Class == gateway.ClassClientBody && r.ProtoMajor < 2 {
		// Whatever is left of the client's body on the wire cannot be told
		// apart from a next request: net/http then sends this response
		// without first trying to drain a (perhaps stalled) body, and
		// closes the connection after it.
		hdr["Connection"] = []string{"close"}
	}
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
