package status

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// View is an http.Handler that shows a proxy's state for operators:
// JSON for API clients (and for ?format=json), a small self-contained HTML
// page (no scripts, no external resources, refreshing every 5 s) for
// clients that accept text/html. Every source is optional.
//
// Each host has one state ([pool.State]), the same word wherever the host
// appears: the pool's (Upstreams), else the Limiter's drain (Admission),
// else the host-health model's (Breakers). A breaker's state, its counts
// and times, and a concurrency limit are details beside it. Times are
// when something happens next, never a moment already past.
//
// It reveals upstream addresses and breaker states: serve it on an admin
// listener or behind authentication, never on the public one.
type View struct {
	// Title heads the page. Default "proxykit status".
	Title string
	// Monitor supplies request, retry and failure counts.
	Monitor *Monitor
	// Upstreams reports the pool's upstreams.
	Upstreams func() []pool.HostStatus
	// Discovery reports the pool's set of upstreams: when it last
	// changed, and each discovery source's state (stale answers):
	// pool.Pool.Discovery.
	Discovery func() pool.DiscoveryStatus
	// Breakers reports circuit breakers: breaker.Breaker.States or
	// breaker.Hosts.States.
	Breakers func() []breaker.Status
	// Admission reports each host's concurrency limit, in flight, queued
	// and shed: admission.Limiter.Status.
	Admission func() []admission.HostStatus
	// Maintenance reports whether the service is in planned maintenance:
	// admission.Maintenance.State.
	Maintenance func() admission.MaintenanceState
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// Report is the JSON document a View serves.
type Report struct {
	Time      time.Time             `json:"time"`
	Traffic   *Snapshot             `json:"traffic,omitempty"`
	Upstreams []pool.HostStatus     `json:"upstreams"`
	Discovery *pool.DiscoveryStatus `json:"discovery,omitempty"`
	Breakers  []breaker.Status      `json:"breakers"`

	Admission   []admission.HostStatus      `json:"admission,omitempty"`
	Maintenance *admission.MaintenanceState `json:"maintenance,omitempty"`
}

// Report gathers the current state from every source.
func (v *View) Report() Report {
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	rep := Report{Time: now().UTC(), Upstreams: []pool.HostStatus{}, Breakers: []breaker.Status{}}
	if v.Monitor != nil {
		s := v.Monitor.Snapshot()
		rep.Traffic = &s
	}
	if v.Upstreams != nil {
		rep.Upstreams = append(rep.Upstreams, v.Upstreams()...)
	}
	if v.Discovery != nil {
		d := v.Discovery()
		rep.Discovery = &d
	}
	if v.Breakers != nil {
		rep.Breakers = append(rep.Breakers, v.Breakers()...)
	}
	if v.Admission != nil {
		rep.Admission = v.Admission()
	}
	if v.Maintenance != nil {
		m := v.Maintenance()
		rep.Maintenance = &m
	}
	return rep
}

//go:embed view.html
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
	"classes": gateway.Classes,
	"pct":     func(f float64) string { return strconv.Itoa(int(f*100+0.5)) + "%" },
	"tone":    tone,
}).Parse(statusHTML))

// tone is a state's colour on the page: ok in service, warn on its way in
// or out, bad out of service.
func tone(s pool.State) string {
	switch s {
	case pool.StateServing:
		return "ok"
	case pool.StateOut, pool.StateDrained:
		return "bad"
	}
	return "warn"
}

// page is what the HTML template renders: the report, with each host's
// one state and the details of it joined across the sources.
type page struct {
	Title string
	Report
	states   map[string]pool.State
	breakers map[string]*breaker.Status
	limits   map[string]*admission.HostStatus
}

func newPage(title string, rep Report) *page {
	p := &page{Title: title, Report: rep, states: map[string]pool.State{},
		breakers: map[string]*breaker.Status{}, limits: map[string]*admission.HostStatus{}}
	for _, u := range rep.Upstreams {
		p.states[u.Upstream] = u.State
	}
	for i := range rep.Admission {
		a := &rep.Admission[i]
		p.limits[a.Upstream] = a
		if _, ok := p.states[a.Upstream]; !ok && a.State != "" {
			p.states[a.Upstream] = a.State
		}
	}
	for i := range rep.Breakers {
		b := &rep.Breakers[i]
		if b.HostState == "" || b.Overflow {
			continue
		}
		p.breakers[b.Key] = b
		if _, ok := p.states[b.Key]; !ok {
			p.states[b.Key] = b.HostState
		}
	}
	return p
}

// State returns host's one state: serving when no source says otherwise.
func (p *page) State(host string) pool.State {
	if s, ok := p.states[host]; ok {
		return s
	}
	return pool.StateServing
}

// Detail describes host's state in a few words: since when, why, until
// when, its share or its limit.
func (p *page) Detail(host string, until time.Time) string {
	var parts []string
	clock := func(t time.Time) string { return t.UTC().Format("15:04:05Z") }
	if b := p.breakers[host]; b != nil {
		if !b.Since.IsZero() {
			parts = append(parts, "since "+clock(b.Since))
		}
		if b.LastClass != "" {
			parts = append(parts, "last failure: "+b.LastClass)
		}
		switch {
		case !b.OpenUntil.IsZero():
			until = b.OpenUntil
		case !b.RestUntil.IsZero():
			until = b.RestUntil
		}
		if b.HostState == pool.StateWarming && b.Share > 0 {
			parts = append(parts, "share "+strconv.Itoa(int(b.Share*100+0.5))+"%")
		}
		if !b.NextProbe.IsZero() {
			parts = append(parts, "next probe "+clock(b.NextProbe))
		}
	}
	if until.After(p.Time) {
		parts = append(parts, "until "+clock(until))
	}
	if a := p.limits[host]; a != nil {
		if a.State == pool.StateDraining {
			parts = append(parts, strconv.FormatInt(a.Active, 10)+" in flight to finish")
		}
		if a.Limit > 0 {
			s := "limited to " + strconv.FormatInt(a.Limit, 10)
			if a.InFlight >= a.Limit || a.Queued > 0 {
				s += ", at its limit"
			}
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, " · ")
}

// ServeHTTP serves the report.
func (v *View) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
		if err := statusTemplate.Execute(&buf, newPage(title, rep)); err != nil {
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
