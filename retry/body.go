package retry

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

var (
	// errDetached is what an attempt's body reader returns once its attempt
	// is over: a transport that still reads it after RoundTrip returned
	// must not take bytes that belong to the next attempt.
	errDetached = errors.New("retry: request body read after its attempt ended")
	// errReplayLost is returned when an attempt needs bytes that were read
	// from the client but not kept. Retries are not started in that state;
	// the error guards against truncating a body silently.
	errReplayLost = errors.New("retry: request body bytes needed for the retry were not kept")
)

// keepBufferCap is the largest replay buffer a recycled request state keeps
// for the next request; larger ones go back to the garbage collector.
const keepBufferCap = 64 << 10

// replay streams a request body to successive attempts. Nothing is read up
// front: the first attempt reads the client's body through a tee that keeps
// up to limit bytes; a later attempt gets those bytes again and then reads
// on from the client. If more than limit bytes were read, the kept prefix
// is dropped and the body can no longer be replayed; a body of which no
// byte was read can always be.
//
// Each attempt reads through its own attemptBody. The transport may read
// or close an attempt's body after RoundTrip returned (its write loop runs
// on another goroutine), so an attempt's reader is detached before the next
// attempt starts: from then on it returns errDetached. A read of the
// client's body that a detached reader has in flight still completes, and
// its bytes are kept for the next attempt, so no byte is lost or read
// twice. Reads of the client's body are serialised by readMu, which is held
// only around src.Read; mu guards the rest.
//
// The client's body is never closed here: net/http closes it after the
// handler returns.
//
// Buffer memory is also counted in a total shared by the requests of one
// Retry (mem): the buffer's capacity is reserved there before it is used,
// and given back when the request ends (release), whether it ended
// normally, with a panic, or with a detached reader still reading. When the
// total has no room, the body is dropped from the buffer as if it were over
// limit: it streams on, unkept, and can no longer be replayed.
type replay struct {
	mu     sync.Mutex
	readMu sync.Mutex // held while a reader is inside src.Read

	src      io.ReadCloser
	mem      *replayMemory // the total the buffer is counted in
	buf      []byte        // the first n bytes of the body, while len(buf) == n
	limit    int           // the most bytes kept; 0 keeps none
	reserved int           // bytes of buf's capacity counted in mem
	ended    bool          // the request is over: nothing more is kept
	size     int64         // the body's Content-Length when known and ≤ limit, else 0
	n        int64         // bytes read from src so far
	err      error         // src's sticky error; io.EOF at the end
	cur      *attemptBody
}

// replayMemory is the total of replay buffer memory of one Retry: the
// capacity of the buffers that requests in flight use, in bytes. Idle
// buffers kept by recycled request states (at most keepBufferCap each) are
// not counted: no request holds them, and sync.Pool lets the garbage
// collector take them.
type replayMemory struct {
	max     int64        // the most bytes reserved at once
	used    atomic.Int64 // bytes reserved now
	skipped atomic.Int64 // bodies that went unkept because used was at max
}

