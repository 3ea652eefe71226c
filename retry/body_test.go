package retry

import (
	"bytes"
	"errors"
	"io"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// source is a client body: it serves data in chunks; with a gate, each
// Read first announces itself on entered and then waits for a token.
type source struct {
	data    []byte
	off     int
	chunk   int
	err     error // returned at the end instead of io.EOF, if set
	gate    chan struct{}
	entered chan struct{}
	closed  atomic.Bool
}

func newSource(n, chunk int) *source {
	b := make([]byte, n)
	_, _ = io.ReadFull(&pattern{n: int64(n)}, b)
	return &source{data: b, chunk: chunk}
}

func (s *source) gated() *source {
	s.gate, s.entered = make(chan struct{}), make(chan struct{}, 16)
	return s
}

func (s *source) Read(p []byte) (int, error) {
	if s.gate != nil {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-s.gate
	}
	if s.off >= len(s.data) {
		if s.err != nil {
			return 0, s.err
		}
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), s.chunk)], s.data[s.off:])
	s.off += n
	return n, nil
}

func (s *source) Close() error { s.closed.Store(true); return nil }

// newReplay returns a replay of src counted in a total without a cap.
func newReplay(src *source, limit int, contentLength int64) *replay {
	return newReplayIn(&replayMemory{max: math.MaxInt64}, src, limit, contentLength)
}

// newReplayIn returns a replay of src counted in mem.
func newReplayIn(mem *replayMemory, src *source, limit int, contentLength int64) *replay {
	rp := &replay{}
	rp.reset(src, mem, limit, contentLength)
	return rp
}

// readN reads n bytes (or to the end) from r.
func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b, err := io.ReadAll(io.LimitReader(r, int64(n)))
	require.NoError(t, err)
	return b
}

// TestReplayServesKeptBytesThenTheRest: a retry's reader gets the bytes the
// first attempt read, then the unread rest, byte-exact; the client's body is
// never closed; the first attempt's reader is dead once detached.
func TestReplayServesKeptBytesThenTheRest(t *testing.T) {
	src := newSource(10_000, 1000)
	rp := newReplay(src, 1<<20, -1)

	a := rp.attempt()
	assert.Equal(t, src.data[:3000], readN(t, a, 3000))
	require.True(t, rp.settle())
	_, err := a.Read(make([]byte, 10))
	assert.ErrorIs(t, err, errDetached)

	b := rp.attempt()
	all, err := io.ReadAll(b)
	require.NoError(t, err)
	assert.Equal(t, src.data, all)

	c := rp.attempt()
	all, err = io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, src.data, all, "a third attempt replays the whole body from the buffer")
	assert.True(t, rp.replayable())
	assert.False(t, src.closed.Load())
	assert.NoError(t, c.Close())
	assert.False(t, src.closed.Load(), "closing an attempt's reader never closes the client's body")
}

// TestReplayOverLimit: once more than the limit was read, the body cannot be
// replayed, and a reader that would need the lost bytes fails instead of
// truncating the body.
func TestReplayOverLimit(t *testing.T) {
	src := newSource(5000, 1000)
	rp := newReplay(src, 1500, -1)
	a := rp.attempt()
	readN(t, a, 2000)
	assert.False(t, rp.settle())
	assert.Equal(t, int64(2000), rp.consumed())
	_, err := rp.attempt().Read(make([]byte, 100))
	assert.ErrorIs(t, err, errReplayLost)
}

// TestReplayUnreadLargeBody: a body larger than the limit (here declared by
// its Content-Length) is not buffered at all, and stays replayable while
// nothing of it was read.
func TestReplayUnreadLargeBody(t *testing.T) {
	src := newSource(5000, 1000)
	rp := newReplay(src, 1000, 5000)
	rp.attempt()
	require.True(t, rp.settle())
	all, err := io.ReadAll(rp.attempt())
	require.NoError(t, err)
	assert.Equal(t, src.data, all)
	assert.Zero(t, cap(rp.buf), "nothing is kept of a body that cannot be replayed once read")
	assert.False(t, rp.replayable())
}

