package admission

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// DefaultMaintenanceRetryAfter is the Retry-After of a maintenance answer
// when the maintenance has no announced end (or overran it).
const DefaultMaintenanceRetryAfter = time.Minute

// ErrMaintenance is wrapped by the Failure of a request answered by
// [Maintenance]; test with errors.Is.
var ErrMaintenance = errors.New("admission: the service is in planned maintenance")

// Maintenance is the switch for planned maintenance of a whole service.
// While it is on, the handler [Maintenance.Wrap] returns answers every
// request at once, without reaching an upstream, with a
// [gateway.ClassMaintenance] failure: 503, Retry-After (the time left
// until the announced end, or RetryAfter), never retried; an errorpage
// layer outside renders it as a page that says the maintenance is planned
// and until when (the Failure's error has a PlannedUntil method). Requests
// that Allow approves pass through as usual.
//
// The zero value is off and ready; set the fields before first use. It
// is safe for concurrent use; switching costs the request path one atomic
// load.
type Maintenance struct {
	// Allow, if set, lets a request through while maintenance is on:
	// the operators' own addresses, health checks, a status page. It is
	// called for every request while maintenance is on, on the request's
	// goroutine.
	Allow func(*http.Request) bool

	// RetryAfter is the Retry-After when no end was announced, or the
	// announced end has passed. Default 1 minute.
	RetryAfter time.Duration

	// Logger receives a line when maintenance starts and stops, and the
	// line of each answered request when no layer outside takes its
	// Failure. Nil means slog.Default() at the time of each call.
	Logger *slog.Logger

	state atomic.Pointer[MaintenanceState]
	now   func() time.Time // tests
}

// MaintenanceState is whether maintenance is on, since when, and until
// when it is planned to last (zero when no end was announced).
type MaintenanceState struct {
	On    bool      `json:"on"`
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
}

func (m *Maintenance) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

func (m *Maintenance) logger() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.Default()
}

// Start turns maintenance on, planned to last until until (zero: no
// announced end). The end is rounded up to the whole minute, the
// precision at which pages tell it to visitors, so that State, the logs,
// Retry-After and the pages all give one end time (never earlier than
// asked). Calling it while on moves the end. It fails, changing nothing,
// for an end that is not in the future.
func (m *Maintenance) Start(until time.Time) error {
	now := m.clock()
	if !until.IsZero() && !until.After(now) {
		return fmt.Errorf("admission: maintenance end %s is not in the future", until.UTC().Format(time.RFC3339))
	}
	st := &MaintenanceState{On: true, Since: now.UTC()}
	if !until.IsZero() {
		st.Until = until.UTC().Truncate(time.Minute)
		if st.Until.Before(until) {
			st.Until = st.Until.Add(time.Minute)
		}
	}
	if old := m.state.Load(); old != nil {
		st.Since = old.Since
	}
	m.state.Store(st)
	attrs := []slog.Attr{}
	if !st.Until.IsZero() {
		attrs = append(attrs, slog.Time("until", st.Until))
	}
	m.logger().LogAttrs(context.Background(), slog.LevelWarn, "admission: maintenance on: every request is answered 503", attrs...)
	return nil
}

// Stop turns maintenance off.
func (m *Maintenance) Stop() {
	if m.state.Swap(nil) != nil {
		m.logger().LogAttrs(context.Background(), slog.LevelWarn, "admission: maintenance off")
	}
}

// State returns the current state.
func (m *Maintenance) State() MaintenanceState {
	if st := m.state.Load(); st != nil {
		return *st
	}
	return MaintenanceState{}
}

// Wrap returns a handler that answers for next while maintenance is on
// (see [Maintenance]). Put it inside the error pages and outside the
// retries: the answer is then rendered, and never retried.
func (m *Maintenance) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := m.state.Load()
		if st == nil || (m.Allow != nil && m.Allow(r)) {
			next.ServeHTTP(w, r)
			return
		}
		f := m.failure(st)
		gateway.HandOff(w, r, f, false, nil, func() { gateway.LogFailure(m.Logger, r, f, 0) })
	})
}

func (m *Maintenance) failure(st *MaintenanceState) *gateway.Failure {
	now := m.clock()
	until := st.Until
	ra := until.Sub(now)
	if until.IsZero() || ra <= 0 {
		until, ra = time.Time{}, m.RetryAfter
		if ra <= 0 {
			ra = DefaultMaintenanceRetryAfter
		}
	}
	f := gateway.NewFailure(gateway.ClassMaintenance, "", &plannedError{until: until})
	f.RetryAfter = ra
	return f
}

// plannedError is the error of a maintenance Failure.
type plannedError struct{ until time.Time }

func (e *plannedError) Error() string {
	if e.until.IsZero() {
		return ErrMaintenance.Error()
	}
	return ErrMaintenance.Error() + " until " + e.until.UTC().Format(time.RFC3339)
}

func (e *plannedError) Is(target error) bool { return target == ErrMaintenance }

// PlannedUntil returns the announced end of the maintenance, zero when
// none was announced. errorpage shows it.
func (e *plannedError) PlannedUntil() time.Time { return e.until }
