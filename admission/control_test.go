package admission

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream models a host of fixed capacity: workers that each take service
// per request, and a FIFO queue in front of them. With c requests in
// flight, every request waits for the c-workers ahead of it: the shortest
// latency of a window is service·c/workers once c > workers.
type upstream struct {
	workers int
	service time.Duration
}

func (u upstream) latency(c int64) int64 {
	if c <= int64(u.workers) {
		return int64(u.service)
	}
	return int64(u.service) * c / int64(u.workers)
}

// sim drives a controller with windows of a host under demand requests
// wanting to be in flight at once.
type sim struct {
	t   *testing.T
	c   controller
	now int64
	up  upstream
}

func newSim(t *testing.T, up upstream) *sim {
	cfg, err := Settings{}.normalize()
	require.NoError(t, err)
	return &sim{t: t, c: newController(&cfg), up: up, now: int64(time.Second)}
}

// run applies n windows of 100 ms with demand, and returns the last
// window's latency.
func (s *sim) run(n int, demand int64) (lat int64) {
	for range n {
		s.now += int64(DefaultWindow)
		lim := s.c.enforced()
		c := min(demand, lim)
		w := window{min: s.up.latency(c), count: 50, peak: c}
		if demand > lim {
			w.blocked = demand - lim
		}
		s.c.update(s.now, w)
		lat = w.min
	}
	return lat
}

// TestControlConverges: a host of 8 workers × 10 ms offered far more than
// it can take: the limit settles between its parallelism and the
// tolerated queue (2× the baseline latency), so it stays saturated while
// latency stays within the tolerance; when capacity doubles the limit
// follows; when demand falls below capacity the limit lifts.
func TestControlConverges(t *testing.T) {
	s := newSim(t, upstream{workers: 8, service: 10 * time.Millisecond})
	s.run(1, 4) // the first requests find the host idle: the baseline
	assert.Equal(t, int64(unlimited), s.c.enforced(), "no limit before queueing shows")

	s.run(3, 200)
	assert.True(t, s.c.congested, "queueing shows within a few windows")
	lat := s.run(20, 200)
	lim := s.c.enforced()
	assert.GreaterOrEqual(t, lim, int64(8), "the host stays saturated")
	assert.LessOrEqual(t, lim, int64(20), "the excess is held back")
	assert.LessOrEqual(t, lat, int64(22*time.Millisecond), "latency stays near the tolerance")
	assert.Equal(t, int64(10*time.Millisecond), s.c.baseline(s.now), "queueing never became the baseline")

	// Probes every 5 s keep the baseline while overload lasts.
	s.run(150, 200)
	assert.True(t, s.c.congested)
	assert.Equal(t, int64(10*time.Millisecond), s.c.baseline(s.now))
	assert.LessOrEqual(t, s.c.enforced(), int64(20))

	// Capacity doubles: the limit grows to the new parallelism.
	s.up.workers = 16
	lat = s.run(20, 200)
	assert.GreaterOrEqual(t, s.c.enforced(), int64(16))
	assert.LessOrEqual(t, s.c.enforced(), int64(48))
	assert.LessOrEqual(t, lat, int64(25*time.Millisecond))

	// Demand falls below capacity: nothing waits, the limit lifts.
	s.run(3, 10)
	assert.False(t, s.c.congested)
	assert.Equal(t, int64(unlimited), s.c.enforced())
}

// TestControlSlowerHost: a host whose latency rises without any queueing
// (a slower release, a colder cache) is held back, but no longer than
// its baseline lives without confirmation (two buckets): its new latency
// is then its baseline and nothing is limited.
func TestControlSlowerHost(t *testing.T) {
	s := newSim(t, upstream{workers: 100, service: 10 * time.Millisecond})
	s.run(5, 20)
	s.up.service = 30 * time.Millisecond
	s.run(1, 20)
	require.True(t, s.c.congested, "3× the baseline looks like queueing at first")
	n := int(2 * baselineBucket / DefaultWindow)
	s.run(n, 20)
	assert.False(t, s.c.congested, "the old baseline expired unconfirmed")
	assert.Equal(t, int64(30*time.Millisecond), s.c.baseline(s.now))
	s.run(50, 20)
	assert.False(t, s.c.congested)
	assert.Equal(t, int64(unlimited), s.c.enforced())
}

// TestControlOneSlowWindow: a single window that shows only slow requests
// (a burst of a slow route) holds the limit at what was in flight, and the
// next normal window lifts it: nothing that was admitted before is shed.
func TestControlOneSlowWindow(t *testing.T) {
	s := newSim(t, upstream{workers: 100, service: 2 * time.Millisecond})
	s.run(10, 30)
	s.now += int64(DefaultWindow)
	s.c.update(s.now, window{min: int64(50 * time.Millisecond), count: 20, peak: 30})
	assert.Equal(t, int64(30), s.c.enforced(), "held at what was in flight")
	s.run(1, 30)
	assert.False(t, s.c.congested)
}

// TestControlMinQueueDelay: a host answering in 100 µs is not limited for
// a rise of a few milliseconds, whatever the ratio.
func TestControlMinQueueDelay(t *testing.T) {
	s := newSim(t, upstream{workers: 4, service: 100 * time.Microsecond})
	s.run(1, 2)
	s.run(10, 24) // 600 µs: 6× the baseline, but only 0.5 ms of queueing
	assert.False(t, s.c.congested)
	s.run(10, 160) // 4 ms: 3.9 ms of queueing, still under MinQueueDelay
	assert.False(t, s.c.congested)
	s.run(10, 320) // 8 ms: queueing
	assert.True(t, s.c.congested)
}

// TestControlInflatedStart: the first window came during a stall of the
// gateway (its shortest latency 10× the host's), and overload followed at
// once: the limiter still finds the host's latency and holds the queue
// near it within a few seconds, instead of tolerating twice the stall.
func TestControlInflatedStart(t *testing.T) {
	s := newSim(t, upstream{workers: 8, service: 10 * time.Millisecond})
	s.now += int64(DefaultWindow)
	s.c.update(s.now, window{min: int64(100 * time.Millisecond), count: 20, peak: 20})
	var lat int64
	for i := range 100 {
		lat = s.run(1, 400)
		if i%10 == 9 {
			t.Logf("t=%dms limit=%d latency=%v baseline=%v", (i+1)*50, s.c.enforced(), time.Duration(lat), time.Duration(s.c.baseline(s.now)))
		}
	}
	assert.LessOrEqual(t, s.c.baseline(s.now), int64(15*time.Millisecond))
	assert.LessOrEqual(t, lat, int64(30*time.Millisecond))
}

// TestControlGrowingQueue: with a baseline far too high (learned in a
// stall), a queue that grows window after window under the threshold is
// still caught: the host is congested and probed, and its baseline found.
func TestControlGrowingQueue(t *testing.T) {
	s := newSim(t, upstream{workers: 8, service: 10 * time.Millisecond})
	s.now += int64(DefaultWindow)
	s.c.update(s.now, window{min: int64(100 * time.Millisecond), count: 20, peak: 20})
	demand := 20.0
	for range 6 {
		demand *= 1.3 // latency 25, 32, 42 … ms: under 200 ms, growing
		s.run(1, int64(demand))
	}
	assert.True(t, s.c.congested, "the growing queue was caught")
	s.run(60, 400)
	assert.LessOrEqual(t, s.c.baseline(s.now), int64(15*time.Millisecond))
	assert.LessOrEqual(t, s.c.enforced(), int64(24))
}
