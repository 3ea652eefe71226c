package retry

import (
	"math"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// budgetBuckets is the number of one-second buckets of the budget window.
const budgetBuckets = 10

// budget limits how much load retries add: a retry is allowed while the
// retries in the last [BudgetWindow] stay within ratio × the requests in
// it, or else when the floor (a token bucket of floor tokens per second)
// has a token. Under a total outage the upstreams therefore see at most
// (1 + ratio) × the client requests, plus the floor. This is Linkerd's
// and Finagle's retry budget, and the one of Gateway API GEP-3388.
//
// Memory is fixed: two counters per one-second bucket, each an atomic word
// holding the bucket's second and its count, so recording a request is one
// uncontended CAS and no lock. The counts are approximate only in that
// concurrent retries may both pass a check that one of them alone would
// exhaust.
//
// The At methods take the current time, so that tests step time instead
// of sleeping.
type budget struct {
	ratio    float64 // math.Inf(1): unlimited
	epoch    time.Time
	requests [budgetBuckets]atomic.Uint64 // second<<32 | count
	retries  [budgetBuckets]atomic.Uint64
	floor    *rate.Limiter
}

func newBudget(ratio, floorPerSecond float64, epoch time.Time) *budget {
	b := &budget{ratio: ratio, epoch: epoch}
	if math.IsInf(floorPerSecond, 1) {
		b.floor = rate.NewLimiter(rate.Inf, 1)
	} else {
		burst := max(1, int(math.Ceil(floorPerSecond)))
		b.floor = rate.NewLimiter(rate.Limit(floorPerSecond), burst)
	}
	return b
}

// second returns the bucket second of the time d after the epoch. Times
// before the epoch count as its first second.
func second(d time.Duration) uint32 {
	if d < 0 {
		return 0
	}
	return uint32(d / time.Second)
}

// add counts one event at second sec in its bucket.
func add(slots *[budgetBuckets]atomic.Uint64, sec uint32) {
	slot := &slots[sec%budgetBuckets]
	for {
		old := slot.Load()
		next := uint64(sec)<<32 | 1 // the bucket holds an older second: restart it
		if s := uint32(old >> 32); s >= sec {
			// The bucket's second, or a newer one seen by a goroutine whose
			// clock read came later: count it there.
			next = old
			if uint32(old) != math.MaxUint32 {
				next++
			}
		}
		if slot.CompareAndSwap(old, next) {
			return
		}
	}
}

// sum returns the events in the window ending at second sec.
func sum(slots *[budgetBuckets]atomic.Uint64, sec uint32) int64 {
	var n int64
	for i := range slots {
		v := slots[i].Load()
		if s := uint32(v >> 32); s <= sec && sec-s < budgetBuckets {
			n += int64(uint32(v))
		}
	}
	return n
}

// requestAt records a client request at t.
func (b *budget) requestAt(t time.Time) { b.request(t.Sub(b.epoch)) }

// request records a client request at d after the epoch.
func (b *budget) request(d time.Duration) { add(&b.requests, second(d)) }

// tryRetryAt reports whether a retry at t fits the budget, and records it
// if so.
func (b *budget) tryRetryAt(t time.Time) bool {
	sec := second(t.Sub(b.epoch))
	if !math.IsInf(b.ratio, 1) {
		requests, retries := sum(&b.requests, sec), sum(&b.retries, sec)
		if float64(retries+1) > b.ratio*float64(requests) && !b.floor.AllowN(t, 1) {
			return false
		}
	}
	add(&b.retries, sec)
	return true
}

// windowAt returns the requests and retries counted in the window ending
// at t.
func (b *budget) windowAt(t time.Time) (requests, retries int64) {
	sec := second(t.Sub(b.epoch))
	return sum(&b.requests, sec), sum(&b.retries, sec)
}
