package admission

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// Errors a shed or refused request's [gateway.Failure] wraps; test with
// errors.Is.
var (
	// ErrShed: the host was at its concurrency limit and the request
	// found no slot in time (the queue was full, its wait ran out, or a
	// request of higher priority took its place).
	ErrShed = errors.New("admission: the host is at its concurrency limit")
	// ErrDraining: the host is being drained and takes no new request.
	ErrDraining = errors.New("admission: the host is draining")
	// ErrUnknownHost: Drain or Resume named a host the Limiter does not know.
	ErrUnknownHost = errors.New("admission: unknown upstream")
)

// Limiter keeps an adaptive concurrency limit per upstream host, enforced
// only while the host falls behind its traffic, and lets an operator
// drain a host. See the package
// documentation for the control law. Create it with [New]; it is safe for
// concurrent use.
type Limiter struct {
	c     config
	hosts atomic.Pointer[map[string]*host]
	// bare finds the host of a URL without a port (whose canonical name
	// costs allocations to build) by scheme and host as written.
	bare  atomic.Pointer[map[bareKey]*host]
	mu    sync.Mutex // serialises additions to hosts
	epoch time.Time
	clock func() int64 // tests; nil: time since epoch
}

// New returns a Limiter with settings s, or an error naming every invalid
// setting.
func New(s Settings) (*Limiter, error) {
	c, err := s.normalize()
	if err != nil {
		return nil, err
	}
	l := &Limiter{c: c, epoch: time.Now()}
	m := map[string]*host{}
	l.hosts.Store(&m)
	b := map[bareKey]*host{}
	l.bare.Store(&b)
	return l, nil
}

type bareKey struct{ scheme, host string }

// hostOf returns the host of u, admitting it if there is room.
func (l *Limiter) hostOf(u *url.URL) *host {
	k := bareKey{u.Scheme, u.Host}
	if h := (*l.bare.Load())[k]; h != nil {
		return h
	}
	name := gateway.UpstreamName(u)
	if name == u.Host {
		return l.admit(name) // already its canonical name: built without allocating
	}
	h := l.admit(name)
	if h != nil {
		l.mu.Lock()
		old := *l.bare.Load()
		if len(old) < l.c.MaxHosts {
			m := make(map[bareKey]*host, len(old)+1)
			for k, v := range old {
				m[k] = v
			}
			m[k] = h
			l.bare.Store(&m)
		}
		l.mu.Unlock()
	}
	return h
}

func (l *Limiter) now() int64 {
	if l.clock != nil {
		return l.clock()
	}
	return int64(time.Since(l.epoch))
}

// host is one upstream's limiter.
type host struct {
	name string
	l    *Limiter

	inflight atomic.Int64 // requests sent and waiting for their response header
	active   atomic.Int64 // requests whose response body has not been closed yet
	limit    atomic.Int64 // the enforced limit; unlimited while the host keeps pace
	queued   atomic.Int64
	draining atomic.Bool
	shed     atomic.Int64 // requests shed, in all

	// The current window, written on the request path without a lock.
	winHist    [histBuckets]atomic.Int64 // latency samples by bucketOf
	winCount   atomic.Int64
	winPeak    atomic.Int64
	winBlocked atomic.Int64
	winEnd     atomic.Int64 // ns since epoch
	winDone    atomic.Int64 // responses (or failures) that gave back a slot
	queueCap   atomic.Int64 // waiters worth queueing: slots expected to free within QueueTimeout
	sparse     atomic.Bool  // busy enough that a quarter of the requests are timed
	epoch      atomic.Int64 // only requests sent since are sampled: the last cut or probe

	mu      sync.Mutex // the queue and drained
	waiters []*waiter
	drained chan struct{} // closed when a drain has nothing left in flight

	ctlMu    sync.Mutex
	ctl      controller
	winStart int64 // under ctlMu
}

func (l *Limiter) newHost(name string) *host {
	h := &host{name: name, l: l, ctl: newController(&l.c)}
	h.limit.Store(unlimited)
	h.winStart = l.now()
	h.winEnd.Store(h.winStart + int64(l.c.Window))
	h.queueCap.Store(int64(l.c.QueueLength))
	return h
}

