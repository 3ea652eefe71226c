package admission

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stream is one source of requests of a simulated host: Rate a second,
// evenly spaced (open loop), each served in Service (±10%).
type stream struct {
	Rate    float64
	Service time.Duration
	acc     float64
}

type simReq struct{ sent, start, service int64 }

// hostSim drives a controller, in steps of 1 ms of an injected clock, with
// the requests of a simulated host: workers serve one request at a time
// each (0: as many as there are requests), the rest wait in a FIFO queue.
// A request that finds the enforced limit full is shed (queue off).
// Windows close as the Limiter closes them: when a request arrives or is
// answered after the window's end, so that a quiet host closes none.
type hostSim struct {
	t       *testing.T
	c       controller
	now     int64
	workers int
	streams []*stream
	clients int // closed-loop clients: each sends again when answered or shed
	rng     *rand.Rand

	queue, busy []simReq
	ready       int // closed-loop clients due to send

	winStart, winEnd, epoch int64
	left, blocked, peak     int64
	lat                     []int64

	served, shed int64
	congested    bool // the controller was congested at some point
}

func newHostSim(t *testing.T, workers int, streams ...*stream) *hostSim {
	cfg, err := Settings{}.normalize()
	require.NoError(t, err)
	s := &hostSim{t: t, c: newController(&cfg), now: int64(time.Second), workers: workers,
		streams: streams, rng: rand.New(rand.NewPCG(1, 2))}
	s.winStart, s.winEnd = s.now, s.now+int64(DefaultWindow)
	return s
}

func (s *hostSim) inflight() int64 { return int64(len(s.queue) + len(s.busy)) }

// send admits one request of service, or sheds it.
func (s *hostSim) send(service time.Duration) bool {
	if s.inflight() >= s.c.enforced() {
		s.blocked++
		s.shed++
		return false
	}
	jitter := 0.9 + 0.2*s.rng.Float64()
	s.queue = append(s.queue, simReq{sent: s.now, service: int64(float64(service) * jitter)})
	s.peak = max(s.peak, s.inflight())
	return true
}

// step advances the clock by 1 ms.
func (s *hostSim) step(closedService time.Duration) {
	s.now += int64(time.Millisecond)
	event := false
	kept := s.busy[:0]
	for _, r := range s.busy {
		if r.start+r.service > s.now {
			kept = append(kept, r)
			continue
		}
		event = true
		s.left++
		s.served++
		if r.sent >= s.epoch {
			s.lat = append(s.lat, s.now-r.sent)
		}
		if s.clients > 0 {
			s.ready++
		}
	}
	s.busy = kept
	for len(s.queue) > 0 && (s.workers == 0 || len(s.busy) < s.workers) {
		r := s.queue[0]
		s.queue = s.queue[1:]
		r.start = s.now
		s.busy = append(s.busy, r)
	}
	due := make([]time.Duration, 0, 4)
	for _, st := range s.streams {
		st.acc += st.Rate / 1000
		for ; st.acc >= 1; st.acc-- {
			due = append(due, st.Service)
		}
	}
	for ; s.ready > 0; s.ready-- {
		due = append(due, closedService)
	}
	if (event || len(due) > 0) && s.now >= s.winEnd {
		s.close()
	}
	for _, d := range due {
		if !s.send(d) && s.clients > 0 {
			s.ready++ // a shed client tries again at the next step
		}
	}
}

func (s *hostSim) close() {
	w := window{dur: s.now - s.winStart, left: s.left, inflight: s.inflight(), peak: s.peak,
		blocked: s.blocked, count: int64(len(s.lat))}
	if len(s.lat) >= minLatencySamples {
		slices.Sort(s.lat)
		w.p50, w.p90 = s.lat[(len(s.lat)-1)/2], s.lat[(len(s.lat)*9-1)/10]
	}
	keep := len(s.lat) < minLatencySamples // samples carry over until there are enough
	before := s.c.enforced()
	s.c.update(s.now, w)
	if after := s.c.enforced(); after < before || s.c.restart {
		s.c.restart = false
		s.epoch = s.now
	}
	s.congested = s.congested || s.c.congested
	if !keep || s.epoch == s.now {
		s.lat = s.lat[:0]
	}
	s.left, s.blocked, s.peak = 0, 0, s.inflight()
	s.winStart, s.winEnd = s.now, s.now+int64(DefaultWindow)
}

