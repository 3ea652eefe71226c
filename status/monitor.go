package status

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
)

// Monitor is middleware for the outermost position of a proxy stack. It
// sees every request's final outcome, counts outcomes by status and failure
// class, counts retries (wire [Monitor.ObserveRetry] into the retry
// layer's hook) and changes of the upstream set (wire
// [Monitor.ObserveUpstreamChange] into the pool's OnChange), and writes the one log line for each failed request:
// failures travel outward along the ResponseWriter chain ([gateway.RecordFailure]),
// so the inner layers leave logging to it.
//
// An upstream's own 502/503/504 that reaches the client is counted and
// logged as upstream_status. A client that went away is logged at debug
// level as 499, and its connection is aborted (panic(http.ErrAbortHandler),
// recovered silently by net/http) rather than finished with net/http's
// implicit 200.
//
// The zero value is ready to use. A Monitor must not be copied after first
// use. It is safe for concurrent use.
type Monitor struct {
	// Logger receives the failure lines. Nil means slog.Default().
	Logger *slog.Logger

	// OnFailure, if set, is called once per failed request, after logging,
	// with the final Failure and the time the request took. It must be safe
	// for concurrent use and should return quickly (a metrics counter).
	OnFailure func(r *http.Request, f *gateway.Failure, elapsed time.Duration)

	// OnRequest, if set, is called once per finished request, failed or
	// not, after OnFailure: with the status the client got (200 for
	// net/http's implicit one, 101 for an upgrade, 499 for a client that
	// went away, 0 for a response aborted mid-body), the final Failure or
	// nil, and the time the request took. It is the hook for request
	// metrics (package telemetry's http.server.request.duration). It must
	// be safe for concurrent use and return quickly.
	OnRequest func(r *http.Request, status int, f *gateway.Failure, elapsed time.Duration)

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	startOnce sync.Once
	misWired  sync.Once // the warning that the Monitor is not outermost
	start     time.Time

	requests atomic.Int64
	inFlight atomic.Int64
	retries  atomic.Int64
	hedges   [3]atomic.Int64 // sent, won, denied
	byStatus [6]atomic.Int64 // index status/100; 0 holds "nothing written"
	byClass  [classSlots]atomic.Int64

	upChanges atomic.Int64
	upAdded   atomic.Int64
	upRemoved atomic.Int64
	upChanged atomic.Int64 // unix nanoseconds of the last change; 0: none

	states sync.Pool // of *monitorState
}

// classSlots bounds the failure classes a Monitor counts: more than the
// taxonomy has, so that classes added to gateway need no change here.
const classSlots = 32

type monitorState struct {
	i gateway.Interceptor
}

func (m *Monitor) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Wrap returns next observed by m.
func (m *Monitor) Wrap(next http.Handler) http.Handler {
	m.startOnce.Do(func() { m.start = m.now() })
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, _ := m.states.Get().(*monitorState)
		if st == nil {
			st = new(monitorState)
		}
		st.i.Reset(w, nil) // a nil Decider passes everything through
		m.requests.Add(1)
		m.inFlight.Add(1)
		start := m.now()
		defer func() {
			m.inFlight.Add(-1)
			if v := recover(); v != nil {
				// The handler panicked, typically http.ErrAbortHandler from
				// an upstream body that broke mid-copy: count and log it,
				// then let the panic go on. The state is not recycled.
				m.aborted(r, &st.i, start)
				panic(v)
			}
			m.finish(w, r, &st.i, start)
			st.i = gateway.Interceptor{} // drop references to the request's writer
			m.states.Put(st)
		}()
		next.ServeHTTP(&st.i, r)
	})
}