// lookup returns the host named name, or nil.
func (l *Limiter) lookup(name string) *host { return (*l.hosts.Load())[name] }

// admit returns the host named name, adding it when there is room (nil
// when MaxHosts are taken).
func (l *Limiter) admit(name string) *host {
	if h := l.lookup(name); h != nil {
		return h
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := *l.hosts.Load()
	if h := old[name]; h != nil {
		return h
	}
	if len(old) >= l.c.MaxHosts {
		return nil
	}
	m := make(map[string]*host, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	h := l.newHost(name)
	m[name] = h
	l.hosts.Store(&m)
	return h
}

// Watch tells the Limiter about target's host before any request reaches
// it, so that it can be drained from the start (a pool calls it through
// [Limiter.Health]; proxykit.New calls it for every upstream).
func (l *Limiter) Watch(target *url.URL) {
	if target != nil && target.Host != "" {
		l.admit(gateway.UpstreamName(target))
	}
}

// Transport returns a RoundTripper that holds each request to its host's
// limit, named by [gateway.UpstreamName] of the outbound URL, before
// handing it to next (nil: http.DefaultTransport). Wire it inside a pool's
// Transport and outside per-host breakers, so that shed requests never
// reach a breaker:
//
//	proxy.Transport = lim.Transport(hosts.Transport(&gateway.Transport{}))
//	p.Health = lim.Health(hosts)
//	err = p.Attach(proxy)
//
// A request is counted in flight from when it gets a slot until its
// response header arrives (or the connection is upgraded, or it fails):
// its latency is measured over the same span, and a long download or a
// WebSocket holds no slot. A request the host cannot take is answered with
// a [gateway.ClassOverloaded] failure (503, Retry-After, Sent false,
// wrapping [ErrShed] or [ErrDraining]) without reaching next.
func (l *Limiter) Transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &transport{l: l, next: next}
}

type transport struct {
	l    *Limiter
	next http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	h := t.l.hostOf(req.URL)
	if h == nil {
		return t.next.RoundTrip(req)
	}
	// active first, draining second; Drain does the opposite: one of them
	// sees the other, so a drain never reports done with a request about
	// to go out.
	h.active.Add(1)
	var f *gateway.Failure
	if h.draining.Load() {
		f = h.refuse(ErrDraining, "")
	} else {
		f = h.acquire(req)
	}
	if f != nil {
		h.done()
		if req.Body != nil {
			_ = req.Body.Close() // RoundTrip must close the body, even on error
		}
		return nil, f
	}
	var body *timedBody
	if req.Body != nil && req.Body != http.NoBody {
		// While the client uploads its body, the request is no work for
		// the host, and the time it takes is no latency of the host: the
		// request gives its slot back until its body was sent whole, and
		// its latency is measured from then. So slow or stalled uploads
		// neither fill the limit nor look like a host falling behind.
		out := &timedRequest{req: *req, body: timedBody{ReadCloser: req.Body, h: h}} // RoundTrip must not modify req
		body = &out.body
		out.req.Body = body
		req = &out.req
		h.giveBack()
	}
	// A busy host without a limit needs only a share of its requests
	// timed (a window's median over a quarter of its many requests; the
	// backlog evidence counts every request); a congested or quiet one,
	// every request.
	if body == nil && h.sparse.Load() && h.limit.Load() >= unlimited && rand.Uint32()&3 != 0 {
		res, err := t.forward(h, req, nil)
		if err != nil {
			return nil, err
		}
		res.Body = h.track(res.Body)
		return res, nil
	}
	start := t.l.now()
	res, err := t.forward(h, req, body)
	end := t.l.now()
	defer h.tick(end)
	from := start
	if body != nil {
		if from = body.at.Load(); from == 0 || from > end {
			from = 0 // answered before the body was read: no latency sample
		}
	}
	if err != nil {
		if from != 0 && gateway.ClassifyError(err, "", true).Class == gateway.ClassTimeout {
			// A request that timed out waiting for its header took at
			// least this long.
			h.sample(start, from, end)
		}
		return nil, err
	}
	if from != 0 && res.StatusCode < 500 {
		// An upstream's 5xx may be a fast refusal: no sign of its latency.
		h.sample(start, from, end)
	}
	res.Body = h.track(res.Body)
	return res, nil
}

// forward sends req on with a slot of h, and gives the slot back when
// the response header came, or the request failed — or next panicked, so
// that a broken transport cannot leak slots. A failed request is done.
func (t *transport) forward(h *host, req *http.Request, body *timedBody) (res *http.Response, err error) {
	ok := false
	defer func() {
		if body == nil || body.finish() {
			h.release()
		}
		if !ok || err != nil {
			h.done()
		}
	}()
	res, err = t.next.RoundTrip(req)
	ok = true
	return res, err
}

// CloseIdleConnections closes next's idle connections, if it can.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// acquire takes a slot for req, or returns why it cannot have one.
func (h *host) acquire(req *http.Request) *gateway.Failure {
	lim := h.limit.Load()
	if lim >= unlimited {
		h.notePeak(h.inflight.Add(1))
		return nil
	}
	// A limited host's window is closed by time here too: a host that
	// went quiet has its limit reviewed by the first request after the
	// quiet, before it is held to it.
	if h.tick(h.l.now()) {
		if lim = h.limit.Load(); lim >= unlimited {
			h.notePeak(h.inflight.Add(1))
			return nil
		}
	}
	prio := 0
	if p := h.l.c.Priority; p != nil {
		prio = p(req)
	}
	if h.queued.Load() == 0 {
		if n := h.inflight.Add(1); n <= effective(lim, prio) {
			h.notePeak(n)
			return nil
		}
		h.inflight.Add(-1)
	}
	return h.wait(req, prio)
}

// effective is the limit a request of priority prio may fill.
func effective(lim int64, prio int) int64 {
	if prio < 0 && lim < unlimited {
		return max(1, int64(float64(lim)*lowShare))
	}
	return lim
}

func (h *host) notePeak(n int64) {
	for {
		p := h.winPeak.Load()
		if n <= p || h.winPeak.CompareAndSwap(p, n) {
			return
		}
	}
}

// waiter is a request waiting for a slot.
type waiter struct {
	prio    int
	ch      chan struct{} // closed when granted or evicted
	done    bool          // granted or evicted; under host.mu
	granted bool
}

// wait queues req for a slot of a host at its limit.
func (h *host) wait(req *http.Request, prio int) *gateway.Failure {
	h.winBlocked.Add(1)
	c := &h.l.c
	if c.QueueLength < 0 {
		return h.refuse(ErrShed, "queue off")
	}
	ctx := req.Context()
	wait := c.QueueTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	if wait <= 0 {
		return h.refuse(ErrShed, "no time left to wait")
	}

	h.mu.Lock()
	if int64(len(h.waiters)) >= h.queueCap.Load() {
		// Waiters are sorted by priority, highest first and FIFO among
		// equals: the last is the one to shed first.
		v := h.waiters[len(h.waiters)-1]
		if v.prio >= prio {
			h.mu.Unlock()
			return h.refuse(ErrShed, "queue full")
		}
		h.waiters = h.waiters[:len(h.waiters)-1]
		h.queued.Add(-1)
		v.done = true
		close(v.ch) // shed in favour of this request
	}
	w := &waiter{prio: prio, ch: make(chan struct{})}
	i := sort.Search(len(h.waiters), func(i int) bool { return h.waiters[i].prio < prio })
	h.waiters = append(h.waiters, nil)
	copy(h.waiters[i+1:], h.waiters[i:])
	h.waiters[i] = w
	h.queued.Add(1)
	h.dispatchLocked() // a slot may have freed since acquire looked
	h.mu.Unlock()

	timer := time.NewTimer(wait)
	select {
	case <-w.ch:
	case <-timer.C:
	case <-ctx.Done():
	}
	timer.Stop()
	h.mu.Lock()
	if !w.done {
		for i, v := range h.waiters {
			if v == w {
				h.waiters = append(h.waiters[:i], h.waiters[i+1:]...)
				break
			}
		}
		h.queued.Add(-1)
		w.done = true
	}
	h.mu.Unlock()
	switch {
	case w.granted:
		return nil // the slot came, even if the wait ran out at the same time
	case errors.Is(ctx.Err(), context.Canceled):
		f := gateway.NewFailure(gateway.ClassCanceled, h.name, ctx.Err())
		return f
	case ctx.Err() != nil:
		return h.refuse(ErrShed, "the request's deadline came while it waited")
	}
	return h.refuse(ErrShed, "no slot freed in time")
}

// dispatchLocked grants free slots to waiters, highest priority first.
// h.mu is held.
func (h *host) dispatchLocked() {
	for len(h.waiters) > 0 {
		w := h.waiters[0]
		n := h.inflight.Add(1)
		if n > effective(h.limit.Load(), w.prio) {
			h.inflight.Add(-1)
			// The head may be of negative priority, held back by its
			// share while one of higher priority could go: waiters are
			// sorted, so nobody behind the head can go either.
			return
		}
		h.notePeak(n)
		h.waiters = h.waiters[1:]
		h.queued.Add(-1)
		w.done, w.granted = true, true
		close(w.ch)
	}
	h.waiters = nil // let the backing array go once empty
}

// release gives back the slot of a request whose response header came.
func (h *host) release() {
	h.winDone.Add(1)
	h.giveBack()
}

// giveBack gives a slot back, to the first waiter if any.
func (h *host) giveBack() {
	h.inflight.Add(-1)
	if h.queued.Load() > 0 {
		h.mu.Lock()
		h.dispatchLocked()
		h.mu.Unlock()
	}
}

// done ends a request's time at the host (its body closed, or it failed).
func (h *host) done() {
	if h.active.Add(-1) == 0 && h.draining.Load() {
		h.checkDrained()
	}
}

// checkDrained ends a drain that has nothing left in flight.
func (h *host) checkDrained() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.drained == nil || h.active.Load() != 0 {
		return
	}
	select {
	case <-h.drained:
	default:
		close(h.drained)
		h.l.c.logger().LogAttrs(context.Background(), slog.LevelInfo, "admission: upstream drained",
			slog.String("upstream", h.name))
	}
}