// TestReplayKnownLengthAllocatesOnce: a declared length within the limit is
// allocated in one piece.
func TestReplayKnownLengthAllocatesOnce(t *testing.T) {
	src := newSource(10_000, 700)
	rp := newReplay(src, 1<<20, 10_000)
	_, err := io.ReadAll(rp.attempt())
	require.NoError(t, err)
	assert.Equal(t, 10_000, cap(rp.buf))
}

// TestReplayGrowsWithWhatArrives: a client that declares a 1 MiB body and
// sends one byte costs a small buffer, not the declared length; a body
// that does arrive grows the buffer by doubling up to its length.
func TestReplayGrowsWithWhatArrives(t *testing.T) {
	src := newSource(1, 1).gated()
	rp := newReplay(src, 1<<20, 1<<20)
	a := rp.attempt()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p := make([]byte, 64<<10)
		_, _ = a.Read(p)
	}()
	<-src.entered
	close(src.gate)
	<-done
	assert.LessOrEqual(t, cap(rp.buf), minBuffer, "one byte arrived: no 1 MiB allocation")

	full := newSource(300_000, 8<<10)
	rp = newReplay(full, 1<<20, 300_000)
	got, err := io.ReadAll(rp.attempt())
	require.NoError(t, err)
	assert.Equal(t, full.data, got)
	assert.Equal(t, 300_000, cap(rp.buf), "grown to the declared length, not past it")
}

// TestReplaySourceErrorIsNotReplayable: a client body that failed cannot be
// replayed.
func TestReplaySourceErrorIsNotReplayable(t *testing.T) {
	src := newSource(100, 100)
	src.err = errors.New("client went away mid-upload")
	rp := newReplay(src, 1<<20, -1)
	_, err := io.ReadAll(rp.attempt())
	assert.ErrorIs(t, err, src.err)
	assert.False(t, rp.settle())
}

// TestReplayLateReadIsKeptForTheNextAttempt: the transport of a finished
// attempt is still inside Read, blocked on the client's body, when the next
// attempt starts. When that read returns, its bytes go to the buffer and not
// to the dead attempt, and the new attempt gets the whole body, in order.
func TestReplayLateReadIsKeptForTheNextAttempt(t *testing.T) {
	src := newSource(3000, 1000).gated()
	rp := newReplay(src, 1<<20, -1)
	a := rp.attempt()

	lateErr := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 1000))
		lateErr <- err
	}()
	<-src.entered // a is inside src.Read

	b := rp.attempt() // detaches a
	got := make(chan []byte, 1)
	go func() {
		all, err := io.ReadAll(b)
		assert.NoError(t, err)
		got <- all
	}()
	// b must wait for a's read: nothing may enter the client's body twice.
	select {
	case <-src.entered:
		t.Fatal("a second read of the client's body started while one was in flight")
	case <-time.After(20 * time.Millisecond):
	}
	src.gate <- struct{}{} // a's read completes
	assert.ErrorIs(t, <-lateErr, errDetached)
	close(src.gate) // b reads the rest
	assert.Equal(t, src.data, <-got)
}

// TestReplaySettleWaitsForAnInFlightRead: settle reports replayability only
// after a detached reader's read returned, so that its bytes are counted.
func TestReplaySettleWaitsForAnInFlightRead(t *testing.T) {
	src := newSource(3000, 2000).gated()
	rp := newReplay(src, 1500, -1)
	a := rp.attempt()
	go func() { _, _ = a.Read(make([]byte, 2000)) }()
	<-src.entered

	settled := make(chan bool, 1)
	go func() { settled <- rp.settle() }()
	select {
	case <-settled:
		t.Fatal("settle returned while a read was in flight")
	case <-time.After(20 * time.Millisecond):
	}
	assert.False(t, rp.release(), "a state with a read in flight must not be recycled")
	src.gate <- struct{}{}
	assert.False(t, <-settled, "the late read took 2000 bytes, over the 1500-byte limit")
	assert.True(t, rp.release())
}

// TestReplayCloseDetaches: Close ends an attempt's reader and nothing else.
func TestReplayCloseDetaches(t *testing.T) {
	src := newSource(100, 10)
	rp := newReplay(src, 1<<20, -1)
	a := rp.attempt()
	readN(t, a, 10)
	require.NoError(t, a.Close())
	_, err := a.Read(make([]byte, 10))
	assert.ErrorIs(t, err, errDetached)
	all, err := io.ReadAll(rp.attempt())
	require.NoError(t, err)
	assert.True(t, bytes.Equal(src.data, all))
}

