package admission

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestQuietLiftsLimit: a limit learned under overload does not outlive
// it. A host left congested at limit 12 by an overload sees 15 s of quiet
// (on the Limiter's injected clock: no request, so no sample); the next
// burst of 30 requests finds its limit lifted and none is shed.
func TestQuietLiftsLimit(t *testing.T) {
	l, err := New(Settings{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	var clk atomic.Int64
	clk.Store(int64(time.Hour))
	l.clock = clk.Load
	h := congest(l, testHost, 12)
	require.True(t, l.Congested(testHost))

	clk.Add(int64(15 * time.Second))
	up := newHeld()
	rt := l.Transport(up)
	var held []<-chan result
	for range 30 {
		held = append(held, send(rt, req(context.Background(), "/hold")))
	}
	require.Eventually(t, func() bool { return len(up.reached()) == 30 || h.shed.Load() > 0 },
		5*time.Second, time.Millisecond)
	assert.EqualValues(t, 0, h.shed.Load(), "nothing shed after the quiet")
	assert.False(t, l.Congested(testHost), "the limit was lifted")
	close(up.release)
	for _, ch := range held {
		assert.Equal(t, "ok", (<-ch).class())
	}
}