// reserve counts n more bytes, if that stays within max.
func (m *replayMemory) reserve(n int64) bool {
	for {
		u := m.used.Load()
		if n > m.max-u {
			return false
		}
		if m.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// release gives back n reserved bytes.
func (m *replayMemory) release(n int64) {
	if n > 0 {
		m.used.Add(-n)
	}
}

// reset prepares rp for a new request body, counting its buffer in mem. A
// body whose declared length exceeds limit could never be replayed once
// read, so none of it is kept.
func (rp *replay) reset(src io.ReadCloser, mem *replayMemory, limit int, contentLength int64) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if contentLength > int64(limit) {
		limit = 0
	}
	rp.src, rp.mem, rp.limit, rp.n, rp.err, rp.cur = src, mem, limit, 0, nil, nil
	rp.reserved, rp.ended = 0, false
	rp.size = max(contentLength, 0)
	rp.buf = rp.buf[:0]
}

// attempt detaches the current reader, if any, and returns a new reader
// for the next attempt, positioned at the start of the body.
func (rp *replay) attempt() *attemptBody {
	a := &attemptBody{rp: rp}
	rp.mu.Lock()
	rp.detachLocked()
	rp.cur = a
	rp.mu.Unlock()
	return a
}

// detach ends the current attempt's reader.
func (rp *replay) detach() {
	rp.mu.Lock()
	rp.detachLocked()
	rp.mu.Unlock()
}

func (rp *replay) detachLocked() {
	if rp.cur != nil {
		rp.cur.detached = true
		rp.cur = nil
	}
}

// settle detaches the current reader, waits for a read of the client's body
// that it may have in flight, and then reports whether the body can be
// replayed. Waiting matters: bytes that read was taking would otherwise
// reach neither the buffer check nor the next attempt.
func (rp *replay) settle() bool {
	rp.detach()
	rp.readMu.Lock()
	defer rp.readMu.Unlock()
	return rp.replayable()
}

// replayable reports whether a new attempt can be given the whole body:
// every byte read so far was kept, and the client's body did not fail.
func (rp *replay) replayable() bool {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.err != nil && rp.err != io.EOF {
		return false
	}
	return int64(len(rp.buf)) == rp.n
}

// consumed returns how many bytes of the client's body were read.
func (rp *replay) consumed() int64 {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.n
}

// release ends the request: it detaches the current reader, gives the
// buffer's reservation back to the total, and forgets the client's body.
// It reports whether rp can be reused: not while a detached reader is
// still inside src.Read (it will finish on this replay, which must then
// not serve another request; what it reads is no longer kept, and the
// buffer is left to the garbage collector).
func (rp *replay) release() bool {
	rp.detach()
	rp.mu.Lock()
	rp.ended = true
	rp.unreserve()
	rp.mu.Unlock()
	if !rp.readMu.TryLock() {
		rp.mu.Lock()
		rp.buf = nil
		rp.mu.Unlock()
		return false
	}
	defer rp.readMu.Unlock()
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.src, rp.err, rp.mem = nil, nil, nil
	if cap(rp.buf) > keepBufferCap {
		rp.buf = nil
	}
	rp.buf = rp.buf[:0]
	return true
}

// keep records p, just read from src; rp.mu is held. While every byte read
// so far is kept, p is kept too if it fits the limit and the total has
// room for the buffer; otherwise the buffer is dropped, for good.
func (rp *replay) keep(p []byte) {
	if len(p) == 0 {
		return
	}
	if int64(len(rp.buf)) == rp.n { // nothing lost yet
		need := len(rp.buf) + len(p)
		switch {
		case rp.ended || need > rp.limit:
			rp.drop()
		case need > rp.reserved && !rp.ensure(need):
			rp.mem.skipped.Add(1)
			rp.drop()
		default:
			rp.buf = append(rp.buf, p...)
		}
	}
	rp.n += int64(len(p))
}

// drop empties the buffer and gives back its reservation: the body is no
// longer kept. A small buffer stays for the next request of a recycled
// state; rp.mu is held.
func (rp *replay) drop() {
	rp.unreserve()
	if cap(rp.buf) > keepBufferCap {
		rp.buf = nil
	}
	rp.buf = rp.buf[:0]
}

// unreserve gives the buffer's reservation back to the total; rp.mu is held.
func (rp *replay) unreserve() {
	if rp.reserved > 0 {
		rp.mem.release(int64(rp.reserved))
		rp.reserved = 0
	}
}

// ensure makes room for need bytes (need ≤ limit) in a buffer whose whole
// capacity is counted in the total, and reports whether the total had room;
// rp.mu is held.
//
// A buffer left by the previous request of a recycled state is counted
// whole once it is used. A new one is sized for the declared length (within
// the limit) in one piece; otherwise the buffer doubles, up to the limit,
// so that keeping n bytes allocates less than 2n (append alone grows large
// slices by 1.25×, which allocates about 4× the final size).
func (rp *replay) ensure(need int) bool {
	c := cap(rp.buf)
	if need > c {
		// Double from what actually arrived, never past the declared
		// length or the limit: a client that declares 1 MiB and then
		// trickles one byte costs minBuffer, not 1 MiB.
		c = max(need, 2*c, minBuffer)
		if rp.size > 0 {
			c = min(c, max(int(rp.size), need))
		}
		c = min(c, rp.limit)
	}
	if extra := c - rp.reserved; extra > 0 {
		if !rp.mem.reserve(int64(extra)) {
			return false
		}
		rp.reserved = c
	}
	if c > cap(rp.buf) {
		nb := make([]byte, len(rp.buf), c)
		copy(nb, rp.buf)
		rp.buf = nb
	}
	return true
}

// minBuffer is the first allocation of a buffer for a body of unknown length.
const minBuffer = 16 << 10

// attemptBody is one attempt's view of the request body. Close detaches it;
// it never closes the client's body.
type attemptBody struct {
	rp       *replay
	pos      int64 // bytes of the body this reader delivered
	detached bool  // guarded by rp.mu
}

// Read serves kept bytes first, then reads on from the client.
func (a *attemptBody) Read(p []byte) (int, error) {
	rp := a.rp
	rp.mu.Lock()
	for {
		switch {
		case a.detached:
			rp.mu.Unlock()
			return 0, errDetached
		case a.pos < rp.n:
			if int64(len(rp.buf)) != rp.n {
				rp.mu.Unlock()
				return 0, errReplayLost
			}
			k := copy(p, rp.buf[a.pos:])
			a.pos += int64(k)
			rp.mu.Unlock()
			return k, nil
		case rp.err != nil:
			err := rp.err
			rp.mu.Unlock()
			return 0, err
		case len(p) == 0:
			rp.mu.Unlock()
			return 0, nil
		}
		// At the end of what was read: read on from the client, after any
		// read a detached reader has in flight, then look again.
		rp.mu.Unlock()
		rp.readMu.Lock()
		rp.mu.Lock()
		if !a.detached && a.pos == rp.n && rp.err == nil {
			break
		}
		rp.readMu.Unlock()
	}
	rp.mu.Unlock()
	k, err := rp.src.Read(p)
	rp.mu.Lock()
	rp.keep(p[:k])
	if err != nil {
		rp.err = err
	}
	detached := a.detached
	if !detached {
		a.pos += int64(k)
	}
	rp.mu.Unlock()
	rp.readMu.Unlock()
	if detached {
		return 0, errDetached
	}
	return k, err
}

// Close detaches the reader. The client's body stays open.
func (a *attemptBody) Close() error {
	rp := a.rp
	rp.mu.Lock()
	a.detached = true
	if rp.cur == a {
		rp.cur = nil
	}
	rp.mu.Unlock()
	return nil
}
