package gateway

import (
	"context"
	"sync"
	"sync/atomic"
)

// A Trail records which upstreams one client request has tried, across the
// attempts of a retry layer, so that a balancer can send the next attempt
// elsewhere. It is carried in the request's context; see [WithTrail] and
// [TrailFrom].
//
// A balancer records its pick (Add) when it routes an attempt. [Transport]
// records the upstream each request goes out to, unless the balancer
// recorded that same upstream for this attempt already, and records again
// every time net/http's Transport sends the request once more by itself
// (see [Transport.Resends]). So Len counts the attempts that reached a
// balancer or the network, and Last names the upstream the latest one went
// to, with or without a balancer.
//
// A Trail is safe for the attempts of one request running at once (a
// hedged request: each attempt records through a view of its own, see
// [WithHedgeTrail]; one attempt's balancer and Transport run on its
// goroutine): reads take no lock, and a new entry takes a short one. Its
// zero value is empty and ready.
type Trail struct {
	// rec is the request's record when t is a hedged attempt's view of
	// it; nil when t is the record itself.
	rec *Trail

	// The record; used only when rec is nil.
	mu     sync.Mutex               // serialises records
	n      atomic.Int32             // entries published: each is written before n counts it
	inline [4]string                // the first entries
	more   atomic.Pointer[[]string] // the entries past inline, replaced on each record

	// This view's own: the record's for attempts that run one after
	// another, a hedged attempt's for it. A view records from one
	// goroutine at a time (its attempt's: the balancer and the Transport
	// run there), so pick needs no lock; last is read by others.
	pick int32        // 1 + the index of this view's balancer pick not yet matched by a send; 0: none
	last atomic.Int32 // 1 + the index of this view's latest entry; 0: none

	// A hedged attempt's view only: admit vets its first upstream.
	admit  func(upstream string) bool
	routed bool // admit was asked; under the record's mu
	denied bool // admit refused: nothing more is recorded for this view
}

// record returns the Trail that holds the entries.
func (t *Trail) record() *Trail {
	if t.rec != nil {
		return t.rec
	}
	return t
}

// Add records that upstream (host:port) was tried: a balancer's pick.
func (t *Trail) Add(upstream string) {
	t.put(upstream, true)
}

// sent records that a request goes out to upstream: as a new entry, unless
// this view's balancer pick for the attempt named upstream already.
func (t *Trail) sent(upstream string) {
	if t.pick > 0 && t.record().at(t.pick-1) == upstream {
		t.pick = 0
		return
	}
	t.put(upstream, false)
}

// resent records a request that net/http's Transport sent once more by
// itself: always a new entry.
func (t *Trail) resent(upstream string) {
	t.put(upstream, false)
}

// put records upstream; pick says whether it is a balancer's pick, to be
// matched by the send that follows. A hedged attempt's first record is
// vetted by admit first, outside the lock (admit may call back).
func (t *Trail) put(upstream string, pick bool) {
	r := t.record()
	if t.admit != nil && !t.vet(r, upstream) {
		return
	}
	r.mu.Lock()
	if t.denied {
		r.mu.Unlock()
		return
	}
	i := r.n.Load()
	if int(i) < len(r.inline) {
		r.inline[i] = upstream
	} else {
		var old []string
		if p := r.more.Load(); p != nil {
			old = *p
		}
		// Copied, never appended in place: a reader holding the old
		// slice must keep seeing what it saw.
		s := make([]string, len(old)+1, len(old)+4)
		copy(s, old)
		s[len(old)] = upstream
		r.more.Store(&s)
	}
	r.n.Store(i + 1)
	t.last.Store(i + 1)
	t.pick = 0
	if pick {
		t.pick = i + 1
	}
	r.mu.Unlock()
}

// vet asks admit about a hedged attempt's first upstream, once, and
// reports whether the record may go ahead.
func (t *Trail) vet(r *Trail, upstream string) bool {
	r.mu.Lock()
	asked, denied := t.routed, t.denied
	t.routed = true
	r.mu.Unlock()
	if denied {
		return false
	}
	if asked {
		return true
	}
	if t.admit(upstream) {
		return true
	}
	r.mu.Lock()
	t.denied = true
	r.mu.Unlock()
	return false
}

// at returns entry i, which must be published.
func (r *Trail) at(i int32) string {
	if int(i) < len(r.inline) {
		return r.inline[i]
	}
	return (*r.more.Load())[int(i)-len(r.inline)]
}

// Tried reports whether upstream was tried already by any attempt of the
// request.
func (t *Trail) Tried(upstream string) bool {
	if t == nil {
		return false
	}
	r := t.record()
	n := int(r.n.Load())
	for _, u := range r.inline[:min(n, len(r.inline))] {
		if u == upstream {
			return true
		}
	}
	if n > len(r.inline) {
		for _, u := range (*r.more.Load())[:n-len(r.inline)] {
			if u == upstream {
				return true
			}
		}
	}
	return false
}

// Len returns how many upstreams the request's attempts recorded, repeats
// included.
func (t *Trail) Len() int {
	if t == nil {
		return 0
	}
	return int(t.record().n.Load())
}

// Last returns the upstream recorded last through t, or "". For the
// request's own Trail that is the latest of the attempts that run one after
// another; for a hedged attempt's (see [WithHedgeTrail]), that attempt's.
func (t *Trail) Last() string {
	if t == nil {
		return ""
	}
	i := t.last.Load()
	if i == 0 {
		return ""
	}
	return t.record().at(i - 1)
}

type trailKey struct{}

// trailContext carries a Trail in one allocation.
type trailContext struct {
	context.Context
	t Trail
}

// Value returns the Trail for TrailFrom, and defers to the parent otherwise.
func (c *trailContext) Value(key any) any {
	if _, ok := key.(trailKey); ok {
		return &c.t
	}
	return c.Context.Value(key)
}

// TrailFrom returns the Trail carried by ctx, or nil.
func TrailFrom(ctx context.Context) *Trail {
	t, _ := ctx.Value(trailKey{}).(*Trail)
	return t
}

// WithTrail returns a context carrying a Trail, and that Trail: parent and
// its own when it carries one already (an outer layer's, for the same
// request), so that every layer of one request sees one record; else a new
// context carrying an empty Trail, made in one allocation.
//
// Do not keep the context for another request: http.Transport may read a
// request's context after the handler returned (a dial finishing in the
// background reads its values).
func WithTrail(parent context.Context) (context.Context, *Trail) {
	if t := TrailFrom(parent); t != nil {
		return parent, t
	}
	c := &trailContext{Context: parent}
	return c, &c.t
}

// WithHedgeTrail returns a context for an attempt that runs while another
// attempt of the same request is in flight (a hedged request). Its Trail is
// a view of the one parent carries (a new one if none): Tried and Len see
// every attempt's records, Last only this attempt's. Before the attempt's
// first record — a balancer's pick, or [Transport]'s send without one —
// admit is asked about the upstream (outside any lock; the view's Tried
// tells whether another attempt went there). When it returns false nothing
// is recorded for the attempt, and admit is expected to end it: cancel its
// context, which stops the request before anything is sent.
func WithHedgeTrail(parent context.Context, admit func(upstream string) bool) context.Context {
	c := &trailContext{Context: parent}
	if t := TrailFrom(parent); t != nil {
		c.t.rec = t.record()
	}
	c.t.admit = admit
	return c
}