// run advances the clock by d.
func (s *hostSim) run(d time.Duration) {
	for range int(d / time.Millisecond) {
		s.step(0)
	}
}

// burst sends n requests of service at once.
func (s *hostSim) burst(n int, service time.Duration) {
	if s.now >= s.winEnd {
		s.close()
	}
	for range n {
		s.send(service)
	}
}

// TestControlHealthyShapes: healthy traffic that merely looks unusual —
// every host keeps pace with its arrivals — is never limited, and no
// request is shed: a cheap route beside a slower one (the cheap route
// cannot set a baseline that makes the other look queued), the same at a
// higher rate, an attacker's cheap requests, a whole host that gets 250×
// slower at once (a slower dependency: in-flight grows 250× by Little's
// law, with no queue), a surge of arrivals at a slow host, and bursts.
func TestControlHealthyShapes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		streams []*stream
		workers int
		change  func(s *hostSim) // at 5 s
	}{
		{name: "api 10ms 250/s + cheap 404 2/s",
			streams: []*stream{{Rate: 250, Service: 10 * time.Millisecond}, {Rate: 2, Service: 200 * time.Microsecond}}},
		{name: "one of 3 hosts at 450/s: 150/s + cheap 404",
			streams: []*stream{{Rate: 150, Service: 10 * time.Millisecond}, {Rate: 1, Service: 200 * time.Microsecond}}},
		{name: "attacker's cheap 404s 8/s beside api 10ms 250/s",
			streams: []*stream{{Rate: 250, Service: 10 * time.Millisecond}, {Rate: 8, Service: 100 * time.Microsecond}}},
		{name: "attacker's cheap 404s 8/s beside api 30ms 100/s on 8 workers",
			streams: []*stream{{Rate: 100, Service: 30 * time.Millisecond}, {Rate: 8, Service: 100 * time.Microsecond}}, workers: 8},
		{name: "one of 3 hosts at 120/s: 1ms → 250ms for every request",
			streams: []*stream{{Rate: 40, Service: time.Millisecond}},
			change:  func(s *hostSim) { s.streams[0].Service = 250 * time.Millisecond }},
		{name: "1 host at 450/s: 1ms → 250ms for every request",
			streams: []*stream{{Rate: 450, Service: time.Millisecond}},
			change:  func(s *hostSim) { s.streams[0].Service = 250 * time.Millisecond }},
		{name: "api 10ms → 60ms at 2,000/s",
			streams: []*stream{{Rate: 2000, Service: 10 * time.Millisecond}},
			change:  func(s *hostSim) { s.streams[0].Service = 60 * time.Millisecond }},
		{name: "route mix: half the traffic moves to a 200ms route",
			streams: []*stream{{Rate: 200, Service: 2 * time.Millisecond}, {Rate: 0, Service: 200 * time.Millisecond}},
			change:  func(s *hostSim) { s.streams[0].Rate, s.streams[1].Rate = 100, 100 }},
		{name: "surge 3× at a 250ms host",
			streams: []*stream{{Rate: 40, Service: 250 * time.Millisecond}},
			change:  func(s *hostSim) { s.streams[0].Rate = 120 }},
		{name: "bursts of 40 at a 250ms host",
			streams: []*stream{{Rate: 40, Service: 250 * time.Millisecond}},
			change:  func(s *hostSim) { s.burst(40, 250*time.Millisecond) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newHostSim(t, tc.workers, tc.streams...)
			s.run(5 * time.Second)
			if tc.change != nil {
				tc.change(s)
			}
			for range 10 {
				s.run(time.Second)
				if tc.name == "bursts of 40 at a 250ms host" {
					tc.change(s)
				}
			}
			t.Logf("served %d, shed %d, limit %d", s.served, s.shed, s.c.enforced())
			assert.Zero(t, s.shed, "nothing shed")
			assert.False(t, s.congested, "never congested")
			assert.Positive(t, s.served)
		})
	}
}

