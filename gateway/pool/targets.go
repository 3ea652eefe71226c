package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// StaticSource is the [Target.Source] of targets given to [New] or
// [Pool.SetTargets] without a source of their own.
const StaticSource = "static"

// maxUnforgotten bounds the hosts a pool remembers to tell a [Forgetter]
// again (one that could not free a host's state at once): beyond it the
// Forgetter's own bound holds (breaker.Settings.MaxKeys).
const maxUnforgotten = 1024

// idleCloseEvery is how often, at most, a change that removed hosts closes
// the transport's idle connections (see [Pool.SetTargets]).
const idleCloseEvery = time.Second

// Target is one host of a pool's set, and where it came from.
type Target struct {
	// URL is the target: an absolute http or https URL, as for [New].
	URL *url.URL
	// Source names where the target came from, for the status view: the
	// discovery URL that resolved it ("dns+http://backend:8080"), or
	// [StaticSource] when empty.
	Source string
	// Weight is a weight the source gave the target (an SRV record's),
	// shown in the status view. The balancer does not use it: peak EWMA
	// sends each host what its latency shows it can take.
	Weight int
}

// Forgetter is an optional interface of a [Health]: a pool tells it each
// host that leaves its set, so that it frees the host's state. Forget
// reports false when it could not free it yet (a request holds it); the
// pool asks again at its next change. *breaker.Hosts implements it.
type Forgetter interface {
	Forget(host string) bool
}

// Warmer is an optional interface of a [Health]: a pool tells it each host
// that joins a set that already had hosts, so that the host ramps up to
// its full share of requests (slow start) instead of taking it at once.
// *breaker.Hosts implements it.
type Warmer interface {
	Warm(host string)
}

// Change is one change of a pool's set, as [Pool.SetTargets] and
// [Pool.OnChange] report it.
type Change struct {
	// Source is the source whose targets changed ([StaticSource] for
	// [Pool.SetTargets]).
	Source string
	// Added, Removed and Kept are the hosts (by [gateway.UpstreamName])
	// that joined, left and stayed; Hosts is the size of the whole set
	// after the change.
	Added, Removed, Kept []string
	Hosts                int
	// Time is when the change was applied.
	Time time.Time
}

// targetSet is an immutable set of upstreams: the request path loads it
// with one atomic load and never locks.
type targetSet struct {
	ups    []*upstream
	byHost map[string]*upstream
	byRaw  map[string]*upstream // by the target's URL.Host, as Rewrite sets it
}

var emptySet = &targetSet{byHost: map[string]*upstream{}, byRaw: map[string]*upstream{}}

// targets returns the current set.
func (p *Pool) targets() *targetSet {
	if s := p.set.Load(); s != nil {
		return s
	}
	return emptySet
}

// contribution is the targets one source (or SetTargets) gave the pool.
type contribution struct {
	key     any
	source  string
	targets []Target
}

// SetTargets replaces the pool's own targets (those given to [New], as
// opposed to those of a followed [Source]) with targets, atomically: a
// request picks from the old set or the new one, never a mix, and the
// request path takes no lock. Targets must be valid as for [New], and the
// hosts of the whole set (with every followed source's) distinct: a
// duplicate fails the change, which leaves the set as it was.
//
// A host in both sets is kept, with its latency, its health (in Health)
// and its concurrency limit. A host that joins enters slow start (see
// [Warmer]) unless the pool had no host. A host that leaves takes no new
// request; requests already sent to it, response bodies still streaming
// and upgraded connections (WebSockets) finish undisturbed; its state in
// Health is freed (see [Forgetter]); and the transport's idle connections
// are closed, at most once a second (net/http closes idle connections
// only all at once: the kept hosts each redial once; the removed host's
// connections do not linger up to the transport's idle timeout).
//
// Each change is logged at INFO (counts added, removed, kept) and passed
// to OnChange. SetTargets counts as a use of the pool: set its fields
// before.
func (p *Pool) SetTargets(targets []Target) (Change, error) {
	return p.replace(nil, StaticSource, targets)
}

// replace replaces the contribution of key with targets and stores the
// merged set.
func (p *Pool) replace(key any, source string, targets []Target) (Change, error) {
	p.watched.Do(p.watch)
	p.setMu.Lock()
	defer p.setMu.Unlock()

	i := slices.IndexFunc(p.contribs, func(c contribution) bool { return c.key == key })
	next := slices.Clone(p.contribs)
	c := contribution{key: key, source: source, targets: targets}
	if i < 0 {
		next = append(next, c)
	} else {
		next[i] = c
	}
	old := p.targets()
	now := time.Now()
	set, err := buildSet(next, old, now)
	if err != nil {
		var te *targetError
		if errors.As(err, &te) {
			return Change{}, fmt.Errorf("pool: SetTargets: %s: target %d: %w", te.source, te.index, te.err)
		}
		return Change{}, fmt.Errorf("pool: SetTargets: %w", err)
	}
	ch := Change{Source: source, Hosts: len(set.ups), Time: now}
	for _, u := range set.ups {
		if old.byHost[u.host] != nil {
			ch.Kept = append(ch.Kept, u.host)
		} else {
			ch.Added = append(ch.Added, u.host)
		}
	}
	for _, u := range old.ups {
		if set.byHost[u.host] == nil {
			ch.Removed = append(ch.Removed, u.host)
		}
	}
	p.contribs = next
	if unchanged(old, set) {
		return ch, nil // the same upstreams, perhaps in another order
	}
	p.set.Store(set)
	p.changed.Store(ch.Time.UnixNano())
	p.changes.Add(1)
	p.afterChange(old, set, ch)
	return ch, nil
}

