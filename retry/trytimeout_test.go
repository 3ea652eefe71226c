package retry

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

// TestTryCtx: the per-try context reports the per-try deadline while armed,
// ends as a deadline (not as a cancellation) with a timeout cause the
// gateway classifies as a timeout, and stops applying once disarmed.
func TestTryCtx(t *testing.T) {
	parent, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	pd, _ := parent.Deadline()

	c := newTryCtx(parent, 20*time.Millisecond)
	d, ok := c.Deadline()
	require.True(t, ok)
	assert.True(t, d.Before(pd), "the per-try deadline is the earlier one")
	<-c.Done()
	assert.ErrorIs(t, c.Err(), context.DeadlineExceeded)
	assert.NotErrorIs(t, c.Err(), context.Canceled)
	cause := context.Cause(c)
	assert.ErrorIs(t, cause, context.DeadlineExceeded)
	var ne net.Error
	require.True(t, errors.As(cause, &ne))
	assert.True(t, ne.Timeout())
	assert.NotEmpty(t, cause.Error())
	assert.Equal(t, gateway.ClassTimeout, gateway.ClassifyError(cause, "", true).Class)
	c.stop()

	c = newTryCtx(parent, 20*time.Millisecond)
	c.disarm()
	d, _ = c.Deadline()
	assert.Equal(t, pd, d, "disarmed: the parent's deadline")
	time.Sleep(40 * time.Millisecond)
	assert.NoError(t, c.Err(), "a disarmed timer never fires")
	c.stop()
	assert.ErrorIs(t, c.Err(), context.Canceled, "stop ends the attempt's context")

	short, cancelShort := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancelShort()
	c = newTryCtx(short, time.Hour)
	d, _ = c.Deadline()
	sd, _ := short.Deadline()
	assert.Equal(t, sd, d, "an earlier parent deadline wins")
	<-c.Done()
	assert.ErrorIs(t, c.Err(), context.DeadlineExceeded, "the parent's own deadline")
	c.stop()
}
