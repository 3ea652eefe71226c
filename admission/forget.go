package admission

import "maps"

// Forget frees the limiter state of host (its canonical name, host:port),
// which has left a pool's set, so that memory stays bounded under constant
// churn of the set. Requests already holding or waiting for one of its
// slots finish against the freed state; a request to the host after
// Forget starts it afresh. It reports true (a pool's Forgetter may report
// false to be asked again; the Limiter never needs to).
func (l *Limiter) Forget(name string) bool {
	if l.lookup(name) == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := *l.hosts.Load()
	h := old[name]
	if h == nil {
		return true
	}
	m := maps.Clone(old)
	maps.DeleteFunc(m, func(_ string, v *host) bool { return v == h })
	l.hosts.Store(&m)
	b := maps.Clone(*l.bare.Load())
	maps.DeleteFunc(b, func(_ bareKey, v *host) bool { return v == h })
	l.bare.Store(&b)
	return true
}

// Forget implements pool.Forgetter: the Limiter forgets host, and so does
// the inner Health if it can.
func (h *health) Forget(host string) bool {
	h.l.Forget(host)
	if f, ok := h.inner.(interface{ Forget(string) bool }); ok {
		return f.Forget(host)
	}
	return true
}

// Warm implements pool.Warmer: it passes host to the inner Health.
func (h *health) Warm(host string) {
	if w, ok := h.inner.(interface{ Warm(string) }); ok {
		w.Warm(host)
	}
}
