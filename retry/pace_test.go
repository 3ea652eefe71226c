package retry

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// blockingBody is a request body whose reads wait for a value on each.
type blockingBody chan struct{}

func (b blockingBody) Read(p []byte) (int, error) {
	if _, ok := <-b; !ok {
		return 0, io.EOF
	}
	p[0] = 'x'
	return 1, nil
}

func (b blockingBody) Close() error { return nil }

// TestTryCtxPausesForTheClientsBody: while the transport waits on a read
// of the client's body, the per-try timer does not run, however long the
// read takes; the time is added to the deadline, and the timer runs on
// once the read returned.
func TestTryCtxPausesForTheClientsBody(t *testing.T) {
	const d = 50 * time.Millisecond
	c := newTryCtx(t.Context(), d)
	defer c.stop()
	body := blockingBody(make(chan struct{}))
	r := c.pace(body)
	before, _ := c.Deadline()
	read := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 1))
		read <- err
	}()
	time.Sleep(10 * d) // the client's pace, not the upstream's
	assert.NoError(t, c.Err(), "no expiry while waiting on the client's body")
	body <- struct{}{}
	require.NoError(t, <-read)
	after, _ := c.Deadline()
	assert.GreaterOrEqual(t, after.Sub(before), 9*d, "the wait moved the deadline")
	select {
	case <-c.Done():
	case <-time.After(100 * d):
		t.Fatal("the per-try timeout never ended the attempt after the body was read")
	}
	assert.ErrorIs(t, c.Err(), context.DeadlineExceeded)
	assert.ErrorIs(t, context.Cause(c), errTryTimeout)
}
