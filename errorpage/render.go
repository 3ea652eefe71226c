package errorpage

import (
	"bytes"
	"embed"
	"encoding/json"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

//go:embed templates/page.html
var builtinFS embed.FS

func builtinTemplate() (*template.Template, error) {
	return template.ParseFS(builtinFS, "templates/page.html")
}

const (
	contentTypeHTML = "text/html; charset=utf-8"
	contentTypeText = "text/plain; charset=utf-8"
	// RFC 9457 registers application/problem+json without parameters, and
	// JSON is UTF-8 by definition (RFC 8259 §8.1): no charset.
	contentTypeJSON = "application/problem+json"
	cspData         = "default-src 'none'; frame-ancestors 'none'"
)

// render writes p in format f to buf and returns the Content-Type and
// Content-Security-Policy to send with it.
func (h *Handler) render(buf *bytes.Buffer, r *http.Request, p *Page, f Format) (ctype, csp string) {
	switch f {
	case FormatHTML:
		if t := h.lookup(p); t != nil {
			err := t.Execute(buf, p)
			if err == nil {
				return contentTypeHTML, h.cspCustom
			}
			buf.Reset() // never a half-written page
			h.logger().LogAttrs(r.Context(), slog.LevelError, "errorpage: custom template failed; served the built-in page",
				slog.String("template", t.Name()), slog.String("error", err.Error()),
				slog.String("request_id", p.RequestID))
		}
		if err := h.builtin.Execute(buf, p); err == nil {
			return contentTypeHTML, h.cspPage
		}
		buf.Reset() // cannot happen: the built-in page is tested; degrade to text
	case FormatJSON:
		writeJSON(buf, p)
		return contentTypeJSON, cspData
	}
	writeText(buf, p)
	return contentTypeText, cspData
}

func (h *Handler) logger() *slog.Logger {
	if h.opts.Logger != nil {
		return h.opts.Logger
	}
	return slog.Default()
}

// lookup returns the custom template for p: class, then status, then
// default; nil if there is none.
func (h *Handler) lookup(p *Page) *template.Template {
	if h.custom == nil {
		return nil
	}
	if t := h.custom[p.Class+".html"]; t != nil {
		return t
	}
	if t := h.custom[strconv.Itoa(p.Status)+".html"]; t != nil {
		return t
	}
	return h.custom["default.html"]
}

// problem is an RFC 9457 problem document with proxykit's extension
// members.
type problem struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Status     int    `json:"status"`
	Detail     string `json:"detail"`
	Instance   string `json:"instance,omitempty"`
	RequestID  string `json:"request_id"`
	Class      string `json:"class"`
	RetryAfter int    `json:"retry_after,omitempty"`
	Until      string `json:"until,omitempty"` // a planned maintenance's announced end
	Time       string `json:"time"`
	// Operator details: only for Debug or trusted requests.
	Hint     string `json:"hint,omitempty"`
	Upstream string `json:"upstream,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	Sent     *bool  `json:"sent,omitempty"`
	Error    string `json:"error,omitempty"`
}

// writeJSON writes p as a problem document. "type" is about:blank, so
// "title" is the status's reason phrase (RFC 9457 §4.2.1); "class" tells
// the failures apart and "detail" explains this one. encoding/json escapes
// <, > and &, so nothing from the request can turn into markup.
func writeJSON(buf *bytes.Buffer, p *Page) {
	doc := problem{
		Type:       "about:blank",
		Title:      p.StatusText,
		Status:     p.Status,
		Detail:     p.Detail,
		Instance:   p.Path,
		RequestID:  p.RequestID,
		Class:      p.Class,
		RetryAfter: p.RetryAfter,
		Until:      p.UntilISO(),
		Time:       p.Time.Format(time.RFC3339),
	}
	if op := p.Operator; op != nil {
		doc.Hint, doc.Upstream, doc.Attempts, doc.Sent, doc.Error = op.Hint, op.Upstream, op.Attempts, &op.Sent, op.Error
	}
	_ = json.NewEncoder(buf).Encode(&doc) // cannot fail: strings and ints
}

// writeText writes p as a few lines of plain text.
func writeText(buf *bytes.Buffer, p *Page) {
	buf.WriteString(strconv.Itoa(p.Status))
	buf.WriteByte(' ')
	buf.WriteString(p.StatusText)
	buf.WriteString("\n\n")
	buf.WriteString(p.Detail)
	buf.WriteString("\n\n")
	if p.Planned {
		buf.WriteString("This is planned maintenance")
		if u := p.UntilText(); u != "" {
			buf.WriteString(", expected to end at " + u)
		}
		buf.WriteString(".\n")
	}
	switch {
	case p.RetryAfter > 0:
		buf.WriteString("Try again in " + p.RetryText() + ".\n")
	case p.ClientFault && p.Status == http.StatusRequestEntityTooLarge:
		buf.WriteString("Send a smaller request: this one is larger than the site accepts.\n")
	case p.ClientFault:
		buf.WriteString("Check your connection, then send the request again.\n")
	case p.Transient:
		buf.WriteString("Try again in a minute: problems like this usually clear up quickly.\n")
	default:
		buf.WriteString("This usually needs a fix on the site's side. Please try again later.\n")
	}
	if u := p.Brand.StatusPageURL; u != "" {
		buf.WriteString("Status page: " + u + "\n")
	}
	switch {
	case p.Brand.SupportURL != "":
		buf.WriteString("Support: " + p.Brand.SupportURL + "\n")
	case p.Brand.SupportEmail != "":
		buf.WriteString("Support: " + p.Brand.SupportEmail + "\n")
	}
	buf.WriteString("\nIf you contact support, quote:\n\n")
	buf.WriteString(p.Reference())
	buf.WriteByte('\n')
	if op := p.Operator; op != nil {
		buf.WriteString("\nFor the operator:\n")
		buf.WriteString("Class:      " + p.Class + "\n")
		buf.WriteString("Upstream:   " + op.Upstream + "\n")
		buf.WriteString("Attempts:   " + strconv.Itoa(op.Attempts) + "\n")
		buf.WriteString("Sent:       " + strconv.FormatBool(op.Sent) + "\n")
		buf.WriteString("Hint:       " + op.Hint + "\n")
		if op.Error != "" {
			buf.WriteString("Error:      " + op.Error + "\n")
		}
	}
}
