package proxykit

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
)

// TestStackAdmission: the limiter and the maintenance switch are on by
// default (the limiter knows every upstream from the start), and
// NoLimiter turns the limiter off.
func TestStackAdmission(t *testing.T) {
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	require.NotNil(t, st.Limiter)
	require.NotNil(t, st.Maintenance)
	hs := st.Limiter.Status()
	require.Len(t, hs, 1)
	assert.Equal(t, up.Addr, hs[0].Upstream)
	assert.Empty(t, hs[0].State, "in service: the Limiter claims no state")

	off, err := New(Config{Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet, NoLimiter: true})
	require.NoError(t, err)
	defer off.Close()
	assert.Nil(t, off.Limiter)
	assert.NotNil(t, off.Maintenance)

	_, err = New(Config{Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet, Limiter: admissionSettings(1)})
	assert.ErrorContains(t, err, "Tolerance 1")
}

// TestStackMaintenance: maintenance answers every request with the
// planned page (problem+json here), without reaching an upstream, except
// what MaintenanceAllow lets through; it is never retried.
func TestStackMaintenance(t *testing.T) {
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet,
		MaintenanceAllow: func(r *http.Request) bool { return r.URL.Path == "/healthz" }})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st.Handler)
	defer front.Close()

	require.NoError(t, st.Maintenance.Start(time.Now().Add(time.Hour)))
	req, _ := http.NewRequest("GET", front.URL+"/orders", nil)
	req.Header.Set("Accept", "application/json")
	res, err := front.Client().Do(req)
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&doc))
	res.Body.Close()
	assert.Equal(t, 503, res.StatusCode)
	assert.NotEmpty(t, res.Header.Get("Retry-After"))
	assert.Equal(t, "maintenance", doc["class"])
	assert.NotEmpty(t, doc["until"])
	assert.EqualValues(t, 0, up.Requests(), "nothing reached the upstream")

	res, err = front.Client().Get(front.URL + "/healthz")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, 200, res.StatusCode)
	assert.EqualValues(t, 1, up.Requests())
	st.Maintenance.Stop()
	res, err = front.Client().Get(front.URL + "/")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, 200, res.StatusCode)
}

// TestStackDrain: a drained upstream gets nothing new; the pool's status
// shows it draining, then out.
func TestStackDrain(t *testing.T) {
	a := gatewaytest.NewHealthy(nil)
	defer a.Close()
	b := gatewaytest.NewHealthy(nil)
	defer b.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(a.URL), mustParse(b.URL)}, Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	require.NoError(t, st.Limiter.Drain(a.Addr))
	front := httptest.NewServer(st.Handler)
	defer front.Close()
	for range 20 {
		res, err := front.Client().Get(front.URL + "/")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		assert.Equal(t, 200, res.StatusCode)
	}
	assert.EqualValues(t, 0, a.Requests())
	assert.EqualValues(t, 20, b.Requests())
	assert.Equal(t, pool.StateDrained, st.Pool.Status()[0].State)
}

// TestStackShedIsNotAHostFailure: an upstream offered twice what it can
// serve gets its excess shed (503 overloaded) while it keeps serving, and
// the host-health model does not take it out or rest it for that.
func TestStackShedIsNotAHostFailure(t *testing.T) {
	sem := make(chan struct{}, 2)
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		time.Sleep(40 * time.Millisecond)
		<-sem
		_, _ = io.WriteString(w, "ok\n")
	}))
	defer up.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet,
		Retry: retry.Options{Attempts: 1, PerTryTimeout: 2 * time.Second}})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st.Handler)
	defer front.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200}}
	defer client.CloseIdleConnections()

	var mu sync.Mutex
	byClass := map[string]int{}
	var wg sync.WaitGroup
	for range 200 { // 100/s for 2 s; the upstream serves 50/s
		time.Sleep(10 * time.Millisecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", front.URL+"/", nil)
			req.Header.Set("Accept", "application/json")
			res, err := client.Do(req)
			if err != nil {
				return
			}
			class := "ok"
			if res.StatusCode != 200 {
				var doc map[string]any
				_ = json.NewDecoder(res.Body).Decode(&doc)
				class, _ = doc["class"].(string)
				if res.Header.Get("Retry-After") == "" {
					class += "-no-retry-after"
				}
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			mu.Lock()
			byClass[class]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("%v; limiter %+v; pool %+v", byClass, st.Limiter.Status(), st.Pool.Status())
	assert.Positive(t, byClass["overloaded"], "the excess was shed")
	assert.Positive(t, byClass["ok"])
	assert.Equal(t, byClass["ok"]+byClass["overloaded"], 200, "nothing else: no timeout, no open breaker")
	assert.True(t, st.Hosts.Allows(up.Addr))
	assert.Equal(t, pool.StateServing, st.Pool.Status()[0].State, "never out, resting or warming for being busy")
	assert.Equal(t, 1.0, st.Hosts.Share(up.Addr), "not resting")
}

func admissionSettings(tolerance float64) admission.Settings {
	return admission.Settings{Tolerance: tolerance}
}