// unchanged reports whether b holds exactly a's upstreams.
func unchanged(a, b *targetSet) bool {
	if len(a.ups) != len(b.ups) {
		return false
	}
	for _, u := range b.ups {
		if a.byHost[u.host] != u {
			return false
		}
	}
	return true
}

// buildSet merges the contributions into a set, reusing old's upstream of
// every host whose target is unchanged; a new upstream joins at now.
func buildSet(contribs []contribution, old *targetSet, now time.Time) (*targetSet, error) {
	n := 0
	for _, c := range contribs {
		n += len(c.targets)
	}
	s := &targetSet{ups: make([]*upstream, 0, n), byHost: make(map[string]*upstream, n), byRaw: make(map[string]*upstream, n)}
	at := make(map[string]targetError, n) // where each host was given
	for _, c := range contribs {
		for i, t := range c.targets {
			if err := checkTarget(t.URL); err != nil {
				return nil, &targetError{index: i, source: c.source, err: err}
			}
			host := gateway.UpstreamName(t.URL)
			if dup := s.byHost[host]; dup != nil {
				where := fmt.Sprintf("the target at index %d", at[host].index)
				if at[host].source != c.source {
					where += " of " + at[host].source
				}
				return nil, &targetError{index: i, source: c.source, err: fmt.Errorf("%q is the same host %s as %s (%q): give each server once",
					t.URL.Redacted(), host, where, dup.target.Redacted())}
			}
			at[host] = targetError{index: i, source: c.source}
			src := t.Source
			if src == "" {
				src = c.source
			}
			u := old.byHost[host]
			if u == nil || *u.target != *t.URL || u.source != src || u.weight != t.Weight {
				nu := newUpstream(t.URL, src, t.Weight, now)
				if u != nil {
					nu.inherit(u) // the same host under a new path or source
				}
				u = nu
			}
			s.ups = append(s.ups, u)
			s.byHost[host] = u
			s.byRaw[u.target.Host] = u
		}
	}
	return s, nil
}

// afterChange tells Health and the transport about a change, logs it and
// calls OnChange. Under setMu.
func (p *Pool) afterChange(old, set *targetSet, ch Change) {
	w, _ := p.Health.(Watcher)
	warm, _ := p.Health.(Warmer)
	for _, h := range ch.Added {
		if w != nil {
			w.Watch(set.byHost[h].target)
		}
		if warm != nil && len(old.ups) > 0 {
			warm.Warm(h)
		}
	}
	if _, ok := p.Health.(Forgetter); ok && len(ch.Removed) > 0 {
		for _, h := range ch.Removed {
			if len(p.unforgotten) < maxUnforgotten {
				p.unforgotten = append(p.unforgotten, h)
			}
		}
		p.forget(set)
	}
	if len(ch.Removed) > 0 {
		p.closeIdle()
	}
	p.logger().LogAttrs(context.Background(), slog.LevelInfo, "pool: upstream set changed",
		slog.String("source", ch.Source),
		slog.Int("added", len(ch.Added)),
		slog.Int("removed", len(ch.Removed)),
		slog.Int("kept", len(ch.Kept)),
		slog.Int("hosts", ch.Hosts))
	if p.OnChange != nil {
		p.OnChange(ch)
	}
}

// forget tells a Forgetter Health the hosts that left the set, now and
// again a second later: a request that picked a host before it left may
// reach Health after the first Forget and make it anew, and a request
// holding the host's state makes Forget wait. Hosts back in the set are
// not forgotten. Under setMu.
func (p *Pool) forget(set *targetSet) {
	f, ok := p.Health.(Forgetter)
	if !ok {
		return
	}
	now := time.Now()
	var again []string
	for _, h := range p.unforgotten {
		if set.byHost[h] != nil { // back in the set
			delete(p.forgottenAt, h)
			continue
		}
		if !f.Forget(h) { // held by a request: once more
			again = append(again, h)
			continue
		}
		first, ok := p.forgottenAt[h]
		if !ok || now.Sub(first) < idleCloseEvery { // freed once: again a second later
			if !ok {
				if p.forgottenAt == nil {
					p.forgottenAt = map[string]time.Time{}
				}
				p.forgottenAt[h] = now
			}
			again = append(again, h)
			continue
		}
		delete(p.forgottenAt, h)
	}
	p.unforgotten = again
	if len(again) > 0 && p.forgetTimer == nil {
		p.forgetTimer = time.AfterFunc(idleCloseEvery, func() {
			p.setMu.Lock()
			defer p.setMu.Unlock()
			p.forgetTimer = nil
			p.forget(p.targets())
		})
	}
}

// closeIdle closes the transport's idle connections now, or, within
// idleCloseEvery of the last time, once that much has passed. Under setMu.
func (p *Pool) closeIdle() {
	tr := p.transport.Load()
	if tr == nil {
		return
	}
	now := time.Now()
	if wait := p.idleClosed.Add(idleCloseEvery).Sub(now); wait > 0 {
		if p.idleTimer == nil {
			p.idleTimer = time.AfterFunc(wait, func() {
				p.setMu.Lock()
				p.idleTimer = nil
				p.idleClosed = time.Now()
				p.setMu.Unlock()
				tr.CloseIdleConnections()
			})
		}
		return
	}
	p.idleClosed = now
	tr.CloseIdleConnections()
}
