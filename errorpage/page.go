package errorpage

import (
	"errors"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Page is what a template renders: everything about one failure that may be
// shown to the client, already cleaned. Custom templates (see
// [Options.Templates]) receive a *Page; its fields and methods are the
// template API.
//
// Everything in Page except Operator is safe to show anyone: no upstream
// address, no error text.
type Page struct {
	// Status is the HTTP status, e.g. 502; StatusText its reason phrase,
	// "Bad Gateway".
	Status     int
	StatusText string
	// Title is the visitor-facing headline for the failure, e.g. "The
	// service isn't accepting connections".
	Title string
	// Detail says what happened, in plain words, for the failure's class.
	Detail string
	// Class is the failure class's name ("refused", "open", …), as in logs
	// and problem documents.
	Class string
	// Transient reports whether failures of this class usually clear by
	// themselves (a refused connection during a deploy) rather than needing
	// an operator (a bad certificate).
	Transient bool
	// GatewayFault reports that the gateway itself declined to go on: no
	// upstream was available, or its retry budget was spent. The chain then
	// marks the gateway hop.
	GatewayFault bool
	// ClientFault reports that the request stopped between the client and
	// the gateway: the client's request body could not be read — malformed
	// (400), stalled (408) or too large (413); class client_body. The
	// service is not at fault. The chain then marks the gateway hop, the
	// end of the failing link from the browser, and the page asks the
	// visitor to send a smaller request (413) or to check their connection
	// and send it again.
	ClientFault bool

	// Planned reports planned maintenance (class maintenance): the
	// service is down on purpose, and Until says until when if announced.
	Planned bool
	// Until is when a planned maintenance is announced to end, in UTC;
	// zero when no end was announced (or it has passed). The Failure's
	// error tells it through a method PlannedUntil() time.Time, as
	// package admission's maintenance failures do.
	Until time.Time

	// RetryAfter is the number of seconds after which trying again makes
	// sense; 0 when unknown. For overloaded, open and no_upstream it is
	// drawn per response from a window above the advised wait
	// (gateway.SpreadRetryAfter), so that visitors turned away together
	// do not come back together.
	RetryAfter int
	// Reload reports that the page reloads itself after RetryAfter seconds:
	// the delay is known and the method is GET or HEAD, so reloading
	// repeats nothing that should not be repeated.
	Reload bool
	// Retryable reports that the request was a GET or HEAD: offering a
	// "reload" link is safe.
	Retryable bool
	// MaybeApplied reports that the request was not a GET, HEAD or OPTIONS
	// and may have reached the service: a visitor should check whether,
	// say, a form went through before sending it again.
	MaybeApplied bool
	// Where says, in one sentence, where along the chain the request
	// stopped.
	Where string

	// RequestID identifies the request in logs; the client should quote it.
	RequestID string
	// Time is when the failure was rendered, in UTC.
	Time time.Time

	// Method, Host and Path describe the request, truncated to a few hundred
	// bytes. They come from the client: templates must not mark them safe.
	Method string
	Host   string
	Path   string

	// Brand is the handler's brand, with defaults filled in.
	Brand Brand
	// Hops is the chain the request travelled: the client, the gateway, the
	// service, each with its state.
	Hops []Hop
	// Operator holds details for the operator. It is nil unless debug mode
	// is on or the request is trusted (see [Options.Trusted]).
	Operator *Operator

	// Style is the built-in page's stylesheet (colours from the Brand), for
	// custom templates that want the built-in look: <style>{{.Style}}</style>.
	Style template.CSS

	logo   template.URL
	mailto template.URL
}

// Hop is one step of the chain from the client to the service.
type Hop struct {
	// Name is what the hop is: "Your browser", the brand name, "Service".
	Name string
	// Role is the hop's generic role: "You", "Gateway" or "Upstream"
	// (the built-in page shows only Name).
	Role string
	// State is the hop's state.
	State HopState
	// Note is a few words about the hop's state: "Working", "Refused".
	Note string
}

// HopState is the state of one hop of the chain. Its value doubles as a CSS
// class name.
type HopState string

// The hop states.
const (
	HopOK     HopState = "ok"     // the hop did its part
	HopFailed HopState = "failed" // the request stopped here
	HopIdle   HopState = "idle"   // the request never got this far
)

// Failed reports whether the hop is where the request stopped.
func (h Hop) Failed() bool { return h.State == HopFailed }

// Operator holds the details only an operator should see.
type Operator struct {
	// Hint is the failure class's advice for the operator, naming the
	// upstream.
	Hint string
	// Upstream is the upstream's host:port, or "" when none was chosen.
	Upstream string
	// Attempts is how many attempts the request took (at least 1).
	Attempts int
	// Sent reports whether the request may have reached the upstream.
	Sent bool
	// Error is the underlying error's text, or "".
	Error string
}

// TimeText returns Time as "2006-01-02 15:04:05 UTC".
func (p *Page) TimeText() string { return p.Time.Format("2006-01-02 15:04:05 UTC") }

// TimeISO returns Time in RFC 3339, for a <time datetime> attribute.
func (p *Page) TimeISO() string { return p.Time.Format(time.RFC3339) }

// UntilText returns Until as "2006-01-02 15:04 UTC", or "" when unknown.
func (p *Page) UntilText() string {
	if p.Until.IsZero() {
		return ""
	}
	return p.Until.Format("2006-01-02 15:04 UTC")
}

// UntilISO returns Until in RFC 3339, for a <time datetime> attribute, or
// "" when unknown.
func (p *Page) UntilISO() string {
	if p.Until.IsZero() {
		return ""
	}
	return p.Until.Format(time.RFC3339)
}

// RetryText returns RetryAfter in words: "30 seconds", "5 minutes",
// "2 hours"; "" when unknown. Minutes and hours are rounded up.
func (p *Page) RetryText() string { return durationText(p.RetryAfter) }

// LogoURL returns the brand's logo URL, marked safe for a src attribute
// (html/template would otherwise reject a data: URI). It was validated when
// the Handler was built.
func (p *Page) LogoURL() template.URL { return p.logo }

// SupportMailto returns a mailto: URL for the brand's support e-mail with a
// subject quoting the status and request ID, or "" if none is configured.
func (p *Page) SupportMailto() template.URL { return p.mailto }

// Reference returns the lines a visitor should quote to support: request
// ID, time and error, one per line.
func (p *Page) Reference() string {
	return "Request ID: " + p.RequestID + "\nTime:       " + p.TimeText() +
		"\nError:      " + strconv.Itoa(p.Status) + " " + p.Class
}

// durationText renders seconds for people, rounding up.
func durationText(s int) string {
	switch {
	case s <= 0:
		return ""
	case s == 1:
		return "1 second"
	case s < 120:
		return strconv.Itoa(s) + " seconds"
	case s < 2*3600:
		return strconv.Itoa((s+59)/60) + " minutes"
	}
	return strconv.Itoa((s+3599)/3600) + " hours"
}

// classCopy is the visitor-facing wording for one failure class.
type classCopy struct {
	title     string // the page's headline
	note      string // the failing hop's note
	transient bool   // usually clears by itself
}

var classCopies = map[gateway.Class]classCopy{
	gateway.ClassInternal:       {"Something went wrong on our side", "Error", true},
	gateway.ClassDNS:            {"We can't reach the service right now", "Not found", false},
	gateway.ClassRefused:        {"We can't reach the service right now", "Refused", true},
	gateway.ClassUnreachable:    {"We can't reach the service right now", "Unreachable", true},
	gateway.ClassConnectTimeout: {"We can't reach the service right now", "No answer", true},
	gateway.ClassTLS:            {"We can't connect to the service securely", "Not secure", false},
	gateway.ClassReset:          {"The connection to the service broke", "Dropped", true},
	gateway.ClassMalformed:      {"The service gave an answer we can't use", "Bad answer", false},
	gateway.ClassTimeout:        {"This is taking longer than it should", "Too slow", true},
	gateway.ClassUpstreamStatus: {"The service ran into a problem", "Error", true},
	gateway.ClassOpen:           {"The service is recovering", "Resting", true},
	gateway.ClassNoUpstream:     {"No server can take your request right now", "Unavailable", true},
	gateway.ClassCanceled:       {"The request was canceled", "Canceled", true},
	// The client's fault (see clientBodyCopy): nothing may suggest that the
	// service is down; the gateway hop carries the note.
	gateway.ClassClientBody: {"We couldn't read your request", "Unreadable request", false},
	gateway.ClassStaleConn:  {"The connection to the service was interrupted", "Interrupted", true},
	// The gateway turned the request away before the service saw it, so
	// that the service keeps up with the rest.
	gateway.ClassOverloaded: {"The service is too busy right now", "Busy", true},
	// The service is down on purpose; the page says so (Page.Planned).
	gateway.ClassMaintenance: {"We're down for planned maintenance", "Planned maintenance", true},
	// The service answered; the gateway's own rules declined the answer.
	gateway.ClassResponseRejected: {"We can't show you this response", "Declined", false},
}

// clientBodyCopy refines ClassClientBody by the Failure's status.
var clientBodyCopy = map[int]classCopy{
	http.StatusRequestTimeout:        {"Your request didn't arrive completely", "Incomplete request", true},
	http.StatusRequestEntityTooLarge: {"Your request is too large", "Too large", false},
}

// upstreamStatusCopy refines ClassUpstreamStatus by the upstream's status.
var upstreamStatusCopy = map[int]classCopy{
	http.StatusServiceUnavailable: {"The service is temporarily unavailable", "Unavailable", true},
	http.StatusGatewayTimeout:     {"The service ran out of time", "Timed out", true},
}

func copyFor(f *gateway.Failure, status int) classCopy {
	switch f.Class {
	case gateway.ClassUpstreamStatus:
		if c, ok := upstreamStatusCopy[status]; ok {
			return c
		}
	case gateway.ClassClientBody:
		if c, ok := clientBodyCopy[status]; ok {
			return c
		}
	}
	if c, ok := classCopies[f.Class]; ok {
		return c
	}
	return classCopies[gateway.ClassInternal]
}

// isGatewayFault reports whether the gateway itself declined to go on: no
// upstream was left, or the retry budget was spent
// ([gateway.ErrRetryBudget]). The page then marks the gateway hop.
func isGatewayFault(f *gateway.Failure) bool {
	return f.Class == gateway.ClassNoUpstream || errors.Is(f, gateway.ErrRetryBudget)
}

// isClientFault reports whether the request stopped between the client and
// the gateway: its body could not be read. The page then marks the link
// from the browser to the gateway, not the service.
func isClientFault(f *gateway.Failure) bool { return f.Class == gateway.ClassClientBody }

// hops builds the chain for a failure.
func hops(dst []Hop, f *gateway.Failure, c classCopy, gatewayName string, gatewayFault bool) []Hop {
	client := Hop{Name: "Your browser", Role: "You", State: HopOK, Note: "Working"}
	gw := Hop{Name: gatewayName, Role: "Gateway", State: HopOK, Note: "Working"}
	svc := Hop{Name: "Service", Role: "Upstream", State: HopFailed, Note: c.note}
	switch {
	case isClientFault(f):
		// The chain draws each hop's link from the one before in the hop's
		// state: a failed gateway hop is a broken browser → gateway link.
		gw.State, gw.Note = HopFailed, c.note
		svc.State, svc.Note = HopIdle, "Not at fault"
	case f.Class == gateway.ClassResponseRejected:
		gw.State, gw.Note = HopFailed, c.note
		svc.State, svc.Note = HopOK, "Answered"
	case gatewayFault:
		gw.State, svc.State = HopFailed, HopIdle
		if f.Class == gateway.ClassNoUpstream {
			gw.Note, svc.Note = "No server", "Not contacted"
		} else {
			gw.Note, svc.Note = "Stopped retrying", "Not retried"
		}
	}
	return append(dst, client, gw, svc)
}

// where says where along the chain the request stopped; status is the one
// the client gets.
func where(f *gateway.Failure, status int, brand string, gatewayFault bool) string {
	const ok = "Your browser and connection are working. "
	gw := brand
	if gw == "" {
		gw = "the gateway"
	}
	switch {
	case isClientFault(f):
		what := "could not be read completely"
		switch status {
		case http.StatusRequestTimeout:
			what = "did not arrive completely in time"
		case http.StatusRequestEntityTooLarge:
			what = "is larger than " + gw + " accepts"
		}
		return "The problem is between your browser and " + gw + ": your request " + what +
			". Nothing points to a problem with the service."
	case f.Class == gateway.ClassNoUpstream:
		return ok + upperFirst(gw) + " has no server available to pass your request to."
	case gatewayFault:
		return ok + upperFirst(gw) + " stopped retrying so that the service can recover."
	case f.Class == gateway.ClassOpen:
		return ok + upperFirst(gw) + " is holding requests back while the service recovers."
	case f.Class == gateway.ClassOverloaded:
		return ok + "The service is at capacity: " + gw + " turned your request away at once, rather than keep you waiting, so that it keeps up with the rest."
	case f.Class == gateway.ClassMaintenance:
		return ok + "The service is down for planned maintenance; " + gw + " is answering in its place."
	case f.Class == gateway.ClassResponseRejected:
		return ok + "The service answered, and " + gw + " declined to pass that answer on."
	}
	return ok + "The problem is between " + gw + " and the service."
}

func upperFirst(s string) string {
	if s != "" && 'a' <= s[0] && s[0] <= 'z' {
		return string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

// clip bounds a string from the request for display.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary so the result stays valid UTF-8.
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

const (
	maxShown      = 256            // bytes of host or path shown
	maxRetryAfter = 24 * time.Hour // as gateway.ParseRetryAfter caps it
)

// buildPage fills p for f, as seen by request r.
func (h *Handler) buildPage(p *Page, r *http.Request, f *gateway.Failure, status int, id string, trusted bool) {
	c := copyFor(f, status)
	gf := isGatewayFault(f)
	*p = Page{
		Status:       status,
		StatusText:   http.StatusText(status),
		Title:        c.title,
		Detail:       f.Class.Explanation(),
		Class:        f.Class.String(),
		Transient:    c.transient,
		GatewayFault: gf,
		ClientFault:  isClientFault(f),
		RequestID:    id,
		Time:         h.now().UTC().Truncate(time.Second),
		Brand:        h.brand.Brand,
		Hops:         hops(p.Hops[:0], f, c, h.brand.gatewayName, gf),
		Style:        h.brand.style,
		logo:         h.brand.logo,
	}
	if p.StatusText == "" {
		p.StatusText = "Error"
	}
	if gf && f.Class != gateway.ClassNoUpstream {
		p.Title = "The service is struggling right now"
		p.Detail += " The gateway stopped retrying to give it room to recover."
	}
	// One draw per response: the header, the reload and the problem
	// document all send this value.
	p.RetryAfter = gateway.SpreadRetryAfter(f.Class, min(f.RetryAfter, maxRetryAfter))
	if f.Class == gateway.ClassMaintenance {
		p.Planned = true
		var pu interface{ PlannedUntil() time.Time }
		if errors.As(f.Err, &pu) {
			if u := pu.PlannedUntil().UTC(); u.After(p.Time) {
				p.Until = u.Truncate(time.Minute)
				if u != p.Until {
					p.Until = p.Until.Add(time.Minute) // never promise earlier than planned
				}
				p.Detail += " It is planned to end at " + p.UntilText() + "."
			}
		}
	}
	if r != nil {
		p.Method = clip(r.Method, 16)
		p.Host = clip(r.Host, maxShown)
		if r.URL != nil {
			p.Path = clip(r.URL.EscapedPath(), maxShown)
		}
		p.Retryable = r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == ""
	}
	p.Reload = p.Retryable && p.RetryAfter > 0
	p.MaybeApplied = f.Sent && !p.Retryable && p.Method != http.MethodOptions
	p.Where = where(f, status, h.brand.Name, gf)
	if h.brand.SupportEmail != "" {
		p.mailto = mailto(h.brand.SupportEmail, "Error "+strconv.Itoa(status)+", request ID "+id)
	}
	if trusted {
		attempts := f.Attempts
		if attempts < 1 {
			attempts = 1
		}
		op := &Operator{Hint: f.Hint(), Upstream: f.Upstream, Attempts: attempts, Sent: f.Sent}
		if f.Err != nil {
			op.Error = f.Err.Error()
		}
		p.Operator = op
	}
}
