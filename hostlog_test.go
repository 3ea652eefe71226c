package proxykit

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
)

// TestHostLeavesAndRejoinsLogged: an upstream dies under the stack; 40
// requests are all served through failover, and the operator reads
// exactly one warn line naming the host leaving service (with the class
// and since when) and, once it is back, one info line with how long it was
// out. Nothing else about the host reaches the info level.
func TestHostLeavesAndRejoinsLogged(t *testing.T) {
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := newRig(t, 2, nil, Config{Logger: logger})
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
