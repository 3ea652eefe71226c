package gateway

import (
	"errors"
	"net/http"
	"sync"
)

// race is shared by the Interceptors of attempts at one response that run
// at the same time (see Interceptor.Fork). None of them touches the
// underlying writer, its header map included, until one wins: each writes
// a header map of its own, and the winner's becomes the response's.
type race struct {
	mu     sync.Mutex
	base   http.Header  // the underlying map before the attempts: each attempt's starts as a copy
	first  http.Header  // the map for the Interceptor that was forked, until it reaches it
	winner *Interceptor // the one whose response goes to the client
}

// claimedRace marks an Interceptor whose handler took the underlying header
// map: it can no longer be forked.
var claimedRace = new(race)

// errHijackRacing is returned by Hijack while the attempt races others.
var errHijackRacing = errors.New("gateway: Hijack by an attempt that races others for the response")

// Fork returns an Interceptor for another attempt at i's response, to run
// at the same time as i's (a hedged request) and decided by d; or nil when
// it is too late: the handler behind i reached the header map already (its
// response has arrived, or it set headers before its upstream answered), or
// an attempt of the race won.
//
// From the first Fork on, the attempts race: each writes a header map of
// its own (a copy of the underlying one as it was) and nothing reaches the
// underlying writer until one wins. A racing attempt's final status is put
// to its Decider only while no attempt has won; the first to Pass wins, and
// its headers become the response's. Every other attempt is discarded
// (without asking its Decider once there is a winner): its writes are
// swallowed. 1xx responses of racing attempts are dropped, and they cannot
// Hijack unless they won. The caller should end the other attempts (cancel
// their contexts) once one wins, and must not let a racing handler outlive
// the request.
//
// Fork may be called from a goroutine other than the one running i's
// handler, but not at the same time as i's Reset: the caller orders them.
// The returned Interceptor is used like i, by its attempt's goroutine; it is
// not to be Reset.
func (i *Interceptor) Fork(d Decider) *Interceptor {
	r := i.fork.Load()
	if r == claimedRace {
		return nil
	}
	if r == nil {
		nr := &race{}
		nr.mu.Lock()
		if !i.fork.CompareAndSwap(nil, nr) {
			nr.mu.Unlock()
			return i.Fork(d) // the handler claimed the map, or another Fork came first
		}
		// The handler has not reached the map, and from now on it never
		// will: it is read here alone.
		nr.base = i.w.Header().Clone()
		nr.first = nr.base.Clone()
		r = nr
	} else {
		r.mu.Lock()
	}
	defer r.mu.Unlock()
	if r.winner != nil {
		return nil
	}
	f := &Interceptor{w: i.w, d: d, race: r, hdr: r.base.Clone()}
	f.fork.Store(r) // forking f adds to the same race
	return f
}

// joinRace gives a forked Interceptor, on its handler's first use of the
// header map, the map Fork made for it.
func (i *Interceptor) joinRace() {
	r := i.fork.Load()
	r.mu.Lock()
	i.race, i.hdr = r, r.first
	r.first = nil
	r.mu.Unlock()
}

// decideRacing decides a racing attempt's response on its status.
func (i *Interceptor) decideRacing(code int) {
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		return // informational: the client is not the attempt's while it races
	}
	r := i.race
	i.status = code
	r.mu.Lock()
	lost := r.winner != nil
	r.mu.Unlock()
	pass := !lost && (code == http.StatusSwitchingProtocols || i.d == nil || i.d.Decide(code, i.hdr, i.f) == Pass)
	if pass {
		r.mu.Lock()
		if r.winner == nil {
			r.winner = i
		} else {
			pass = false // a Decider passed two: the first one won
		}
		r.mu.Unlock()
	}
	if !pass {
		i.state = stateDiscarded
		return
	}
	// Won: nothing else touches the underlying writer from now on. Its
	// header map becomes this attempt's.
	h := i.w.Header()
	for k := range h {
		if _, ok := i.hdr[k]; !ok {
			delete(h, k)
		}
	}
	for k, v := range i.hdr {
		h[k] = v
	}
	i.hdr = nil
	if code == http.StatusSwitchingProtocols {
		i.observeCommit()
	}
	i.pass()
	i.w.WriteHeader(code)
}