// refuse returns the failure of a request this host does not take.
func (h *host) refuse(err error, why string) *gateway.Failure {
	if err == ErrShed {
		h.shed.Add(1)
	}
	if why != "" {
		err = fmt.Errorf("%w (%s)", err, why)
	}
	f := gateway.NewFailure(gateway.ClassOverloaded, h.name, err)
	f.RetryAfter = h.l.c.RetryAfter
	return f
}

// sample records the latency of a request sent at start, whose body was
// sent whole at from, and whose header came at end.
func (h *host) sample(start, from, end int64) {
	if start < h.epoch.Load() {
		return // sent before the limit was cut: its latency holds the old queue
	}
	h.winHist[bucketOf(end-max(start, from))].Add(1)
	h.winCount.Add(1)
}

// tick closes the window if it is due at now, and reports whether it did.
func (h *host) tick(now int64) bool {
	if now < h.winEnd.Load() || !h.ctlMu.TryLock() {
		return false
	}
	defer h.ctlMu.Unlock()
	return h.closeWindow(now)
}

// bucketOf is the latency histogram's bucket of ns: four buckets an
// octave of microseconds (1,024 ns), within 19% of the latency.
func bucketOf(ns int64) int {
	v := uint64(max(0, ns)) >> 10
	if v < 4 {
		return int(v)
	}
	e := bits.Len64(v) - 1
	return min(histBuckets-1, 4*(e-1)+int((v>>(e-2))&3))
}

