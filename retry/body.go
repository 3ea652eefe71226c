package retry

import (
	"errors"
	"io"
	"sync"
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
type replay struct {
	mu     sync.Mutex
	readMu sync.Mutex // held while a reader is inside src.Read

	src   io.ReadCloser
	buf   []byte // the first n bytes of the body, while len(buf) == n
	limit int    // the most bytes kept; 0 keeps none
	size  int64  // the body's Content-Length when known and ≤ limit, else 0
	n     int64  // bytes read from src so far
	err   error  // src's sticky error; io.EOF at the end
	cur   *attemptBody
}

// reset prepares rp for a new request body. A body whose declared length
// exceeds limit could never be replayed once read, so none of it is kept.
func (rp *replay) reset(src io.ReadCloser, limit int, contentLength int64) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if contentLength > int64(limit) {
		limit = 0
	}
	rp.src, rp.limit, rp.n, rp.err, rp.cur = src, limit, 0, nil, nil
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

// release detaches the current reader and forgets the client's body. It
// reports whether rp can be reused: not while a detached reader is still
// inside src.Read (it will finish on this replay, which must then not
// serve another request).
func (rp *replay) release() bool {
	rp.detach()
	if !rp.readMu.TryLock() {
		return false
	}
	defer rp.readMu.Unlock()
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.src, rp.err = nil, nil
	if cap(rp.buf) > keepBufferCap {
		rp.buf = nil
	}
	rp.buf = rp.buf[:0]
	return true
}

// keep records p, just read from src; rp.mu is held.
func (rp *replay) keep(p []byte) {
	if len(p) == 0 {
		return
	}
	switch {
	case int64(len(rp.buf)) != rp.n:
		// Already lost: nothing more is kept.
	case len(rp.buf)+len(p) > rp.limit:
		if cap(rp.buf) > keepBufferCap {
			rp.buf = nil
		}
		rp.buf = rp.buf[:0]
	default:
		if need := len(rp.buf) + len(p); need > cap(rp.buf) {
			rp.grow(need)
		}
		rp.buf = append(rp.buf, p...)
	}
	rp.n += int64(len(p))
}

// grow makes room for need bytes. A declared length (within the limit) is
// allocated in one piece; otherwise the buffer doubles, up to the limit, so
// that keeping n bytes allocates less than 2n (append alone grows large
// slices by 1.25×, which allocates about 4× the final size).
func (rp *replay) grow(need int) {
	// Double from what actually arrived, never past the declared length or
	// the limit: a client that declares 1 MiB and then trickles one byte
	// costs minBuffer, not 1 MiB.
	c := max(need, 2*cap(rp.buf), minBuffer)
	if rp.size > 0 {
		c = min(c, max(int(rp.size), need))
	}
	nb := make([]byte, len(rp.buf), min(c, rp.limit))
	copy(nb, rp.buf)
	rp.buf = nb
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