// TestControlQuietAfterOverload: a limit learned under overload does not
// outlive it: after 12–15 s of quiet, a burst of 30 and then 6 clients at
// a host of capacity 8 are all served.
func TestControlQuietAfterOverload(t *testing.T) {
	for _, quiet := range []time.Duration{12 * time.Second, 15 * time.Second} {
		s := newHostSim(t, 8, &stream{Rate: 1200, Service: 10 * time.Millisecond})
		s.run(2 * time.Second)
		require.True(t, s.c.congested, "the overload was caught")
		s.streams[0].Rate = 0
		s.run(quiet)
		s.shed = 0
		s.burst(30, 10*time.Millisecond)
		s.clients, s.ready = 6, 6
		for range 3000 {
			s.step(10 * time.Millisecond)
		}
		t.Logf("quiet %v: served %d, shed %d, limit %d", quiet, s.served, s.shed, s.c.enforced())
		assert.Zero(t, s.shed, "nothing shed after %v of quiet", quiet)
		assert.False(t, s.c.congested)
	}
}

// TestControlOverload: a host of 8 workers × 10 ms (800/s) offered 1.25×,
// 1.5× and 3× its capacity open-loop: the overload is caught within a few
// windows, the host stays busy (goodput ≥ 80% of capacity) while the
// excess is shed, and served requests keep a latency near the tolerated
// queue; when capacity doubles past the demand, the limit lifts.
func TestControlOverload(t *testing.T) {
	for _, rate := range []float64{1000, 1200, 2400} {
		s := newHostSim(t, 8, &stream{Rate: rate, Service: 10 * time.Millisecond})
		var caught time.Duration
		for i := range 3000 {
			s.step(0)
			if caught == 0 && s.c.congested {
				caught = time.Duration(i+1) * time.Millisecond
			}
		}
		t.Logf("%v/s: caught after %v; served %d, shed %d, limit %d, baseline %v", rate, caught, s.served, s.shed,
			s.c.enforced(), time.Duration(s.c.baseline(s.now)))
		require.True(t, s.c.congested)
		assert.LessOrEqual(t, caught, 600*time.Millisecond)
		before := s.served
		s.run(2 * time.Second)
		goodput := float64(s.served-before) / 2
		assert.GreaterOrEqual(t, goodput, 640.0, "the host stayed busy")
		assert.LessOrEqual(t, s.c.enforced(), int64(40), "the excess is held back")
		assert.Positive(t, s.shed)

		s.workers = 16
		s.run(3 * time.Second)
		if rate < 1600 {
			assert.False(t, s.c.congested, "capacity past the demand: the limit lifted")
		}
		s.streams[0].Rate = 100
		s.run(time.Second)
		assert.False(t, s.c.congested)
		assert.Equal(t, int64(unlimited), s.c.enforced())
	}
}

// TestControlOverloadLatency: under 1.5× overload the served requests'
// latency settles near the tolerated queue (twice the no-queue latency),
// not the host's whole backlog.
func TestControlOverloadLatency(t *testing.T) {
	s := newHostSim(t, 8, &stream{Rate: 1200, Service: 10 * time.Millisecond})
	s.run(3 * time.Second)
	var worst int64
	for range 20 {
		s.run(DefaultWindow)
		worst = max(worst, s.c.last)
	}
	t.Logf("limit %d, median latency of the last windows ≤ %v", s.c.enforced(), time.Duration(worst))
	assert.LessOrEqual(t, worst, int64(40*time.Millisecond))
}

// TestControlInflatedStart: the first windows came during a stall of the
// gateway (latency 10× the host's), and overload followed at once: the
// limiter still finds the host's latency within a few seconds, instead of
// tolerating twice the stall.
func TestControlInflatedStart(t *testing.T) {
	s := newHostSim(t, 8, &stream{Rate: 1200, Service: 10 * time.Millisecond})
	s.now += int64(DefaultWindow)
	s.c.update(s.now, window{dur: int64(DefaultWindow), left: 20, count: 20, p50: int64(100 * time.Millisecond), p90: int64(100 * time.Millisecond)})
	s.winStart, s.winEnd = s.now, s.now+int64(DefaultWindow)
	s.run(6 * time.Second)
	t.Logf("limit %d, latency %v, baseline %v", s.c.enforced(), time.Duration(s.c.last), time.Duration(s.c.baseline(s.now)))
	assert.LessOrEqual(t, s.c.baseline(s.now), int64(15*time.Millisecond))
	assert.LessOrEqual(t, s.c.last, int64(30*time.Millisecond))
}
