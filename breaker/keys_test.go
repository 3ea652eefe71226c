package breaker_test

import (
	"log/slog"
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
	"github.com/proxykit/proxykit/gateway/gatewaytest"
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
// breakers plus the overflow entry, and memory stays bounded. The first
// MaxKeys keys fill the map, the next MaxKeys take the places of the least
// recently used (the ration of one window), and the rest pass unguarded,
// counted in the overflow entry. The window is an hour, so that the loop
// (seconds under the race detector on a busy machine) stays within one
// window: with the default 10 s the overflow counts roll away and a second
// ration of keys gets places.
func TestKeyCap(t *testing.T) {
	const maxKeys = 512
	b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: maxKeys,
		Interval: time.Hour, BucketPeriod: time.Minute})
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
	assert.Len(t, st, maxKeys+1, "MaxKeys breakers and the overflow entry")
	ov := st[len(st)-1]
	assert.True(t, ov.Overflow)
	assert.LessOrEqual(t, ov.Counts.Requests, uint32(100_000-2*maxKeys), "a window's ration of keys got a place")
	assert.Greater(t, ov.Counts.Requests, uint32(90_000), "the rest passed unguarded")
	t.Logf("heap grew %d KiB for %d breakers", grown/1024, maxKeys)
	assert.Less(t, grown, int64(4<<20), "memory must stay bounded (≈ 1 KiB a breaker)")
}

// tenantDo serves one request for tenant through h and returns its status.
func tenantDo(h http.Handler, tenant string) int {
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Tenant", tenant)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code
}

// failingFor returns a handler that answers 502 for the tenants fail
// accepts, 200 for the others.
func failingFor(fail func(tenant string) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail(r.Header.Get("X-Tenant")) {
			w.WriteHeader(http.StatusBadGateway)
		}
	})
}

func isJunk(tenant string) bool { return strings.HasPrefix(tenant, "junk-") }

// TestKeyFloodNoSharedOutage: junk keys fill the cap,
// then requests on new keys fail. No breaker is shared by the keys beyond
// the cap, so no tenant gets 503 because of another's failures: a new key
// either takes the place
// of a least recently used breaker or, once a window's ration of evictions
// is spent, passes unguarded: a fresh tenant's healthy request succeeds.
func TestKeyFloodNoSharedOutage(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant}) // MaxKeys 1024
	require.NoError(t, err)
	h := b.Wrap(failingFor(isJunk))

	// The reported attack: 1,024 junk keys, 5 failing requests on new keys.
	for i := range breaker.DefaultMaxKeys {
		assert.Equal(t, 200, tenantDo(h, "filler-"+strconv.Itoa(i)))
	}
	for i := range 5 {
		assert.Equal(t, 502, tenantDo(h, "junk-"+strconv.Itoa(i)))
	}
	assert.Equal(t, 200, tenantDo(h, "fresh-tenant"), "a tenant not seen before is served")

	// Harder: spend the ration of evictions too, so that new keys overflow,
	// then fail many requests on new keys.
	for i := range 2 * breaker.DefaultMaxKeys {
		tenantDo(h, "filler2-"+strconv.Itoa(i))
	}
	for i := range 50 {
		assert.Equal(t, 502, tenantDo(h, "junk-more-"+strconv.Itoa(i)), "overflow is never fast-failed")
	}
	assert.Equal(t, 200, tenantDo(h, "another-fresh-tenant"), "overflow fails open")
	assert.Equal(t, 200, tenantDo(h, strings.Repeat("k", 300)), "an overlong key passes unguarded")

	st := b.States()
	require.Len(t, st, breaker.DefaultMaxKeys+1, "memory stays bounded")
	ov := st[len(st)-1]
	require.True(t, ov.Overflow)
	assert.Equal(t, breaker.StateClosed, ov.State, "the overflow entry never trips")
	assert.EqualValues(t, 50, ov.Counts.Failures, "overflow requests are counted")
	for _, s := range st[:len(st)-1] {
		assert.Equal(t, breaker.StateClosed, s.State, s.Key)
	}
}

