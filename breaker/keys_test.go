package breaker_test

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/breaker"
)

// headerWriter is a reusable ResponseWriter, so that a loop of requests
// measures the breaker, not the recorder.
type headerWriter struct {
	h      http.Header
	status int
}

func (w *headerWriter) Header() http.Header         { return w.h }
func (w *headerWriter) WriteHeader(s int)           { w.status = s }
func (w *headerWriter) Write(p []byte) (int, error) { return len(p), nil }

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func byTenant(r *http.Request) string { return r.Header.Get("X-Tenant") }

// TestKeyCap: 100k distinct, attacker-chosen keys create at most MaxKeys
// breakers plus the overflow one, and memory stays bounded.
func TestKeyCap(t *testing.T) {
	const maxKeys = 512
	b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: maxKeys})
	require.NoError(t, err)
	h := b.Wrap(statusHandler(http.StatusOK))
	req := httptest.NewRequest("GET", "/", nil)
	w := &headerWriter{h: http.Header{}}

	before := heapInUse()
	for i := range 100_000 {
		req.Header.Set("X-Tenant", "tenant-"+strconv.Itoa(i)+strings.Repeat("x", 100))
		h.ServeHTTP(w, req)
		require.Equal(t, http.StatusOK, w.status)
	}
	grown := int64(heapInUse()) - int64(before)
	st := b.States()
	assert.Len(t, st, maxKeys+1, "MaxKeys breakers and the overflow one")
	assert.True(t, st[len(st)-1].Overflow)
	assert.EqualValues(t, 100_000-maxKeys, st[len(st)-1].Counts.Requests, "the rest shared the overflow breaker")
	t.Logf("heap grew %d KiB for %d breakers", grown/1024, maxKeys)
	assert.Less(t, grown, int64(4<<20), "memory must stay bounded (≈ 1 KiB a breaker)")
}

// TestOverflowIsShared: keys beyond the cap share one breaker, which trips
// for all of them together; keys within the cap keep their own; an
// overlong key goes to the overflow breaker.
func TestOverflowIsShared(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: 2})
	require.NoError(t, err)
	fail := true
	h := b.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail && r.Header.Get("X-Tenant") != "a" {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	do := func(tenant string) int {
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("X-Tenant", tenant)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	assert.Equal(t, 200, do("a"))
	assert.Equal(t, 502, do("b")) // a and b fill the cap
	for i := range 5 {
		assert.Equal(t, 502, do("x"+strconv.Itoa(i)))
	}
	assert.Equal(t, 503, do("y"), "5 failures of different overflow keys trip the shared breaker")
	assert.Equal(t, 503, do(strings.Repeat("k", 300)), "an overlong key is an overflow key")
	assert.Equal(t, 200, do("a"), "a key within the cap keeps its own breaker")
	assert.Equal(t, 502, do("b"))
	st := b.States()
	require.Len(t, st, 3)
	assert.Equal(t, []string{"a", "b", ""}, []string{st[0].Key, st[1].Key, st[2].Key})
	assert.Equal(t, breaker.StateOpen, st[2].State)
}

// TestIdleKeysMakeRoom: once the cap is reached, breakers idle for a whole
// window are dropped to make room for new keys.
func TestIdleKeysMakeRoom(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: 3,
		Interval: 100 * time.Millisecond, BucketPeriod: 50 * time.Millisecond})
	require.NoError(t, err)
	h := b.Wrap(statusHandler(http.StatusOK))
	do := func(tenant string) {
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("X-Tenant", tenant)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		do(k)
	}
	assert.Len(t, b.States(), 4, "d went to the overflow breaker")
	require.Eventually(t, func() bool {
		do("e")
		for _, s := range b.States() {
			if s.Key == "e" {
				return true
			}
		}
		return false
	}, 5*time.Second, 30*time.Millisecond, "idle breakers must make room")
	assert.LessOrEqual(t, len(b.States()), 4)
}