// bucketValue is the middle of bucket i, in ns.
func bucketValue(i int) int64 {
	if i < 4 {
		return int64(i)<<10 + 512
	}
	e, m := i/4+1, uint64(i%4)
	lo := (4 + m) << (e - 2)
	return int64((lo + (uint64(1)<<(e-2))/2) << 10)
}

// closeWindow applies the window that ended at now, and reports whether
// it was still open. h.ctlMu is held.
func (h *host) closeWindow(now int64) bool {
	if now < h.winEnd.Load() {
		return false // another goroutine closed it first
	}
	// Latency samples carry over to the next window until there are
	// enough of them to judge by.
	var counts [histBuckets]int64
	n := h.winCount.Load()
	if n >= minLatencySamples {
		n = 0
		for i := range h.winHist {
			if h.winHist[i].Load() != 0 {
				counts[i] = h.winHist[i].Swap(0)
				n += counts[i]
			}
		}
		h.winCount.Add(-n)
	}
	done, elapsed := h.winDone.Swap(0), now-h.winStart
	w := window{
		dur:      elapsed,
		left:     done,
		inflight: h.inflight.Load(),
		peak:     h.winPeak.Swap(h.inflight.Load()),
		blocked:  h.winBlocked.Swap(0),
		count:    n,
	}
	if n >= minLatencySamples {
		w.p50, w.p90 = quantile(&counts, n, 0.5), quantile(&counts, n, 0.9)
	}
	h.winEnd.Store(now + int64(h.l.c.Window))
	// A request that would wait longer than QueueTimeout for its slot is
	// better answered at once: queue no more than the slots the host
	// gives back in that time, at the rate it gave them back lately.
	h.winStart = now
	h.sparse.Store(done >= sparseAnswers)
	if c := &h.l.c; elapsed > 0 {
		q := int64(math.Ceil(float64(done) * float64(c.QueueTimeout) / float64(elapsed)))
		h.queueCap.Store(max(1, min(int64(c.QueueLength), q)))
	}
	before := h.ctl.enforced()
	ev := h.ctl.update(now, w)
	after := h.ctl.enforced()
	if after < before || h.ctl.restart {
		h.ctl.restart = false
		// What was sent before the cut (or the probe) still waits in the
		// host's queue: judge the new limit only by what is sent under
		// it, as TCP cuts its window at most once per round trip.
		h.epoch.Store(now)
		for i := range h.winHist {
			h.winHist[i].Store(0)
		}
		h.winCount.Store(0)
	}
	h.limit.Store(after)
	if after > before && h.queued.Load() > 0 {
		h.mu.Lock()
		h.dispatchLocked()
		h.mu.Unlock()
	}
	if ev != evNone {
		h.logEvent(ev, w)
	}
	return true
}

