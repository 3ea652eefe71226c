package pool

import (
	"math/rand/v2"
	"net/http"

	"github.com/proxykit/proxykit/gateway"
)

// Policy is how a [Pool] chooses among its eligible hosts.
type Policy uint8

const (
	// PeakEWMA is power of two choices over a failure- and latency-aware
	// cost, the balancer of Linkerd and Finagle: pick two eligible hosts at
	// random and send the request to the cheaper one. A host's cost is a
	// peak EWMA of its latency to the response header, in which a failure
	// counts as a response twice as slow as the host's successful ones,
	// times (requests in flight + 1). Peaks count at once and wear off over
	// Pool.Decay. It sends less traffic to slow, loaded and failing hosts;
	// a host that recovers wins its pairings back as its cost decays. The
	// default.
	PeakEWMA Policy = iota
	// RoundRobin takes the eligible hosts in turn.
	RoundRobin
)

// String returns "peak_ewma" or "round_robin".
func (p Policy) String() string {
	if p == RoundRobin {
		return "round_robin"
	}
	return "peak_ewma"
}

// Preference ranks of a host for one pick; lower is better.
const (
	rankFresh        = iota // not tried by this request, full share
	rankResting             // not tried, passed over for its share
	rankTried               // tried, full share
	rankTriedResting        // tried and passed over
	rankNone                // no candidate yet
)

// pick chooses a host for the request req with trail at now, or nil when
// every host is unhealthy.
func (p *Pool) pick(req *http.Request, trail *gateway.Trail, now int64) *upstream {
	ups := p.targets().ups
	n := len(ups)
	if n == 0 {
		return nil // an empty set
	}
	start := 0
	if p.Policy == RoundRobin {
		start = int((p.rr.Add(1) - 1) % uint64(n))
	}
	var buf [16]*upstream
	cands := buf[:0]
	best := rankNone
	shares, _ := p.Health.(Shares)
	rh, _ := p.Health.(RequestHealth)
	if req == nil {
		rh = nil
	}
	for k := range n {
		i := start + k
		if i >= n {
			i -= n
		}
		u := ups[i]
		r := rankFresh
		if trail.Tried(u.host) {
			r = rankTried
		}
		if r > best {
			continue
		}
		if rh != nil {
			if !rh.AllowsRequest(u.host, req) {
				continue
			}
		} else if !p.allows(u.host) {
			continue
		}
		if shares != nil {
			if s := shares.Share(u.host); s < 1 && (s <= 0 || rand.Float64() >= s) {
				if r++; r > best {
					continue
				}
			}
		}
		if r < best {
			best, cands = r, cands[:0]
		}
		if r == rankFresh && p.Policy == RoundRobin {
			return u // the first fresh host in turn: look no further
		}
		cands = append(cands, u)
	}
	switch {
	case len(cands) == 0:
		return nil
	case len(cands) == 1 || p.Policy == RoundRobin:
		return cands[0]
	}
	i := rand.IntN(len(cands))
	j := rand.IntN(len(cands) - 1)
	if j >= i {
		j++
	}
	a, b := cands[i], cands[j]
	tau := p.decay()
	if loadCost(b.cost.value(now, tau), b.inFlight.Load()) < loadCost(a.cost.value(now, tau), a.inFlight.Load()) {
		return b
	}
	return a
}
