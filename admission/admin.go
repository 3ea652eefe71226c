package admission

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/proxykit/proxykit/gateway/pool"
)

// maxDrainWait bounds the wait parameter of a drain.
const maxDrainWait = 10 * time.Minute

// answerTime is how long a drain's answer may take to write after its wait.
const answerTime = 10 * time.Second

// AdminOptions configure the admin handler of [NewAdmin].
type AdminOptions struct {
	// Token is the secret every admin request must carry, as
	// "Authorization: Bearer <token>". It is required, on loopback too: a
	// tokenless endpoint that changes the service can be reached by every
	// local process and, through the operator's browser, by any web page
	// (cross-site requests need no response to do harm).
	Token string
	// Limiter, if set, serves the upstream endpoints.
	Limiter *Limiter
	// Maintenance, if set, serves the maintenance endpoints.
	Maintenance *Maintenance
	// Logger receives one line per change. Nil means slog.Default().
	Logger *slog.Logger
}

// NewAdmin returns the admin handler: the operations that change what the
// service admits, each behind the token. It matches on the last element
// of the path, so it can be mounted under any prefix
// (mux.Handle("/admin/", h)):
//
//	GET    …/upstreams                      the Limiter's Status, as JSON
//	POST   …/drain?upstream=H[&wait=30s]    drain H (host:port or URL); with
//	                                        wait (at most 10m), answer once
//	                                        drained (200) or when wait ends
//	                                        (202)
//	POST   …/resume?upstream=H              send H requests again
//	GET    …/maintenance                    the maintenance state
//	POST   …/maintenance[?until=T|for=D]    maintenance on, planned until
//	                                        T (RFC 3339) or for D (30m)
//	DELETE …/maintenance                    maintenance off
//
// Parameters come in the query or a form body. Answers are JSON. A request
// without the token, or with a wrong one, gets 401 and changes nothing; a
// malformed one (an unknown or repeated parameter, a bad name, time or
// duration) 400, and changes nothing; an unknown upstream 404; a wrong
// method 405. A drain that waits extends its connection's write deadline
// (http.ResponseController) past the wait, so a server's WriteTimeout
// shorter than the wait does not cut its answer; a ResponseWriter wrapper
// between the server and the handler must then have an Unwrap method.
// Upstreams are found under any spelling of their name (see
// [gateway.UpstreamName]). NewAdmin fails without a token, or with one that cannot be
// sent in a header.
func NewAdmin(o AdminOptions) (http.Handler, error) {
	if o.Token == "" {
		return nil, errors.New("admission: NewAdmin needs a Token: the admin endpoints change what the service serves")
	}
	for _, c := range o.Token {
		if c <= ' ' || c == 0x7f || c > '~' {
			return nil, errors.New("admission: the admin Token must be printable ASCII without spaces")
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	sum := sha256.Sum256([]byte(o.Token))
	return &admin{o: o, token: sum}, nil
}

type admin struct {
	o     AdminOptions
	token [32]byte
}

type apiError struct {
	Error string `json:"error"`
}

func (a *admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !a.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="proxykit admin"`)
		writeJSON(w, http.StatusUnauthorized, apiError{"missing or wrong token: send Authorization: Bearer <token>"})
		return
	}
	p := r.URL.Path
	name := p[strings.LastIndexByte(p, '/')+1:]
	switch {
	case name == "upstreams" && a.o.Limiter != nil:
		if !allow(w, r, http.MethodGet) || !a.params(w, r) {
			return
		}
		writeJSON(w, http.StatusOK, a.o.Limiter.Status())
	case (name == "drain" || name == "resume") && a.o.Limiter != nil:
		if !allow(w, r, http.MethodPost) {
			return
		}
		a.upstream(w, r, name)
	case name == "maintenance" && a.o.Maintenance != nil:
		a.maintenance(w, r)
	default:
		writeJSON(w, http.StatusNotFound, apiError{"no such admin endpoint"})
	}
}

func (a *admin) authorized(r *http.Request) bool {
	auth := r.Header.Values("Authorization")
	if len(auth) != 1 {
		return false
	}
	scheme, tok, ok := strings.Cut(auth[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(sum[:], a.token[:]) == 1
}

// allow answers 405 unless r's method is one of methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeJSON(w, http.StatusMethodNotAllowed, apiError{"method not allowed"})
	return false
}

// params parses r's parameters and answers 400 for an unknown or repeated
// one; known are the names allowed.
func (a *admin) params(w http.ResponseWriter, r *http.Request, known ...string) bool {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{"malformed parameters: " + err.Error()})
		return false
	}
	for k, v := range r.Form {
		ok := false
		for _, n := range known {
			ok = ok || k == n
		}
		switch {
		case !ok:
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("unknown parameter %q", k)})
			return false
		case len(v) != 1:
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("parameter %q given %d times", k, len(v))})
			return false
		}
	}
	return true
}

// upstreamAnswer is the answer of drain and resume.
type upstreamAnswer struct {
	Upstream string     `json:"upstream"`
	State    pool.State `json:"state"`
	Active   int64      `json:"active"`
}

func (a *admin) upstream(w http.ResponseWriter, r *http.Request, op string) {
	known := []string{"upstream"}
	if op == "drain" {
		known = append(known, "wait")
	}
	if !a.params(w, r, known...) {
		return
	}
	if r.Form.Get("upstream") == "" {
		writeJSON(w, http.StatusBadRequest, apiError{"missing parameter upstream: give the host to " + op + " as host:port or an http(s) URL, e.g. upstream=10.0.0.5:8080"})
		return
	}
	name, err := canonicalHost(r.Form.Get("upstream"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		return
	}
	var wait time.Duration
	if s := r.Form.Get("wait"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 || wait > maxDrainWait {
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("wait %q: want a duration from 0s to %v", s, maxDrainWait)})
			return
		}
	}
	l := a.o.Limiter
	h := l.lookup(name)
	if h == nil {
		writeJSON(w, http.StatusNotFound, apiError{fmt.Sprintf("unknown upstream %q", name)})
		return
	}
	if op == "resume" {
		_ = l.Resume(name)
	} else {
		_ = l.Drain(name)
	}
	a.o.Logger.LogAttrs(r.Context(), slog.LevelInfo, "admission: admin: "+op,
		slog.String("upstream", name), slog.String("remote", r.RemoteAddr))
	status := http.StatusOK
	if op == "drain" {
		if wait > 0 {
			// The answer comes after the wait: extend the server's
			// WriteTimeout for it, so that a wait longer than the
			// timeout does not lose its answer.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + answerTime))
		}
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		err := l.Drained(ctx, name)
		cancel()
		if err != nil {
			status = http.StatusAccepted
		}
	}
	writeJSON(w, status, upstreamAnswer{Upstream: name, State: h.state(), Active: h.active.Load()})
}

func (a *admin) maintenance(w http.ResponseWriter, r *http.Request) {
	m := a.o.Maintenance
	if !allow(w, r, http.MethodGet, http.MethodPost, http.MethodDelete) {
		return
	}
	switch r.Method {
	case http.MethodGet:
		if !a.params(w, r) {
			return
		}
	case http.MethodDelete:
		if !a.params(w, r) {
			return
		}
		m.Stop()
		a.o.Logger.LogAttrs(r.Context(), slog.LevelInfo, "admission: admin: maintenance off", slog.String("remote", r.RemoteAddr))
	case http.MethodPost:
		if !a.params(w, r, "until", "for") {
			return
		}
		until, err := parseUntil(r.Form.Get("until"), r.Form.Get("for"), m.clock())
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
			return
		}
		if err := m.Start(until); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
			return
		}
		a.o.Logger.LogAttrs(r.Context(), slog.LevelInfo, "admission: admin: maintenance on", slog.String("remote", r.RemoteAddr))
	}
	writeJSON(w, http.StatusOK, m.State())
}

// parseUntil reads the end of a maintenance from an RFC 3339 time or a
// duration from now; neither means no announced end.
func parseUntil(until, dur string, now time.Time) (time.Time, error) {
	switch {
	case until != "" && dur != "":
		return time.Time{}, errors.New("give until or for, not both")
	case until != "":
		t, err := time.Parse(time.RFC3339, until)
		if err != nil {
			return time.Time{}, fmt.Errorf("until %q: want an RFC 3339 time such as 2025-06-01T14:30:00Z", until)
		}
		return t, nil
	case dur != "":
		d, err := time.ParseDuration(dur)
		if err != nil || d <= 0 || d > 30*24*time.Hour {
			return time.Time{}, fmt.Errorf("for %q: want a positive duration such as 45m, at most 720h", dur)
		}
		return now.Add(d), nil
	}
	return time.Time{}, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
