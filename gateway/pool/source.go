package pool

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// Source is a control plane that tells a pool its targets: DNS (see
// [DNSSource]), or any other (Kubernetes EndpointSlices, Consul's API, a
// file). A pool consumes it with [Pool.Follow].
type Source interface {
	// Watch calls update with the source's whole current set of targets,
	// first when it knows it and then after each change, until ctx is
	// done; then it returns ctx's error (or an error that ends it
	// early). update applies the set to the pool and returns its error
	// (an invalid target, a host that appears twice): the pool keeps its
	// previous set then. Calls to update must not overlap.
	Watch(ctx context.Context, update func([]Target) error) error
}

// SourceFunc adapts a function to a [Source].
type SourceFunc func(ctx context.Context, update func([]Target) error) error

// Watch calls f.
func (f SourceFunc) Watch(ctx context.Context, update func([]Target) error) error {
	return f(ctx, update)
}

// SourceStatus is a source's state for the status view: [DNSSource]
// reports one; any Source may, by implementing
// interface{ Status() SourceStatus } (else it is named by its String
// method, or "source-N").
type SourceStatus struct {
	// Source names it: the discovery URL ("dns+http://backend:8080").
	Source string `json:"source"`
	// Hosts is the number of targets of its last good answer.
	Hosts int `json:"hosts"`
	// Updated is when it last answered (a good answer, changed or not);
	// zero if never.
	Updated time.Time `json:"updated,omitzero"`
	// Stale reports that its last attempt failed (or answered nothing),
	// so the pool serves from the answer of Updated; Error says why
	// (admin view only: it names the resolver and the name).
	Stale bool   `json:"stale"`
	Error string `json:"error,omitempty"`
	// Next is when it asks again; zero if unknown.
	Next time.Time `json:"next,omitzero"`
}

// DiscoveryStatus is the state of a pool's set of hosts, for the status
// view: when it last changed and the state of each followed source.
type DiscoveryStatus struct {
	// Hosts is the size of the set; Changes counts its changes since
	// the pool was made, and Changed is the time of the last (zero if
	// none).
	Hosts   int       `json:"hosts"`
	Changes int64     `json:"changes"`
	Changed time.Time `json:"changed,omitzero"`
	// Sources are the followed sources, in the order they were followed.
	Sources []SourceStatus `json:"sources,omitempty"`
}

// follower is one source a pool follows.
type follower struct {
	src  Source
	name string
}

type sourceStatuser interface{ Status() SourceStatus }

// Discovery returns the state of the pool's set and of every source it
// follows.
func (p *Pool) Discovery() DiscoveryStatus {
	d := DiscoveryStatus{Hosts: len(p.targets().ups), Changes: p.changes.Load()}
	if ns := p.changed.Load(); ns != 0 {
		d.Changed = time.Unix(0, ns)
	}
	p.setMu.Lock()
	fs := slices.Clone(p.followed)
	p.setMu.Unlock()
	for _, f := range fs {
		if s, ok := f.src.(sourceStatuser); ok {
			d.Sources = append(d.Sources, s.Status())
		} else {
			d.Sources = append(d.Sources, SourceStatus{Source: f.name})
		}
	}
	return d
}

// Follow keeps the pool's set up to date with src until ctx is done, and
// returns src's error (ctx's when it ended with ctx). It blocks: run it on
// a goroutine of its own. The targets of src are its share of the set,
// beside the pool's own ([New], [Pool.SetTargets]) and those of every
// other source it follows; each update replaces that share as
// [Pool.SetTargets] replaces the pool's own (kept hosts keep their state,
// new ones warm up, removed ones drain). An update that fails (an invalid
// target, a host already in the set) is logged and returned to src; the
// pool keeps its previous set. When Follow returns, src's targets stay in
// the set.
//
// Follow counts as a use of the pool: set its fields before.
func (p *Pool) Follow(ctx context.Context, src Source) error {
	f := &follower{src: src}
	switch s := src.(type) {
	case sourceStatuser:
		f.name = s.Status().Source
	case fmt.Stringer:
		f.name = s.String()
	}
	p.setMu.Lock()
	if f.name == "" {
		f.name = fmt.Sprintf("source-%d", len(p.followed)+1)
	}
	p.followed = append(p.followed, f)
	p.setMu.Unlock()
	return src.Watch(ctx, func(ts []Target) error {
		_, err := p.replace(f, f.name, ts)
		if err != nil {
			p.logger().LogAttrs(ctx, slog.LevelWarn, "pool: source's update rejected",
				slog.String("source", f.name), slog.Any("error", err))
		}
		return err
	})
}

func (p *Pool) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}
