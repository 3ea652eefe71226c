package gateway

import "context"

// A Trail records which upstreams one client request has tried, across the
// attempts of a retry layer, so that a balancer can send the next attempt
// elsewhere. It is carried in the request's context; see [TrailFrom].
//
// A balancer records its pick (Add) when it routes an attempt. [Transport]
// records the upstream each request goes out to, unless the balancer
// recorded that same upstream for this attempt already, and records again
// every time net/http's Transport sends the request once more by itself
// (see [Transport.Resends]). So Len counts the attempts that reached a
// balancer or the network, and Last names the upstream the latest one went
// to, with or without a balancer.
//
// A Trail is used by one request at a time: attempts run one after another.
// Its zero value is empty and ready.
type Trail struct {
	inline [4]string
	n      int
	more   []string
	marked int // Len when Transport last recorded a send
}

// Add records that upstream (host:port) was tried.
func (t *Trail) Add(upstream string) {
	if t.n < len(t.inline) {
		t.inline[t.n] = upstream
		t.n++
		return
	}
	t.more = append(t.more, upstream)
}

// Tried reports whether upstream was tried already.
func (t *Trail) Tried(upstream string) bool {
	if t == nil {
		return false
	}
	for _, u := range t.inline[:t.n] {
		if u == upstream {
			return true
		}
	}
	for _, u := range t.more {
		if u == upstream {
			return true
		}
	}
	return false
}

// Len returns how many upstreams were recorded, repeats included.
func (t *Trail) Len() int {
	if t == nil {
		return 0
	}
	return t.n + len(t.more)
}

// Last returns the upstream recorded last, or "".
func (t *Trail) Last() string {
	switch {
	case t == nil || t.n == 0:
		return ""
	case len(t.more) > 0:
		return t.more[len(t.more)-1]
	}
	return t.inline[t.n-1]
}

// Reset empties the Trail.
func (t *Trail) Reset() {
	clear(t.inline[:])
	t.n, t.more, t.marked = 0, t.more[:0], 0
}

// sent records that a request goes out to upstream: as a new entry, unless
// an entry for upstream was added since the last send was recorded (a
// balancer's pick for this attempt).
func (t *Trail) sent(upstream string) {
	if n := t.Len(); n > t.marked && t.Last() == upstream {
		t.marked = n
		return
	}
	t.Add(upstream)
	t.marked = t.Len()
}

type trailKey struct{}

// TrailFrom returns the Trail carried by ctx, or nil.
func TrailFrom(ctx context.Context) *Trail {
	t, _ := ctx.Value(trailKey{}).(*Trail)
	return t
}

// WithTrail returns a context carrying t.
func WithTrail(parent context.Context, t *Trail) context.Context {
	return &TrailContext{Context: parent, trail: t}
}

// TrailContext is a context.Context carrying a Trail. Allocating one per
// request (or embedding it in per-request state that is not reused)
// carries the Trail in one allocation:
//
//	tc := new(gateway.TrailContext)
//	tc.Init(r.Context())
//	r = r.WithContext(tc)
//
// Do not recycle a TrailContext (for instance in a sync.Pool) once a
// request used it: http.Transport may keep the request's context after the
// handler returned (a dial finishing in the background reads its values),
// so a recycled one would be read and written at once. Cancellation and
// deadlines are the parent's.
type TrailContext struct {
	context.Context
	trail *Trail
	own   Trail
}

// Init sets the parent context and the Trail c carries: the parent's, if
// it carries one already (an outer layer's, for the same request), so that
// every layer of one request sees one record; else an empty Trail owned by c.
func (c *TrailContext) Init(parent context.Context) {
	c.Context = parent
	c.own.Reset()
	c.trail = TrailFrom(parent)
	if c.trail == nil {
		c.trail = &c.own
	}
}

// Trail returns the Trail c carries.
func (c *TrailContext) Trail() *Trail { return c.trail }

// Value returns the Trail for TrailFrom, and defers to the parent otherwise.
func (c *TrailContext) Value(key any) any {
	if _, ok := key.(trailKey); ok {
		return c.trail
	}
	return c.Context.Value(key)
}
