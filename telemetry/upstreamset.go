package telemetry

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/gateway/pool"
)

// The values of UpstreamChangeKey.
const (
	ChangeAdded   = "added"
	ChangeRemoved = "removed"
)

// ObserveUpstreamChange counts the hosts one change of the upstream set
// added and removed in proxykit.upstream.changes, by source
// (proxykit.upstream.source) and direction (proxykit.upstream.change:
// added or removed). Its signature is proxykit.Config.OnUpstreamChange's
// (pool.Pool.OnChange's), which [Telemetry.Apply] sets. It runs once per
// change, never on the request path.
func (t *Telemetry) ObserveUpstreamChange(ch pool.Change) {
	src := t.sources.attr(ch.Source)
	ctx := context.Background()
	if n := len(ch.Added); n > 0 {
		t.changes.Add(ctx, int64(n), metric.WithAttributes(src, UpstreamChangeKey.String(ChangeAdded)))
	}
	if n := len(ch.Removed); n > 0 {
		t.changes.Add(ctx, int64(n), metric.WithAttributes(src, UpstreamChangeKey.String(ChangeRemoved)))
	}
}

// observeSources reports proxykit.upstream.hosts: the hosts in the pool's
// set, per source. A followed source whose last answer left it no host
// reports 0 rather than vanishing.
func (t *Telemetry) observeSources(p *pool.Pool, hosts []pool.HostStatus, o metric.Observer) {
	counts := map[attribute.KeyValue]int64{}
	for _, h := range hosts {
		counts[t.sources.attr(h.Source)]++
	}
	for _, s := range p.Discovery().Sources {
		if kv := t.sources.attr(s.Source); counts[kv] == 0 {
			counts[kv] = 0
		}
	}
	for kv, n := range counts {
		o.ObserveInt64(t.hosts, n, metric.WithAttributes(kv))
	}
}

// sourceNames admits source names to proxykit.upstream.source: the first
// limit distinct names get their own value, every further one is _OTHER.
// Sources are the pool's static targets and each followed source
// (discovery URLs, redacted of user info; a custom Source's name), so they
// are few; the cap keeps the series bounded whatever a program follows.
// Used per change and per collection, never on the request path: a mutex
// is enough.
type sourceNames struct {
	limit int

	mu sync.Mutex
	m  map[string]attribute.KeyValue
}

func newSourceNames(limit int) *sourceNames {
	return &sourceNames{limit: limit, m: map[string]attribute.KeyValue{}}
}

func (s *sourceNames) attr(name string) attribute.KeyValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	if kv, ok := s.m[name]; ok {
		return kv
	}
	if len(s.m) >= s.limit {
		return UpstreamSourceKey.String(other)
	}
	kv := UpstreamSourceKey.String(name)
	s.m[name] = kv
	return kv
}

// applyUpstreamChange sets cfg.OnUpstreamChange, keeping the user's (it
// runs after ours).
func (t *Telemetry) applyUpstreamChange(cfg *proxykit.Config) {
	if user := cfg.OnUpstreamChange; user != nil {
		cfg.OnUpstreamChange = func(ch pool.Change) {
			t.ObserveUpstreamChange(ch)
			user(ch)
		}
		return
	}
	cfg.OnUpstreamChange = t.ObserveUpstreamChange
}
