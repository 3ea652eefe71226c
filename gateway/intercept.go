package gateway

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
)

// Decision is what an Interceptor does with a response once its status is
// known.
type Decision uint8

const (
	// Pass commits the response to the client: status, headers and body go
	// through unchanged, and the response can no longer be replaced.
	Pass Decision = iota
	// Discard drops the response: status, headers and body never reach the
	// client, and the header map is restored to what it was before the
	// attempt. The caller then produces another response (a retry, an error
	// page).
	Discard
)

// A Decider chooses, once per response, whether an Interceptor passes or
// discards it. status is the final status (never 1xx); header is the
// response header as the handler set it; f is the Failure recorded for this
// response, or nil when the handler (an upstream's response) set the status
// itself. Decide may call [Interceptor.RecordFailure] to attach a Failure
// (for example one classified from the status) before returning Pass.
type Decider interface {
	Decide(status int, header http.Header, f *Failure) Decision
}

// A CommitObserver is a Decider that wants to know when a response is
// committed without a decision: a 101 Switching Protocols status, or a
// hijacked connection. From then on the connection belongs to the handler
// for as long as it lasts; a layer that bounds an attempt in time (a
// per-try timeout) must stop doing so.
type CommitObserver interface {
	Committed()
}

// A FailureRecorder is a ResponseWriter that wants to know why the response
// it is about to receive is a failure. The [NewErrorHandler] and passing
// Interceptors hand the Failure to the nearest one with [RecordFailure].
type FailureRecorder interface {
	RecordFailure(f *Failure)
}

// RecordFailure hands f to the nearest FailureRecorder in w's Unwrap chain
// and reports whether there was one. A false result means no enclosing layer
// will see f: the caller is the outermost and should log it.
func RecordFailure(w http.ResponseWriter, f *Failure) bool {
	for {
		if fr, ok := w.(FailureRecorder); ok {
			fr.RecordFailure(f)
			return true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return false
		}
		w = u.Unwrap()
	}
}

type interceptState uint8

const (
	statePending   interceptState = iota // nothing decided or written yet
	statePassed                          // committed to the underlying writer
	stateDiscarded                       // dropped; writes are swallowed
	stateHijacked                        // the connection was taken over
)

// Interceptor is an http.ResponseWriter that holds back a response's status
// until a Decider has seen it, then passes the response through or discards
// it. It is the one mechanism behind retry (discard a failed attempt, run
// another) and errorpage (discard a failure, render a page).
//
// Headers live in the underlying writer's map, so passing costs nothing; a
// snapshot taken when the handler first reaches the map lets Discard undo
// what the discarded attempt set. Attempts that race (a hedged request, see
// [Interceptor.Fork]) each write a map of their own until one wins.
//
// 1xx informational responses go straight through (they do not end the
// response); 101 Switching Protocols and Hijack commit it without asking the
// Decider, because an upgraded connection can never be replayed (a Decider
// that implements [CommitObserver] is told). Flush,
// Hijack and everything http.ResponseController reaches through Unwrap keep
// working. A Flush or Write before WriteHeader is an implicit 200, as in
// net/http.
//
// An Interceptor is used by one handler goroutine at a time, like any
// ResponseWriter; several attempts at one response run at once through
// Interceptors made by [Interceptor.Fork]. Its zero value is not usable:
// call Reset. It may be embedded by value and reused
// with Reset to avoid an allocation per attempt.
type Interceptor struct {
	w         http.ResponseWriter
	d         Decider
	f         *Failure
	status    int
	state     interceptState
	forwarded bool // f was handed to an enclosing FailureRecorder on Pass
	snap      headerSnapshot

	// The header map is claimed when the handler first reaches it: then
	// the snapshot is taken, and w's map is the handler's for good unless
	// Fork made i race others before that (race.go).
	lazy    bool                 // not claimed yet
	snapped bool                 // snap holds w's map from before the attempt
	hdr     http.Header          // while racing: the attempt's own map
	race    *race                // the race i is in, once i knows it
	fork    atomic.Pointer[race] // nil: open; claimedRace: w's map taken; else the race
}

// Reset prepares i for a new response on w: it forgets the previous
// decision and failure, and snapshots w's header map. If the previous
// response was discarded, w's header map is first restored, dropping
// anything the discarded attempt set after its status.
//
// The snapshot is taken when the handler first reaches the header map
// (Header, WriteHeader, Write or Flush), which is the same map as at Reset:
// nothing else writes it in between.
func (i *Interceptor) Reset(w http.ResponseWriter, d Decider) {
	i.Rollback()
	i.w, i.d, i.f, i.status, i.state, i.forwarded = w, d, nil, 0, statePending, false
	i.lazy, i.snapped, i.hdr, i.race = true, false, nil, nil
	if i.fork.Load() != nil {
		i.fork.Store(nil)
	}
}

// Header returns the header map of the response: the underlying writer's,
// or, while i races other attempts (see Fork), the attempt's own.
func (i *Interceptor) Header() http.Header {
	if i.lazy {
		i.claim()
	}
	if i.hdr != nil {
		return i.hdr
	}
	return i.w.Header()
}

// claim makes the underlying header map the handler's, and snapshots it,
// unless a Fork came first: then the handler gets the map Fork made for it.
func (i *Interceptor) claim() {
	i.lazy = false
	if i.fork.Load() == nil && i.fork.CompareAndSwap(nil, claimedRace) {
		if i.d != nil {
			// A nil Decider passes everything: nothing will be
			// discarded, so there is nothing to restore.
			i.snap.take(i.w.Header())
			i.snapped = true
		}
		return
	}
	i.joinRace()
}

// RecordFailure implements FailureRecorder: f explains the response the
// handler is about to write.
func (i *Interceptor) RecordFailure(f *Failure) { i.f = f }

