package proxykit

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/status"
)

// TestHostLeavesAndRejoinsLogged: an upstream dies under the stack; 40
// requests are all served through failover, and the operator reads
// exactly one warn line naming the host leaving service (with the class
// and since when) and, once it is back, one info line with how long it was
// out. Nothing else about the host reaches the info level.
func TestHostLeavesAndRejoinsLogged(t *testing.T) {
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// Round robin: the dead host is surely tried again after its first,
	// stale-connection failure (peak EWMA may avoid it from then on).
	r := newRig(t, 2, nil, Config{Logger: logger, Policy: pool.RoundRobin})
	dead := r.ups[1]
	get := func() int {
		res, err := r.front.Client().Get(r.front.URL + "/")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	for range 10 {
		require.Equal(t, http.StatusOK, get())
	}
	require.NoError(t, dead.SetFault(gatewaytest.Refused))
	for range 40 {
		assert.Equal(t, http.StatusOK, get(), "served through failover")
		time.Sleep(10 * time.Millisecond)
	}
	require.Positive(t, r.st.Pool.Status()[1].Failures, "the dead host was tried")
	assert.NotEqual(t, pool.StateServing, r.st.Pool.Status()[1].State, "a dead host is not serving")

	type line struct {
		Level    string        `json:"level"`
		Msg      string        `json:"msg"`
		Upstream string        `json:"upstream"`
		Class    string        `json:"class"`
		State    string        `json:"state"`
		Since    time.Time     `json:"since"`
		OutFor   time.Duration `json:"out_for"`
	}
	about := func(level string) []line {
		var out []line
		for _, l := range logs.Lines() {
			if !strings.Contains(l, dead.Addr) {
				continue
			}
			var v line
			require.NoError(t, json.Unmarshal([]byte(l), &v), l)
			if v.Level == level {
				out = append(out, v)
			}
		}
		return out
	}
	warns := about("WARN")
	require.Len(t, warns, 1, logs.String())
	assert.Equal(t, "upstream out of service", warns[0].Msg)
	assert.Equal(t, dead.Addr, warns[0].Upstream)
	assert.Equal(t, "refused", warns[0].Class)
	assert.Contains(t, []string{string(pool.StateResting), string(pool.StateOut)}, warns[0].State)
	assert.False(t, warns[0].Since.IsZero())
	assert.Empty(t, about("INFO"), "nothing about the host at info while it is out")

	require.NoError(t, dead.SetFault(gatewaytest.Healthy))
	require.Eventually(t, func() bool {
		_ = get()
		return len(about("INFO")) > 0
	}, 30*time.Second, 10*time.Millisecond, "the host rejoins service")
	for range 20 {
		assert.Equal(t, http.StatusOK, get())
	}
	infos := about("INFO")
	require.Len(t, infos, 1, logs.String())
	assert.Equal(t, "upstream back in service", infos[0].Msg)
	assert.Positive(t, infos[0].OutFor)
	assert.Len(t, about("WARN"), 1, "no other warn line about the host")
	st := r.st.Pool.Status()[1]
	assert.Contains(t, []pool.State{pool.StateServing, pool.StateWarming}, st.State, "back in service")
}

// TestOneWordPerHost: a host refusing every connection has one state,
// out, under Upstreams, Circuit breakers and Concurrency limits alike, in
// the status view's HTML and JSON; its breaker's own state and times are
// details, and no time shown is past.
func TestOneWordPerHost(t *testing.T) {
	r := newRig(t, 2, nil, Config{Policy: pool.RoundRobin, Breaker: breaker.Settings{Health: breaker.HostHealth{RestAfter: -1}}})
	dead := r.ups[1]
	require.NoError(t, dead.SetFault(gatewaytest.Refused))
	require.Eventually(t, func() bool {
		res, err := r.front.Client().Get(r.front.URL + "/")
		require.NoError(t, err)
		res.Body.Close()
		return !r.st.Hosts.Allows(dead.Addr)
	}, 10*time.Second, time.Millisecond, "the refusing host goes out")

	rec := httptest.NewRecorder()
	r.st.Status.ServeHTTP(rec, httptest.NewRequest("GET", "/status?format=json", nil))
	var rep status.Report
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep), rec.Body.String())
	for _, u := range rep.Upstreams {
		if u.Upstream == dead.Addr {
			assert.Equal(t, pool.StateOut, u.State)
			assert.False(t, u.Allowed)
			assert.False(t, u.Until.Before(rep.Time), "until %v at %v", u.Until, rep.Time)
		}
	}
	for _, b := range rep.Breakers {
		require.False(t, b.Overflow, "no overflow row while nothing overflows")
		if b.Key == dead.Addr {
			assert.Equal(t, pool.StateOut, b.HostState)
			assert.False(t, b.OpenUntil.Before(rep.Time), "open until %v at %v", b.OpenUntil, rep.Time)
			assert.True(t, b.NextProbe.IsZero() || !b.NextProbe.Before(rep.Time))
		}
	}
	for _, a := range rep.Admission {
		assert.Empty(t, a.State, "the Limiter claims no state for %s", a.Upstream)
	}
	assert.NotContains(t, rec.Body.String(), `"healthy"`)

	req := httptest.NewRequest("GET", "/status", nil)
	req.Header.Set("Accept", "text/html")
	rec = httptest.NewRecorder()
	r.st.Status.ServeHTTP(rec, req)
	rows := 0
	for _, row := range strings.Split(rec.Body.String(), "<tr>") {
		if strings.Contains(row, "<code>"+dead.Addr) || strings.Contains(row, ": "+dead.Addr+"</code>") {
			rows++
			assert.Contains(t, row, `class="bad">out<`, row)
		}
	}
	assert.Equal(t, 3, rows, "upstreams, breakers and limits each show the host")
	assert.NotContains(t, rec.Body.String(), "probing")
}
