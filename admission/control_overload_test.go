package admission

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestControlSlowHostOverload: a host whose latency is long next to the
// backlog history's default span (8 workers × 600 ms, 1 s and 2 s) that is
// offered 1.5× and 3× its capacity, after a healthy spell at half of it,
// is caught, and what it holds in flight stays bounded.
func TestControlSlowHostOverload(t *testing.T) {
	for _, svc := range []time.Duration{250 * time.Millisecond, 600 * time.Millisecond, time.Second, 2 * time.Second} {
		for _, f := range []float64{1.5, 3} {
			t.Run(fmt.Sprintf("%v %.1fx", svc, f), func(t *testing.T) {
				capacity := 8 / svc.Seconds()
				s := newHostSim(t, 8, &stream{Rate: 0.5 * capacity, Service: svc})
				s.run(5 * time.Second)
				assert.False(t, s.congested, "half its capacity: not limited")
				s.streams[0].Rate = f * capacity
				requireCaught(t, s, capacity)
			})
		}
	}
}

// TestControlOverloadFromStart: a host offered 3× its capacity from its
// first request (a gateway restarted at peak) has no pace of before to
// compare with; it is caught all the same, and what it holds in flight
// stays bounded.
func TestControlOverloadFromStart(t *testing.T) {
	for _, svc := range []time.Duration{10 * time.Millisecond, 100 * time.Millisecond, 600 * time.Millisecond} {
		for _, f := range []float64{1.5, 3} {
			t.Run(fmt.Sprintf("%v %.1fx", svc, f), func(t *testing.T) {
				capacity := 8 / svc.Seconds()
				s := newHostSim(t, 8, &stream{Rate: f * capacity, Service: svc})
				requireCaught(t, s, capacity)
			})
		}
	}
}

// TestControlSlowHostHealthyShapes: healthy traffic at hosts whose latency
// is long next to the history's default span is never limited: a slower
// dependency (100 ms → 1.5 s), a surge of 3× at a 1 s host with room, and
// bursts of 40 at a 600 ms host.
func TestControlSlowHostHealthyShapes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream stream
		change func(s *hostSim)
	}{
		{name: "100ms → 1.5s at 40/s", stream: stream{Rate: 40, Service: 100 * time.Millisecond},
			change: func(s *hostSim) { s.streams[0].Service = 1500 * time.Millisecond }},
		{name: "surge 3× at a 1s host", stream: stream{Rate: 10, Service: time.Second},
			change: func(s *hostSim) { s.streams[0].Rate = 30 }},
		{name: "bursts of 40 at a 600ms host", stream: stream{Rate: 10, Service: 600 * time.Millisecond},
			change: func(s *hostSim) { s.burst(40, 600*time.Millisecond) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.stream
			s := newHostSim(t, 0, &st)
			s.run(5 * time.Second)
			for range 5 {
				tc.change(s)
				s.run(4 * time.Second)
			}
			t.Logf("served %d, shed %d, limit %d", s.served, s.shed, s.c.enforced())
			assert.Zero(t, s.shed, "nothing shed")
			assert.False(t, s.congested, "never congested")
		})
	}
}

// requireCaught runs s for 20 s of simulated time and checks that the
// overload was caught: shedding, in flight bounded, and the host kept busy
// (goodput over the last 10 s at least 0.6 of capacity).
func requireCaught(t *testing.T, s *hostSim, capacity float64) {
	t.Helper()
	var caught time.Duration
	var before int64
	for i := range 20000 {
		s.step(0)
		if caught == 0 && s.c.congested {
			caught = time.Duration(i+1) * time.Millisecond
		}
		if i == 9999 {
			before = s.served
		}
	}
	goodput := float64(s.served-before) / 10 / capacity
	t.Logf("caught after %v, shed %d, in flight %d, limit %d, goodput %.2f of capacity", caught, s.shed, s.inflight(), s.c.enforced(), goodput)
	assert.True(t, s.congested, "the overload was caught")
	assert.Positive(t, s.shed)
	assert.LessOrEqual(t, s.inflight(), int64(100), "in flight stays bounded")
	assert.GreaterOrEqual(t, goodput, 0.6, "the host stays busy")
}
