package breaker

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// spellLogEvery rations the lines about one host leaving and rejoining
// service: a host that flaps is logged at warn and info level once a
// minute, its other spells at debug level.
const spellLogEvery = int64(time.Minute)

// spell is what a Hosts knows about a host's time out of service (resting
// or out): the lines operators read about a host, one when it leaves and
// one when it returns, whatever the breaker's transitions in between.
type spell struct {
	since      atomic.Int64 // ns; when the host left service; 0 while in service
	logged     atomic.Bool  // the current spell's start was logged above debug
	lastLogged atomic.Int64 // ns; when a spell's start was last logged above debug
	unlogged   atomic.Int32 // spells since then logged at debug only
}

// leave records that e's host left service at now, into state, after a
// failure of class c; only the first departure of a spell is logged.
func (e *entry) leave(now int64, state pool.State, c gateway.Class) {
	sp := &e.host.spell
	if !sp.since.CompareAndSwap(0, now) {
		return // out of service already
	}
	level := slog.LevelWarn
	last := sp.lastLogged.Load()
	if last != 0 && now-last < spellLogEvery {
		level = slog.LevelDebug
		sp.unlogged.Add(1)
	}
	sp.logged.Store(level == slog.LevelWarn)
	logger := e.set.logger()
	ctx := context.Background()
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("upstream", e.key),
		slog.String("state", string(state)),
		slog.String("class", c.String()),
		slog.Time("since", time.Unix(0, now)),
	}
	if level == slog.LevelWarn {
		sp.lastLogged.Store(now)
		if n := sp.unlogged.Swap(0); n > 0 {
			attrs = append(attrs, slog.Int("spells_since_last_line", int(n)))
		}
	}
	logger.LogAttrs(ctx, level, "upstream out of service", attrs...)
}

// rejoin records that e's host is back in service at now, if it was out
// of it, and logs how long it was out: at info level when its departure
// was logged at warn level.
func (e *entry) rejoin(now int64) {
	sp := &e.host.spell
	since := sp.since.Load()
	if since == 0 || !sp.since.CompareAndSwap(since, 0) {
		return
	}
	level := slog.LevelDebug
	if sp.logged.Load() {
		level = slog.LevelInfo
	}
	logger := e.set.logger()
	ctx := context.Background()
	if !logger.Enabled(ctx, level) {
		return
	}
	logger.LogAttrs(ctx, level, "upstream back in service",
		slog.String("upstream", e.key),
		slog.Duration("out_for", time.Duration(now-since)),
		slog.Time("since", time.Unix(0, since)))
}
