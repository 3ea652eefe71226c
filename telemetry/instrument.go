package telemetry

import (
	"context"
	"errors"
	"slices"

	"go.opentelemetry.io/otel/metric"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/gateway/pool"
)

// Instrument completes the wiring of a stack built by proxykit.New from a
// Config that went through [Telemetry.Apply]. Call it once, before st
// serves.
//
//   - It puts [Telemetry.Transport] outermost in st.Proxy's transport
//     (around the pool's and the breakers'), where each attempt is seen
//     classified, breaker fast-fails included. (Wrapping the base
//     transport instead, Config.Transport, would hide net/http's
//     *http.Transport from the gateway's Transport, which stops the
//     resends net/http makes behind the retry policy's back only when it
//     sees one.)
//   - It admits the pool's targets to the upstream attributes first.
//   - It registers the observers: proxykit.upstream.state (with each
//     host's source) and http.client.active_requests per pool target,
//     proxykit.upstream.hosts per source, and
//     proxykit.retry.budget.denials.
//
// The returned Registration unregisters the observers.
func (t *Telemetry) Instrument(st *proxykit.Stack) (metric.Registration, error) {
	if st == nil {
		return nil, errors.New("telemetry: Instrument: nil Stack")
	}
	if st.Proxy != nil {
		st.Proxy.Transport = t.Transport(st.Proxy.Transport)
	}
	if st.Pool != nil {
		for _, h := range st.Pool.Status() {
			t.ups.named(h.Upstream)
		}
	}
	return t.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		t.observe(st, o)
		return nil
	}, t.hostState, t.active, t.denials, t.hosts)
}

// observe reports a stack's states.
func (t *Telemetry) observe(st *proxykit.Stack, o metric.Observer) {
	if st.Retry != nil {
		o.ObserveInt64(t.denials, st.Retry.Stats().BudgetExhausted)
	}
	seen := map[*upstream]bool{}
	report := func(name, source string, state pool.State, inFlight int64, hasInFlight bool) {
		up := t.ups.named(name)
		if up == nil || up == t.ups.other || seen[up] {
			return // one observation per attribute set
		}
		seen[up] = true
		base := slices.Clip(up.kvs)
		if source != "" {
			base = append(base, t.sources.attr(source))
		}
		for _, s := range upstreamStates {
			kvs := append(slices.Clip(base), UpstreamStateKey.String(string(s)))
			v := int64(0)
			if s == state {
				v = 1
			}
			o.ObserveInt64(t.hostState, v, metric.WithAttributes(kvs...))
		}
		if hasInFlight {
			o.ObserveInt64(t.active, inFlight, metric.WithAttributes(up.kvs...))
		}
	}
	if st.Pool != nil {
		hosts := st.Pool.Status()
		for _, h := range hosts {
			report(h.Upstream, h.Source, h.State, h.InFlight, true)
		}
		t.observeSources(st.Pool, hosts, o)
		return
	}
	if st.Hosts == nil {
		return
	}
	for _, s := range st.Hosts.States() { // no pool: the hosts the breakers know
		if s.Overflow || !isHostPort(s.Key) {
			continue
		}
		report(s.Key, "", s.HostState, 0, false)
	}
}

// upstreamStates are the values of UpstreamStateKey, in gauge order.
var upstreamStates = [...]pool.State{pool.StateServing, pool.StateWarming, pool.StateResting,
	pool.StateTrial, pool.StateOut, pool.StateDraining, pool.StateDrained}