// quantile returns the latency below which a share q of the n samples
// counted in counts lie.
func quantile(counts *[histBuckets]int64, n int64, q float64) int64 {
	want := int64(math.Ceil(q * float64(n)))
	var seen int64
	for i, c := range counts {
		if seen += c; seen >= want {
			return bucketValue(i)
		}
	}
	return bucketValue(histBuckets - 1)
}

func (h *host) logEvent(ev event, w window) {
	lg := h.l.c.logger()
	attrs := []slog.Attr{slog.String("upstream", h.name),
		slog.Duration("latency", time.Duration(w.p50)),
		slog.Duration("baseline", time.Duration(h.ctl.baseline(h.l.now())))}
	switch ev {
	case evCongested:
		attrs = append(attrs, slog.Int64("limit", h.ctl.enforced()), slog.Int64("in_flight", w.inflight))
		lg.LogAttrs(context.Background(), slog.LevelInfo, "admission: upstream congested: its requests in flight grew while its answers fell behind; its concurrency is limited", attrs...)
	case evClear:
		lg.LogAttrs(context.Background(), slog.LevelInfo, "admission: upstream no longer congested: it keeps pace, or was quiet", attrs...)
	case evRelearned:
		lg.LogAttrs(context.Background(), slog.LevelInfo, "admission: upstream congested for long with latency never near its baseline: measuring the baseline anew", attrs...)
	}
}

// timedRequest is the copy of a request with a body that the limiter
// sends on, with its timed body: one allocation.
type timedRequest struct {
	req  http.Request
	body timedBody
}

// timedBody is a request body that takes its request's slot back when it
// was sent whole (read to its end, or closed), and notes when.
type timedBody struct {
	io.ReadCloser
	h     *host
	at    atomic.Int64
	state atomic.Int32 // bodyUploading, bodySent (slot taken), bodyAnswered
}

const (
	bodyUploading int32 = iota
	bodySent
	bodyAnswered
)

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.sent()
	}
	return n, err
}

