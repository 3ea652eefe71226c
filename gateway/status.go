package gateway

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// UpstreamStatus is one upstream's state, as a pool reports it to a
// StatusView.
type UpstreamStatus struct {
	// Upstream is the upstream's host:port.
	Upstream string `json:"upstream"`
	// State is "ok", "resting", "open", "half-open" or another short word.
	State string `json:"state"`
	// Healthy reports whether new requests may be sent to it now.
	Healthy bool `json:"healthy"`
	// InFlight is the number of requests now in flight to it.
	InFlight int64 `json:"in_flight"`
	// Latency is the balancer's latency estimate (e.g. a peak EWMA); 0 if
	// unknown.
	Latency time.Duration `json:"latency_ns"`
	// Requests and Failures count what was sent to it.
	Requests int64 `json:"requests"`
	Failures int64 `json:"failures"`
	// Until is when a resting or open state ends; zero if none.
	Until time.Time `json:"until,omitzero"`
}

// BreakerStatus is one circuit breaker's state, as a breaker reports it to
// a StatusView.
type BreakerStatus struct {
	// Name is the breaker's key: an upstream host:port, a route, or "".
	Name string `json:"name"`
	// State is "closed", "open" or "half-open".
	State string `json:"state"`
	// Requests, Failures and ConsecutiveFailures are the counts in the
	// breaker's current window.
	Requests            uint32 `json:"requests"`
	Failures            uint32 `json:"failures"`
	ConsecutiveFailures uint32 `json:"consecutive_failures"`
	// OpenUntil is when an open breaker turns half-open; zero otherwise.
	OpenUntil time.Time `json:"open_until,omitzero"`
}

// StatusView is an http.Handler that shows a proxy's state for operators:
// JSON for API clients (and for ?format=json), a small self-contained HTML
// page (no scripts, no external resources, refreshing every 5 s) for
// clients that accept text/html. Every source is optional.
//
// It reveals upstream addresses and breaker states: serve it on an admin
// listener or behind authentication, never on the public one.
type StatusView struct {
	// Title heads the page. Default "proxykit status".
	Title string
	// Monitor supplies request, retry and failure counts.
	Monitor *Monitor
	// Upstreams reports the pool's upstreams.
	Upstreams func() []UpstreamStatus
	// Breakers reports circuit breakers.
	Breakers func() []BreakerStatus
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// StatusReport is the JSON document a StatusView serves.
type StatusReport struct {
	Time      time.Time        `json:"time"`
	Traffic   *MonitorSnapshot `json:"traffic,omitempty"`
	Upstreams []UpstreamStatus `json:"upstreams"`
	Breakers  []BreakerStatus  `json:"breakers"`
}

// Report gathers the current state from every source.
func (v *StatusView) Report() StatusReport {
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	rep := StatusReport{Time: now().UTC(), Upstreams: []UpstreamStatus{}, Breakers: []BreakerStatus{}}
	if v.Monitor != nil {
		s := v.Monitor.Snapshot()
		rep.Traffic = &s
	}
	if v.Upstreams != nil {
		rep.Upstreams = append(rep.Upstreams, v.Upstreams()...)
	}
	if v.Breakers != nil {
		rep.Breakers = append(rep.Breakers, v.Breakers()...)
	}
	return rep
}

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"ms": func(d time.Duration) string {
		if d <= 0 {
			return "–"
		}
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
	},
	"clock": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("15:04:05Z")
	},
	"classes": func() []Class { return Classes() },
}).Parse(statusHTML))

// ServeHTTP serves the report.
func (v *StatusView) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rep := v.Report()
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Vary", "Accept")
	var buf bytes.Buffer
	if r.URL.Query().Get("format") != "json" && strings.Contains(r.Header.Get("Accept"), "text/html") {
		title := v.Title
		if title == "" {
			title = "proxykit status"
		}
		if err := statusTemplate.Execute(&buf, struct {
			Title string
			StatusReport
		}{title, rep}); err != nil {
			http.Error(w, "status page failed to render", http.StatusInternalServerError)
			return
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
	} else {
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			http.Error(w, "status report failed to encode", http.StatusInternalServerError)
			return
		}
		h.Set("Content-Type", "application/json")
	}
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf.Bytes())
	}
}
