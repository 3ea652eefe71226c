package status_test

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/status"
)

// TestMonitorCountsUpstreamChanges: each change of the upstream set is
// counted with the hosts it added and removed and the time of the last,
// in the snapshot, the view's JSON and its HTML page.
func TestMonitorCountsUpstreamChanges(t *testing.T) {
	at := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	m := &status.Monitor{Now: func() time.Time { return at }}
	s := m.Snapshot()
	assert.Zero(t, s.UpstreamChanges)
	assert.True(t, s.UpstreamsChanged.IsZero())

	m.ObserveUpstreamChange(pool.Change{Source: "dns+http://backend:8080", Added: []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}, Hosts: 3, Time: at})
	m.ObserveUpstreamChange(pool.Change{Source: "dns+http://backend:8080", Added: []string{"10.0.0.4:8080"},
		Removed: []string{"10.0.0.1:8080"}, Kept: []string{"10.0.0.2:8080", "10.0.0.3:8080"}, Hosts: 3, Time: at.Add(time.Minute)})
	m.ObserveUpstreamChange(pool.Change{Source: pool.StaticSource, Removed: []string{"10.0.0.2:8080"}, Hosts: 2}) // no Time: the Monitor's clock

	s = m.Snapshot()
	assert.EqualValues(t, 3, s.UpstreamChanges)
	assert.EqualValues(t, 4, s.UpstreamsAdded)
	assert.EqualValues(t, 2, s.UpstreamsRemoved)
	assert.True(t, s.UpstreamsChanged.Equal(at), "the third change, at the Monitor's clock: %v", s.UpstreamsChanged)

	v := &status.View{Monitor: m}
	rec := httptest.NewRecorder()
	v.ServeHTTP(rec, httptest.NewRequest("GET", "/status", nil))
	var doc struct {
		Traffic map[string]any `json:"traffic"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc))
	assert.EqualValues(t, 3, doc.Traffic["upstream_changes"])
	assert.EqualValues(t, 4, doc.Traffic["upstreams_added"])
	assert.EqualValues(t, 2, doc.Traffic["upstreams_removed"])
	assert.Equal(t, "2026-11-22T12:00:00Z", doc.Traffic["upstreams_changed"])

	req := httptest.NewRequest("GET", "/status", nil)
	req.Header.Set("Accept", "text/html")
	rec = httptest.NewRecorder()
	v.ServeHTTP(rec, req)
	assert.Contains(t, rec.Body.String(), "Upstream set changes</span><b>3</b>")
	assert.Contains(t, rec.Body.String(), "+4 −2 hosts, last at 12:00:00Z")
}

// TestMonitorUpstreamChangesConcurrent: changes reported from several
// pools at once are all counted (run with -race).
func TestMonitorUpstreamChangesConcurrent(t *testing.T) {
	m := &status.Monitor{}
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 100 {
				m.ObserveUpstreamChange(pool.Change{Added: []string{"a:1"}, Removed: []string{"b:1", "c:1"}, Time: time.Now()})
				_ = m.Snapshot()
			}
		}()
	}
	for range 4 {
		<-done
	}
	s := m.Snapshot()
	assert.EqualValues(t, 400, s.UpstreamChanges)
	assert.EqualValues(t, 400, s.UpstreamsAdded)
	assert.EqualValues(t, 800, s.UpstreamsRemoved)
}