func (b *timedBody) Close() error {
	b.sent()
	return b.ReadCloser.Close()
}

// sent takes the slot back for the rest of the request, unless its
// response came first.
func (b *timedBody) sent() {
	if b.state.CompareAndSwap(bodyUploading, bodySent) {
		b.at.Store(b.h.l.now())
		b.h.notePeak(b.h.inflight.Add(1))
	}
}

// finish ends the body's part at the response (or failure), and reports
// whether it holds a slot to give back.
func (b *timedBody) finish() bool { return b.state.Swap(bodyAnswered) == bodySent }

// track wraps a response body so that drain sees when it ends. An
// upgraded connection's body (101) keeps its Write.
func (h *host) track(b io.ReadCloser) io.ReadCloser {
	if b == nil {
		h.done()
		return nil
	}
	if rwc, ok := b.(io.ReadWriteCloser); ok {
		return &trackedConn{trackedBody{ReadCloser: b, h: h}, rwc}
	}
	return &trackedBody{ReadCloser: b, h: h}
}

type trackedBody struct {
	io.ReadCloser
	h      *host
	closed atomic.Bool
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	if b.closed.CompareAndSwap(false, true) {
		b.h.done()
	}
	return err
}

type trackedConn struct {
	trackedBody
	rwc io.ReadWriteCloser
}

func (c *trackedConn) Write(p []byte) (int, error) { return c.rwc.Write(p) }

// CloseWrite half-closes the upgraded connection, as ReverseProxy does
// when the client half-closes its side: without it the tunnel would be
// torn down and the data still flowing the other way lost.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.rwc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("admission: CloseWrite on %T: %w", c.rwc, http.ErrNotSupported)
}

// CloseRead half-closes the reading side of the upgraded connection.
func (c *trackedConn) CloseRead() error {
	if cr, ok := c.rwc.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return fmt.Errorf("admission: CloseRead on %T: %w", c.rwc, http.ErrNotSupported)
}

// Drain stops sending new requests to host (its canonical name, host:port,
// or an http(s) URL): a pool that asks [Limiter.Health] passes it over at
// once, and a request that reaches it anyway is refused with
// [gateway.ClassOverloaded] wrapping [ErrDraining]. Requests in flight,
// response bodies included, finish. Its state ([pool.State]) is draining,
// then drained once nothing is left in flight; [Limiter.Drained] waits for that. Drain
// returns [ErrUnknownHost] for a host the Limiter does not know (see
// [Limiter.Watch]) and an error for a malformed name.
func (l *Limiter) Drain(host string) error {
	h, err := l.find(host)
	if err != nil {
		return err
	}
	h.mu.Lock()
	if !h.draining.Load() {
		h.drained = make(chan struct{})
		h.draining.Store(true)
		l.c.logger().LogAttrs(context.Background(), slog.LevelInfo, "admission: draining upstream",
			slog.String("upstream", h.name), slog.Int64("in_flight", h.active.Load()))
	}
	h.mu.Unlock()
	h.checkDrained()
	return nil
}

// Resume sends host new requests again after a drain. It returns
// [ErrUnknownHost] for a host the Limiter does not know.
func (l *Limiter) Resume(host string) error {
	h, err := l.find(host)
	if err != nil {
		return err
	}
	h.mu.Lock()
	if h.draining.Swap(false) {
		l.c.logger().LogAttrs(context.Background(), slog.LevelInfo, "admission: upstream resumed", slog.String("upstream", h.name))
	}
	h.drained = nil
	h.mu.Unlock()
	return nil
}

