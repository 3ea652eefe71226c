package breaker

import (
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/pool"
)

func keys(h *Hosts) []string {
	var ks []string
	for _, s := range h.States() {
		if s.Key != "" {
			ks = append(ks, s.Key)
		}
	}
	return ks
}

// TestHostsForget: a forgotten host's breaker leaves the set (and its
// slot on the eviction clock); a host a request holds is not forgotten
// until the request's outcome is in; an unknown host is.
func TestHostsForget(t *testing.T) {
	h, err := PerHost(Settings{MaxKeys: 4})
	require.NoError(t, err)
	defer h.Close()
	for _, k := range []string{"a:80", "b:80", "c:80"} {
		h.Watch(&url.URL{Scheme: "http", Host: k})
	}
	require.Equal(t, []string{"a:80", "b:80", "c:80"}, keys(h))

	assert.True(t, h.Forget("b:80"))
	assert.Equal(t, []string{"a:80", "c:80"}, keys(h))
	assert.Len(t, h.set.ring, 2, "its slot on the eviction clock is freed")
	assert.True(t, h.Forget("nowhere:80"))

	e := h.set.acquire("a:80") // a request in flight
	assert.False(t, h.Forget("a:80"), "held by a request")
	assert.Contains(t, keys(h), "a:80")
	done, f := e.allow("a:80")
	require.Nil(t, f)
	e.finish(done, nil)
	assert.True(t, h.Forget("a:80"))
	assert.Equal(t, []string{"c:80"}, keys(h))

	// Room is made for new hosts without eviction: the cap counts only
	// the hosts still known.
	for _, k := range []string{"d:80", "e:80", "f:80"} {
		h.Watch(&url.URL{Scheme: "http", Host: k})
	}
	assert.Equal(t, []string{"c:80", "d:80", "e:80", "f:80"}, keys(h))
}

func TestHostsWarm(t *testing.T) {
	h, err := PerHost(Settings{})
	require.NoError(t, err)
	defer h.Close()
	now := int64(1e12)
	h.set.clock = func() int64 { return now }
	h.Warm("a:80")
	assert.Equal(t, pool.StateWarming, h.HostState("a:80"))
	assert.InDelta(t, 0.1, h.Share("a:80"), 0.01, "a new host starts at 10% of its share")
	now += int64(defaultSlowStart)
	assert.Equal(t, pool.StateServing, h.HostState("a:80"))
	assert.InDelta(t, 1, h.Share("a:80"), 0.001)

	off, err := PerHost(Settings{Health: HostHealth{SlowStart: -1}})
	require.NoError(t, err)
	defer off.Close()
	off.Warm("a:80")
	assert.Equal(t, pool.StateServing, off.HostState("a:80"), "slow start off: no warming")
}