// TestReplayTotalCap: replays counted in one total share it. A buffer
// reserves its capacity as it grows; one that finds no room drops what it
// kept and streams on, whole and byte-exact, but can no longer be replayed;
// release gives every reservation back, and the room is there again.
func TestReplayTotalCap(t *testing.T) {
	mem := &replayMemory{max: 40 << 10}
	a := newReplayIn(mem, newSource(30<<10, 10<<10), 1<<20, -1)
	readN(t, a.attempt(), 30<<10)
	assert.Equal(t, int64(32<<10), mem.used.Load(), "16 KiB, then doubled to 32 KiB")
	assert.Equal(t, int64(cap(a.buf)), mem.used.Load(), "the reservation is the capacity")
	require.True(t, a.settle())

	src := newSource(50<<10, 10<<10)
	b := newReplayIn(mem, src, 1<<20, -1)
	all, err := io.ReadAll(b.attempt())
	require.NoError(t, err)
	assert.Equal(t, src.data, all, "a body over the total still streams whole")
	assert.False(t, b.settle(), "but cannot be replayed")
	assert.Zero(t, cap(b.buf))
	assert.Equal(t, int64(32<<10), mem.used.Load())
	assert.Equal(t, int64(1), mem.skipped.Load())

	all, err = io.ReadAll(a.attempt())
	require.NoError(t, err)
	assert.Len(t, all, 30<<10, "the first replay kept its room")
	assert.True(t, a.release())
	assert.True(t, b.release())
	assert.Zero(t, mem.used.Load())

	c := newReplayIn(mem, newSource(30<<10, 10<<10), 1<<20, -1)
	readN(t, c.attempt(), 30<<10)
	assert.True(t, c.settle(), "released room is reused")
	assert.True(t, c.release())
	assert.Zero(t, mem.used.Load())
}

// TestReplayRecycledBufferIsCounted: a buffer left by the previous request
// of a recycled state counts in the total again once the next request uses
// it, and not while it is idle.
func TestReplayRecycledBufferIsCounted(t *testing.T) {
	mem := &replayMemory{max: 1 << 20}
	rp := newReplayIn(mem, newSource(20<<10, 4<<10), 1<<20, 20<<10)
	readN(t, rp.attempt(), 20<<10)
	require.Equal(t, int64(20<<10), mem.used.Load())
	require.True(t, rp.release())
	assert.Zero(t, mem.used.Load(), "an idle buffer is not counted")
	assert.Equal(t, 20<<10, cap(rp.buf), "but kept for the next request")

	rp.reset(newSource(100, 100), mem, 1<<20, -1)
	readN(t, rp.attempt(), 100)
	assert.Equal(t, int64(20<<10), mem.used.Load(), "counted whole when used again")
	require.True(t, rp.release())
	assert.Zero(t, mem.used.Load())
}

// TestReplayReleaseWithReaderOut: a request that ends while a detached
// reader is still inside the client body's Read gives its reservation back
// at once; what that read brings is not kept.
func TestReplayReleaseWithReaderOut(t *testing.T) {
	mem := &replayMemory{max: 1 << 20}
	src := newSource(3000, 1000).gated()
	rp := newReplayIn(mem, src, 1<<20, -1)
	a := rp.attempt()
	late := make(chan error, 1)
	go func() {
		k, err := a.Read(make([]byte, 1000))
		assert.NoError(t, err)
		assert.Equal(t, 1000, k)
		_, err = a.Read(make([]byte, 1000))
		late <- err
	}()
	<-src.entered
	src.gate <- struct{}{} // the first read completes
	<-src.entered          // the second is in flight
	require.Equal(t, int64(minBuffer), mem.used.Load())
	assert.False(t, rp.release(), "not reusable while a read is out")
	assert.Zero(t, mem.used.Load(), "but its memory is given back")
	src.gate <- struct{}{}
	assert.ErrorIs(t, <-late, errDetached)
	assert.Zero(t, mem.used.Load(), "the late read reserved nothing")
	assert.Zero(t, cap(rp.buf))
}