// Drained waits until a drain of host has nothing left in flight, or ctx
// ends (its error is returned then). It returns at once for a host that is
// not draining ([ErrUnknownHost] for one the Limiter does not know).
func (l *Limiter) Drained(ctx context.Context, host string) error {
	h, err := l.find(host)
	if err != nil {
		return err
	}
	h.mu.Lock()
	ch := h.drained
	h.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	default:
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// find returns the known host named by s.
func (l *Limiter) find(s string) (*host, error) {
	name, err := canonicalHost(s)
	if err != nil {
		return nil, err
	}
	if h := l.lookup(name); h != nil {
		return h, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownHost, name)
}

// canonicalHost returns the canonical name ([gateway.UpstreamName]) of an
// upstream given as host:port or as an http(s) URL, or an error for
// anything else.
func canonicalHost(s string) (string, error) {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("admission: upstream %q: want host:port or an http(s) URL", s)
		}
		return gateway.UpstreamName(u), nil
	}
	hp, port, err := net.SplitHostPort(s)
	if err != nil || hp == "" || port == "" || strings.ContainsAny(s, "/?#@ \t") {
		return "", fmt.Errorf("admission: upstream %q: want host:port or an http(s) URL", s)
	}
	// Any spelling of the host: LOCALHOST:019001 is localhost:19001.
	return gateway.UpstreamName(&url.URL{Scheme: "http", Host: net.JoinHostPort(hp, port)}), nil
}

// Congested reports whether host (its canonical name) fell behind its
// traffic, so that its limit is enforced: a host-health model can tell from it that a
// timeout is the queue's, not evidence against the host.
func (l *Limiter) Congested(host string) bool {
	h := l.lookup(host)
	return h != nil && h.limit.Load() < unlimited
}

// Headroom reports whether host may take a request now without waiting:
// false only for a congested host with every slot taken.
func (l *Limiter) Headroom(host string) bool {
	h := l.lookup(host)
	return h == nil || !h.atLimit()
}

// Draining reports whether host is being drained (or was drained).
func (l *Limiter) Draining(host string) bool {
	h := l.lookup(host)
	return h != nil && h.draining.Load()
}

// HostStatus is one host's state, as [Limiter.Status] reports it.
type HostStatus struct {
	// Upstream is the host's canonical name (host:port).
	Upstream string `json:"upstream"`
	// State is the host's state as far as the Limiter decides it: draining
	// or drained (see [Limiter.Drain]); empty otherwise, the host's state
	// being its health's. A limit is a detail, never a state.
	State pool.State `json:"state,omitempty"`
	// Limit is the enforced concurrency limit, while the host falls
	// behind its traffic (see the package documentation); 0 while none is.
	// The host is at its limit when InFlight reaches Limit or Queued is
	// above 0.
	Limit int64 `json:"limit"`
	// InFlight counts requests waiting for their response header; Active
	// those whose response has not ended (what a drain waits for);
	// Queued those waiting for a slot; Shed those turned away, in all.
	InFlight int64 `json:"in_flight"`
	Active   int64 `json:"active"`
	Queued   int64 `json:"queued"`
	Shed     int64 `json:"shed"`
	// Baseline is the host's latency without queueing, and Latency the
	// last window's (each the median time to a response header in a
	// window, within a fifth); 0 until known.
	Baseline time.Duration `json:"baseline_ns"`
	Latency  time.Duration `json:"latency_ns"`
}

// Status returns every known host's state, sorted by name.
func (l *Limiter) Status() []HostStatus {
	m := *l.hosts.Load()
	out := make([]HostStatus, 0, len(m))
	now := l.now()
	for _, h := range m {
		s := HostStatus{Upstream: h.name, InFlight: h.inflight.Load(), Active: h.active.Load(),
			Queued: h.queued.Load(), Shed: h.shed.Load()}
		if st := h.state(); st != pool.StateServing {
			s.State = st
		}
		if lim := h.limit.Load(); lim < unlimited {
			s.Limit = lim
		}
		h.ctlMu.Lock()
		s.Baseline, s.Latency = durationOf(h.ctl.baseline(now)), durationOf(h.ctl.last)
		h.ctlMu.Unlock()
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Upstream < out[j].Upstream })
	return out
}

// state is the host's state as far as the Limiter decides it: draining,
// drained, or else serving.
func (h *host) state() pool.State {
	switch {
	case h.draining.Load() && h.active.Load() > 0:
		return pool.StateDraining
	case h.draining.Load():
		return pool.StateDrained
	}
	return pool.StateServing
}

// atLimit reports whether a congested host has no slot free.
func (h *host) atLimit() bool {
	lim := h.limit.Load()
	return lim < unlimited && (h.inflight.Load() >= lim || h.queued.Load() > 0)
}