// TestBusyKeysDoNotPinSlots: junk keys that keep
// getting requests hold every place. Were only breakers idle for a whole
// window dropped, busy junk would keep a tenant beyond the cap unguarded
// for as long as the flood lasted. The least recently used
// breaker makes room: the tenant gets its own breaker, which trips for it
// alone.
func TestBusyKeysDoNotPinSlots(t *testing.T) {
	const maxKeys = 8
	b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: maxKeys, Timeout: time.Minute})
	require.NoError(t, err)
	h := b.Wrap(failingFor(func(tenant string) bool { return tenant == "tenant" }))
	junk := func() {
		for i := range maxKeys {
			require.Equal(t, 200, tenantDo(h, "busy-junk-"+strconv.Itoa(i)))
		}
	}
	junk()
	for range 5 {
		assert.Equal(t, 502, tenantDo(h, "tenant"))
		junk() // the junk stays busier than the tenant
	}
	assert.Equal(t, 503, tenantDo(h, "tenant"), "the tenant's own breaker tripped")
	junk()
	keys := map[string]breaker.State{}
	for _, s := range b.States() {
		if !s.Overflow {
			keys[s.Key] = s.State
		}
	}
	assert.Len(t, keys, maxKeys)
	assert.Equal(t, breaker.StateOpen, keys["tenant"])
}

// TestOpenBreakerKeepsPlace: new keys evict closed breakers, least
// recently used first, never an open one, so a flood cannot reset a
// tripped breaker; with nothing left to evict, new keys pass unguarded.
func TestOpenBreakerKeepsPlace(t *testing.T) {
	for _, maxKeys := range []int{1, 4} {
		b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: maxKeys, Timeout: time.Minute})
		require.NoError(t, err)
		h := b.Wrap(failingFor(func(tenant string) bool { return tenant == "tenant" }))
		for range 5 {
			require.Equal(t, 502, tenantDo(h, "tenant"))
		}
		for i := range 3 * maxKeys {
			require.Equal(t, 200, tenantDo(h, "junk-"+strconv.Itoa(i)))
		}
		st := b.States()
		require.Len(t, st, maxKeys+1)
		ov, keys := st[maxKeys], map[string]breaker.State{}
		for _, s := range st[:maxKeys] {
			keys[s.Key] = s.State
		}
		assert.Equal(t, breaker.StateOpen, keys["tenant"])
		assert.Equal(t, 503, tenantDo(h, "tenant"), "the open breaker kept its place")
		if maxKeys == 1 {
			assert.EqualValues(t, 3, ov.Counts.Requests, "nothing to evict: new keys pass unguarded")
		} else {
			// 3 fill the places; 4 (the ration) take the places of the
			// least recently used; the rest pass unguarded.
			assert.Equal(t, map[string]breaker.State{"tenant": breaker.StateOpen,
				"junk-4": breaker.StateClosed, "junk-5": breaker.StateClosed, "junk-6": breaker.StateClosed}, keys)
			assert.EqualValues(t, 3*maxKeys-3-maxKeys, ov.Counts.Requests)
		}
	}
}

// TestEvictionRation: making room is rationed to MaxKeys evictions per
// Interval; beyond it new keys pass unguarded (one warn line says so), and
// the next window brings a new ration.
func TestEvictionRation(t *testing.T) {
	var logs gatewaytest.SafeBuffer
	const maxKeys = 3
	b, err := breaker.New(breaker.Settings{Key: byTenant, MaxKeys: maxKeys,
		Interval: 500 * time.Millisecond, BucketPeriod: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	h := b.Wrap(statusHandler(http.StatusOK))
	has := func(key string) bool {
		for _, s := range b.States() {
			if s.Key == key && !s.Overflow {
				return true
			}
		}
		return false
	}
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		tenantDo(h, k)
	}
	assert.True(t, has("d") && has("e") && has("f"), "a window's ration evicts a, b and c")
	for _, k := range []string{"g", "h"} {
		tenantDo(h, k)
		assert.False(t, has(k), "the ration is spent: %s passes unguarded", k)
	}
	assert.EqualValues(t, 2, b.States()[maxKeys].Counts.Requests)
	assert.Equal(t, 1, strings.Count(logs.String(), "key cap reached"), logs.String())
	require.Eventually(t, func() bool {
		tenantDo(h, "i")
		return has("i")
	}, 5*time.Second, 20*time.Millisecond, "the next window brings a new ration")
}

// TestIdleKeysMakeRoom: once the cap is reached, a new key takes the place
// of an idle breaker at once.
func TestIdleKeysMakeRoom(t *testing.T) {
	b, err := breaker.New(breaker.Settings{Logger: quiet, Key: byTenant, MaxKeys: 3})
	require.NoError(t, err)
	h := b.Wrap(statusHandler(http.StatusOK))
	for _, k := range []string{"a", "b", "c", "d"} {
		tenantDo(h, k)
	}
	st := b.States()
	require.Len(t, st, 3, "3 breakers; no overflow entry: nothing overflowed")
	assert.Equal(t, []string{"b", "c", "d"}, []string{st[0].Key, st[1].Key, st[2].Key},
		"d took the place of the least recently used")
}
