package gateway

import (
	"crypto/rand"
	"net/http"
	"net/textproto"
	"strings"
)

// RequestIDHeader is the header that carries a request's ID, inbound,
// upstream and back to the client.
const RequestIDHeader = "X-Request-Id" // canonical form of X-Request-ID

// maxRequestIDLen is the longest inbound request ID that is kept; a longer
// one is replaced.
const maxRequestIDLen = 128

// RequestID returns middleware that gives every request an ID: a valid
// inbound X-Request-ID is kept (see [validRequestID]); otherwise a new one
// is minted and replaces whatever the client sent. The ID is set on the
// request's header, so that a ReverseProxy forwards it upstream and every
// layer can read it with [RequestIDOf], and on the response's header, so
// that the client can quote it. It costs no allocation when the client's ID
// is kept.
//
// A client cannot strip the ID on its way upstream: an X-Request-ID token
// in the inbound Connection header (which would make ReverseProxy drop the
// header as hop-by-hop) is removed from it.
//
// The middleware sets r.Header in place rather than cloning the request: a
// clone would copy every header of every request.
func RequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header == nil {
			// Allowed for a server-side request built in code;
			// ReverseProxy allocates one the same way.
			r.Header = make(http.Header)
		}
		vals := r.Header[RequestIDHeader]
		if len(vals) != 1 || !validRequestID(vals[0]) {
			vals = []string{newRequestID()}
			r.Header[RequestIDHeader] = vals
		}
		if conn := r.Header["Connection"]; len(conn) > 0 {
			dropConnectionToken(r.Header, conn, RequestIDHeader)
		}
		w.Header()[RequestIDHeader] = vals
		next.ServeHTTP(w, r)
	})
}

// dropConnectionToken removes name, case-insensitively, from the
// comma-separated tokens of conn, h's Connection header, and drops values
// left empty. It allocates only when the token is present.
func dropConnectionToken(h http.Header, conn []string, name string) {
	found := false
	for _, v := range conn {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(tok), name) {
				found = true
			}
		}
	}
	if !found {
		return
	}
	kept := make([]string, 0, len(conn))
	for _, v := range conn {
		var b strings.Builder
		for tok := range strings.SplitSeq(v, ",") {
			tok = textproto.TrimString(tok)
			if tok == "" || strings.EqualFold(tok, name) {
				continue
			}
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(tok)
		}
		if b.Len() > 0 {
			kept = append(kept, b.String())
		}
	}
	if len(kept) == 0 {
		delete(h, "Connection")
		return
	}
	h["Connection"] = kept
}

// RequestIDOf returns r's request ID, or "" if it has none or an invalid
// one. Behind [RequestID] it is never "".
func RequestIDOf(r *http.Request) string {
	vals := r.Header[RequestIDHeader]
	if len(vals) != 1 || !validRequestID(vals[0]) {
		return ""
	}
	return vals[0]
}

// validRequestID reports whether id is safe to keep, log and show: 1 to
// maxRequestIDLen bytes of ASCII letters, digits and "-_.:+/=@". This admits
// UUIDs, ULIDs, base32/base64 IDs and W3C trace IDs, and nothing that needs
// escaping in a header or a log line.
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '_', c == '.', c == ':', c == '+', c == '/', c == '=', c == '@':
		default:
			return false
		}
	}
	return true
}

// newRequestID returns a new random request ID: 26 characters of base32,
// 128 bits from crypto/rand.
func newRequestID() string { return rand.Text() }