func (m *Monitor) finish(w http.ResponseWriter, r *http.Request, i *gateway.Interceptor, start time.Time) {
	status := i.Status()
	f := i.Failure()
	if f == nil && status != 0 {
		f = gateway.ClassifyStatus(status, i.Header(), "", start)
	}
	if f != nil && f.Class == gateway.ClassCanceled {
		status = 0 // nothing reached the client
	}
	if f == nil && status == 0 {
		// net/http's implicit 200. A hijack is 101 (Interceptor.Status);
		// an upgrade whose 101 could not be written because the client
		// left is the client's 499 below, as any request whose client left.
		status = http.StatusOK
	}
	if s := status / 100; s >= 1 && s <= 5 {
		m.byStatus[s].Add(1)
	} else {
		m.byStatus[0].Add(1)
	}
	if f == nil {
		if m.OnRequest != nil {
			m.OnRequest(r, status, nil, m.now().Sub(start))
		}
		return
	}
	if status == 0 && f.Class == gateway.ClassCanceled {
		status = f.Class.Status()
	}
	// The outermost layer's duty. The Monitor answers nothing itself; its
	// hooks run before a canceled client's connection is aborted.
	reported := false
	report := func(outside bool) {
		reported = true
		m.report(r, f, start, outside)
		if m.OnRequest != nil {
			m.OnRequest(r, status, f, m.now().Sub(start))
		}
	}
	gateway.HandOff(w, r, f, i.Committed(), func() {}, func() { report(i.Forwarded()) })
	if !reported {
		report(true) // a layer outside took f: it logs
	}
}

// errAborted explains a response that ended in a panic.
var errAborted = errors.New("response aborted: the handler panicked (an upstream body broken mid-copy, for a proxy)")

// aborted counts and logs a request whose handler panicked.
func (m *Monitor) aborted(r *http.Request, i *gateway.Interceptor, start time.Time) {
	f := i.Failure()
	switch {
	case errors.Is(r.Context().Err(), context.Canceled):
		// The client went away mid-response (net/http cancels the context
		// when the connection closes), and the copy to it failed: not the
		// upstream's fault.
		f = &gateway.Failure{Class: gateway.ClassCanceled, Status: gateway.ClassCanceled.Status(),
			Sent: true, Err: context.Cause(r.Context())}
	case f == nil:
		f = &gateway.Failure{Class: gateway.ClassReset, Status: i.Status(), Sent: true, Err: errAborted}
	}
	m.byStatus[0].Add(1) // the client got no complete response
	m.report(r, f, start, i.Forwarded())
	if m.OnRequest != nil {
		m.OnRequest(r, 0, f, m.now().Sub(start))
	}
}

// report counts f by class, logs it and calls the hook. A Failure that was
// forwarded to an enclosing layer is that layer's to log: the Monitor is
// then not the outermost layer, a wiring mistake it says once.
func (m *Monitor) report(r *http.Request, f *gateway.Failure, start time.Time, forwarded bool) {
	cls := f.Class
	if int(cls) >= classSlots {
		cls = gateway.ClassInternal
	}
	m.byClass[cls].Add(1)
	elapsed := m.now().Sub(start)
	if forwarded {
		m.misWired.Do(func() {
			logger := m.Logger
			if logger == nil {
				logger = slog.Default()
			}
			logger.Warn("status.Monitor is not the outermost layer: a layer outside it (errorpage, retry, breaker) also sees and logs each failure; " +
				"wrap the Monitor outside them: h = monitor.Wrap(pages.Wrap(retry.Wrap(proxy))), as proxykit.New does")
		})
	} else {
		gateway.LogFailure(m.Logger, r, f, elapsed)
	}
	if m.OnFailure != nil {
		m.OnFailure(r, f, elapsed)
	}
}

// ObserveRetry counts one retry. Its signature fits the retry layer's
// OnRetry hook: attempt is the attempt about to run (2 for the first
// retry), f the failure that caused it, delay the backoff before it.
func (m *Monitor) ObserveRetry(attempt int, f *gateway.Failure, delay time.Duration) {
	m.retries.Add(1)
}

