package breaker

import (
	"maps"
	"slices"
)

// Forget frees the state of host, a canonical name ([gateway.UpstreamName]),
// which has left a pool's set: its breaker, health, probes and checks. It
// reports false, freeing nothing, while a request holds the host's breaker
// (a pool asks again at its next change); true when the host is freed or
// was not known. A request to the host after Forget starts it afresh. A
// pool calls it for each host that leaves its set (see pool.Forgetter), so
// that memory stays bounded under constant churn of the set.
func (h *Hosts) Forget(host string) bool {
	s := h.set
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.entries.Load()
	e := old[host]
	if e == nil {
		return true
	}
	if !e.pins.CompareAndSwap(0, evicted) {
		return false
	}
	m := maps.Clone(old)
	maps.DeleteFunc(m, func(_ string, v *entry) bool { return v == e })
	if i := slices.Index(s.ring, e); i >= 0 {
		last := len(s.ring) - 1
		s.ring[i] = s.ring[last]
		s.ring[last] = nil
		s.ring = s.ring[:last]
		if s.hand >= len(s.ring) {
			s.hand = 0
		}
	}
	s.entries.Store(&m)
	return true
}

// Warm starts host's slow start (HostHealth.SlowStart) now: a pool calls
// it for each host that joins a set that already serves (see
// pool.Warmer), so that a new host ramps up to its full share of requests
// instead of taking it at once. It creates the host's breaker, within
// Settings.MaxKeys.
func (h *Hosts) Warm(host string) {
	e := h.set.lookup(host)
	if e == nil {
		e = h.set.admit(host)
	}
	if e.host != nil && h.set.c.Health.SlowStart > 0 {
		e.host.warmFrom.Store(h.set.now())
	}
}
