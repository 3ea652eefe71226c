package telemetry

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/gateway/pool"
)

// queue is a pool.Source fed from a channel, named "queue".
type queue chan []pool.Target

func (q queue) String() string { return "queue" }

func (q queue) Watch(ctx context.Context, update func([]pool.Target) error) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ts := <-q:
			_ = update(ts)
		}
	}
}

// TestUpstreamSetChanges: each change of the set counts the hosts it
// added and removed by source in proxykit.upstream.changes; each host's
// source is an attribute of proxykit.upstream.state; proxykit.upstream.hosts
// counts the hosts per source, a followed source that has none at 0; the
// user's OnUpstreamChange still runs.
func TestUpstreamSetChanges(t *testing.T) {
	r := newRig(t)
	var userChanges []pool.Change
	st := r.stack(t, proxykit.Config{
		Upstreams:        []*url.URL{mustURL(t, "http://a.test"), mustURL(t, "http://b.test")},
		Transport:        inMemory,
		OnUpstreamChange: func(ch pool.Change) { userChanges = append(userChanges, ch) },
	})
	assert.Nil(t, points(t, r.collect(t), "proxykit.upstream.changes"), "the set given to New is no change")

	require.NoError(t, st.SetUpstreams([]*url.URL{mustURL(t, "http://b.test"), mustURL(t, "http://c.test"), mustURL(t, "http://d.test")}))
	require.Len(t, userChanges, 1, "the user's hook runs too")

	static := attribute.String("proxykit.upstream.source", "static")
	fromQueue := attribute.String("proxykit.upstream.source", "queue")
	added := attribute.String("proxykit.upstream.change", "added")
	removed := attribute.String("proxykit.upstream.change", "removed")
	rm := r.collect(t)
	assert.Equal(t, map[string]int64{enc(static, added): 2, enc(static, removed): 1}, points(t, rm, "proxykit.upstream.changes"))
	assert.Equal(t, map[string]int64{enc(static): 3}, points(t, rm, "proxykit.upstream.hosts"))

	q := make(queue)
	ctx, cancel := context.WithCancel(context.Background())
	followed := make(chan error, 1)
	go func() { followed <- st.Pool.Follow(ctx, q) }()
	defer func() {
		cancel()
		<-followed
	}()
	q <- []pool.Target{{URL: mustURL(t, "http://e.test"), Source: "queue"}, {URL: mustURL(t, "http://f.test"), Source: "queue"}}
	require.Eventually(t, func() bool { return len(st.Pool.Status()) == 5 }, 10*time.Second, 5*time.Millisecond)
	rm = r.collect(t)
	assert.Equal(t, map[string]string{"b.test": "static", "c.test": "static", "d.test": "static", "e.test": "queue", "f.test": "queue"},
		stateSources(t, rm))
	assert.Equal(t, map[string]int64{enc(static): 3, enc(fromQueue): 2}, points(t, rm, "proxykit.upstream.hosts"))
	q <- []pool.Target{}
	require.Eventually(t, func() bool { return len(st.Pool.Status()) == 3 }, 10*time.Second, 5*time.Millisecond)

	rm = r.collect(t)
	assert.Equal(t, map[string]int64{
		enc(static, added): 2, enc(static, removed): 1,
		enc(fromQueue, added): 2, enc(fromQueue, removed): 2,
	}, points(t, rm, "proxykit.upstream.changes"))
	assert.Equal(t, map[string]int64{enc(static): 3, enc(fromQueue): 0}, points(t, rm, "proxykit.upstream.hosts"),
		"a followed source with no host is 0, not missing")
	assert.Equal(t, map[string]string{"b.test": "static", "c.test": "static", "d.test": "static"}, stateSources(t, rm),
		"the hosts in the set, each with its source")
}

// TestUpstreamSourcesBounded: sources beyond MaxUpstreams share the value
// _OTHER, so a program that follows many sources keeps the series bounded.
func TestUpstreamSourcesBounded(t *testing.T) {
	r := newRig(t, func(o *Options, _ *rig) { o.MaxUpstreams = 2 })
	for _, src := range []string{"s1", "s2", "s3", "s4"} {
		r.tel.ObserveUpstreamChange(pool.Change{Source: src, Added: []string{src + ".test:80"}})
	}
	key := func(v string) string {
		return enc(attribute.String("proxykit.upstream.source", v), attribute.String("proxykit.upstream.change", "added"))
	}
	assert.Equal(t, map[string]int64{key("s1"): 1, key("s2"): 1, key("_OTHER"): 2},
		points(t, r.collect(t), "proxykit.upstream.changes"))
}

// stateSources returns, from proxykit.upstream.state, each host's
// server.address and proxykit.upstream.source, checking that each host is
// in exactly one state.
func stateSources(t *testing.T, rm metricdata.ResourceMetrics) map[string]string {
	t.Helper()
	m, ok := instruments(rm)["proxykit.upstream.state"]
	require.True(t, ok)
	out := map[string]string{}
	for _, p := range m.Data.(metricdata.Gauge[int64]).DataPoints {
		if p.Value == 0 {
			continue
		}
		addr, _ := p.Attributes.Value("server.address")
		src, _ := p.Attributes.Value("proxykit.upstream.source")
		_, dup := out[addr.AsString()]
		require.False(t, dup, "%s in two states", addr.AsString())
		out[addr.AsString()] = src.AsString()
	}
	return out
}