// ObserveHedge counts one hedge event. Its signature fits the retry
// layer's OnHedge hook.
func (m *Monitor) ObserveHedge(e retry.HedgeEvent, attempt int, delay time.Duration) {
	switch e {
	case retry.HedgeSent:
		m.hedges[0].Add(1)
	case retry.HedgeWon:
		m.hedges[1].Add(1)
	case retry.HedgeDenied:
		m.hedges[2].Add(1)
	}
}

// ObserveUpstreamChange counts one change of the upstream set, and the
// hosts it added and removed. Its signature fits the pool's OnChange hook
// (pool.Pool.OnChange, proxykit.Config.OnUpstreamChange); it runs once per
// change, never on the request path.
func (m *Monitor) ObserveUpstreamChange(ch pool.Change) {
	m.upChanges.Add(1)
	m.upAdded.Add(int64(len(ch.Added)))
	m.upRemoved.Add(int64(len(ch.Removed)))
	at := ch.Time
	if at.IsZero() {
		at = m.now()
	}
	m.upChanged.Store(at.UnixNano())
}

// Snapshot is a Monitor's counters at one moment.
type Snapshot struct {
	// Since is when the Monitor first wrapped a handler.
	Since time.Time `json:"since"`
	// Requests counts requests started; InFlight those not finished.
	Requests int64 `json:"requests"`
	InFlight int64 `json:"in_flight"`
	// Retries counts retries reported through ObserveRetry.
	Retries int64 `json:"retries"`
	// Hedges, HedgesWon and HedgesDenied count the hedges sent, those whose
	// response went to the client, and those the retry budget refused,
	// reported through ObserveHedge.
	Hedges       int64 `json:"hedges"`
	HedgesWon    int64 `json:"hedges_won"`
	HedgesDenied int64 `json:"hedges_denied"`
	// ByStatus counts finished requests by status family: "2xx", "5xx", …,
	// and "none" for requests that got no complete response (client gone,
	// response aborted).
	ByStatus map[string]int64 `json:"by_status"`
	// Failures counts failed requests by class name; every class is
	// present, with zero counts included.
	Failures map[string]int64 `json:"failures"`
	// UpstreamChanges counts the changes of the upstream set reported
	// through ObserveUpstreamChange (discovery answers that changed it,
	// Stack.SetUpstreams); UpstreamsAdded and UpstreamsRemoved count the
	// hosts they added and removed; UpstreamsChanged is the time of the
	// last (absent if none).
	UpstreamChanges  int64     `json:"upstream_changes"`
	UpstreamsAdded   int64     `json:"upstreams_added"`
	UpstreamsRemoved int64     `json:"upstreams_removed"`
	UpstreamsChanged time.Time `json:"upstreams_changed,omitzero"`
}

// Snapshot returns the current counters.
func (m *Monitor) Snapshot() Snapshot {
	// Once orders this read of start after its write in Wrap.
	m.startOnce.Do(func() { m.start = m.now() })
	classes := gateway.Classes()
	s := Snapshot{
		Since:    m.start,
		Requests: m.requests.Load(),
		InFlight: m.inFlight.Load(),
		Retries:  m.retries.Load(),

		Hedges:       m.hedges[0].Load(),
		HedgesWon:    m.hedges[1].Load(),
		HedgesDenied: m.hedges[2].Load(),
		ByStatus:     make(map[string]int64, 6),
		Failures:     make(map[string]int64, len(classes)),

		UpstreamChanges:  m.upChanges.Load(),
		UpstreamsAdded:   m.upAdded.Load(),
		UpstreamsRemoved: m.upRemoved.Load(),
	}
	if ns := m.upChanged.Load(); ns != 0 {
		s.UpstreamsChanged = time.Unix(0, ns)
	}
	families := [...]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}
	for k := range m.byStatus {
		s.ByStatus[families[k]] = m.byStatus[k].Load()
	}
	for _, c := range classes {
		s.Failures[c.String()] = m.byClass[c].Load()
	}
	return s
}
