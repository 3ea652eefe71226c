package proxykit

import (
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

// TestMonitorCountsUpstreamChanges: New wires the Monitor into the pool's
// OnChange beside the user's OnUpstreamChange, which still runs, after
// it: a run-time change shows in the Monitor's snapshot.
func TestMonitorCountsUpstreamChanges(t *testing.T) {
	a, b, c := gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil), gatewaytest.NewHealthy(nil)
	defer a.Close()
	defer b.Close()
	defer c.Close()
	var seen []pool.Change
	var countedBefore []int64
	var st *Stack
	st, err := New(Config{
		Upstreams: []*url.URL{mustParse(a.URL), mustParse(b.URL)},
		Logger:    quiet,
		OnUpstreamChange: func(ch pool.Change) {
			seen = append(seen, ch)
			countedBefore = append(countedBefore, st.Monitor.Snapshot().UpstreamChanges)
		},
	})
	require.NoError(t, err)
	defer st.Close()
	assert.Zero(t, st.Monitor.Snapshot().UpstreamChanges, "the set given to New is no change")

	require.NoError(t, st.SetUpstreams([]*url.URL{mustParse(b.URL), mustParse(c.URL)}))
	s := st.Monitor.Snapshot()
	assert.EqualValues(t, 1, s.UpstreamChanges)
	assert.EqualValues(t, 1, s.UpstreamsAdded)
	assert.EqualValues(t, 1, s.UpstreamsRemoved)
	assert.False(t, s.UpstreamsChanged.IsZero())
	require.Len(t, seen, 1, "the user's hook runs too")
	assert.Equal(t, []int64{1}, countedBefore, "after the Monitor counted it")
	assert.Equal(t, st.Pool.Discovery().Changed, s.UpstreamsChanged, "one time for the change, wherever it shows")
}