// WriteHeader decides the response on its first final status.
func (i *Interceptor) WriteHeader(code int) {
	switch i.state {
	case statePassed:
		i.w.WriteHeader(code) // net/http reports the superfluous call
		return
	case stateDiscarded, stateHijacked:
		return
	}
	if i.lazy {
		i.claim()
	}
	if i.race != nil {
		i.decideRacing(code)
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		i.w.WriteHeader(code) // informational: not the response yet
		return
	}
	i.status = code
	if code == http.StatusSwitchingProtocols {
		i.observeCommit()
	}
	if code == http.StatusSwitchingProtocols || i.d == nil || i.d.Decide(code, i.w.Header(), i.f) == Pass {
		i.pass()
		i.w.WriteHeader(code)
		return
	}
	i.state = stateDiscarded
	i.snap.restore(i.w.Header())
}

func (i *Interceptor) pass() {
	i.state = statePassed
	if i.f != nil {
		i.forwarded = RecordFailure(i.w, i.f)
	}
}

// Write writes body bytes; before any WriteHeader it implies a 200. A
// discarded response's bytes are swallowed and reported as written, so that
// the handler finishes normally (a ReverseProxy aborts the connection on a
// write error).
func (i *Interceptor) Write(p []byte) (int, error) {
	if i.state == statePending {
		i.WriteHeader(http.StatusOK)
	}
	switch i.state {
	case statePassed:
		return i.w.Write(p)
	case stateHijacked:
		return 0, http.ErrHijacked
	}
	return len(p), nil
}

// Flush implements http.Flusher. Before any WriteHeader it implies a 200.
func (i *Interceptor) Flush() { _ = i.FlushError() }

// FlushError is Flush reporting the underlying writer's error; it is what
// http.ResponseController calls.
func (i *Interceptor) FlushError() error {
	if i.state == statePending {
		i.WriteHeader(http.StatusOK)
	}
	if i.state != statePassed {
		return nil
	}
	if f, ok := i.w.(interface{ FlushError() error }); ok {
		return f.FlushError()
	}
	return http.NewResponseController(i.w).Flush()
}

// errHijackDiscarded is returned by Hijack after the response was discarded.
var errHijackDiscarded = errors.New("gateway: Hijack after the response was discarded")

// Hijack implements http.Hijacker. Taking over the connection commits the
// response: it is never replayed or replaced.
func (i *Interceptor) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if i.state == stateDiscarded {
		return nil, nil, errHijackDiscarded
	}
	if i.lazy {
		i.claim()
	}
	if i.race != nil && i.state != statePassed {
		return nil, nil, errHijackRacing
	}
	c, rw, err := http.NewResponseController(i.w).Hijack()
	if err == nil {
		if i.state == statePending {
			i.observeCommit()
			i.status = http.StatusSwitchingProtocols // ReverseProxy hijacks only to upgrade
		}
		i.state = stateHijacked
	}
	return c, rw, err
}

// observeCommit tells a CommitObserver Decider that the response was
// committed without a decision.
func (i *Interceptor) observeCommit() {
	if o, ok := i.d.(CommitObserver); ok {
		o.Committed()
	}
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (i *Interceptor) Unwrap() http.ResponseWriter { return i.w }

// Status returns the final status decided on; 101 (Switching Protocols)
// when the handler took the connection over before writing one, as
// ReverseProxy does to upgrade after the upstream's 101; or 0 if none was
// written.
func (i *Interceptor) Status() int { return i.status }

// Failure returns the Failure recorded for the response, or nil.
func (i *Interceptor) Failure() *Failure { return i.f }

// Committed reports whether anything reached the underlying writer: a
// passed status, or a hijacked connection. A committed response cannot be
// retried or replaced.
func (i *Interceptor) Committed() bool {
	return i.state == statePassed || i.state == stateHijacked
}

// Discarded reports whether the response was discarded.
func (i *Interceptor) Discarded() bool { return i.state == stateDiscarded }

// Forwarded reports whether, on Pass, the Failure was handed to an enclosing
// FailureRecorder. If not, the caller is the outermost layer to see it.
func (i *Interceptor) Forwarded() bool { return i.forwarded }

// Rollback restores the header map after a discarded response, removing
// anything the handler set after the decision (trailers, for instance). It
// does nothing unless the response was discarded. Call it before writing a
// replacement response.
func (i *Interceptor) Rollback() {
	if i.state == stateDiscarded && i.snapped {
		i.snap.restore(i.w.Header())
	}
}

// headerSnapshot remembers a header map's entries so that a discarded
// response's headers can be removed. Up to len(inline) keys are kept without
// allocating; more fall back to a clone.
type headerSnapshot struct {
	n      int
	inline [8]headerEntry
	over   http.Header
}

type headerEntry struct {
	key  string
	vals []string
}

func (s *headerSnapshot) take(h http.Header) {
	s.n, s.over = 0, nil
	if len(h) > len(s.inline) {
		s.over = h.Clone()
		return
	}
	for k, v := range h {
		s.inline[s.n] = headerEntry{k, v}
		s.n++
	}
}

func (s *headerSnapshot) restore(h http.Header) {
	if s.over != nil {
		clear(h)
		for k, v := range s.over {
			h[k] = v
		}
		return
	}
	for k := range h {
		if !s.has(k) {
			delete(h, k)
		}
	}
	// Restoring the saved slice headers undoes Set and Add: Add appends
	// beyond the saved length, which the saved slice does not see.
	for _, e := range s.inline[:s.n] {
		h[e.key] = e.vals
	}
}

func (s *headerSnapshot) has(k string) bool {
	for _, e := range s.inline[:s.n] {
		if e.key == k {
			return true
		}
	}
	return false
}
