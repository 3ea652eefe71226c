package proxykit

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/proxykit/proxykit/gateway/pool"
)

// discovery is the stack's followed sources: one per discovery upstream.
type discovery struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// splitUpstreams separates the discovery upstreams (dns+http://…,
// srv+http://…) of Config.Upstreams, returned as sources, from the static
// targets, returned with their indexes in ups.
func splitUpstreams(ups []*url.URL, o pool.DNSOptions) (static []*url.URL, staticAt []int, srcs []*pool.DNSSource, err error) {
	for i, u := range ups {
		if !pool.IsDiscoveryURL(u) {
			static, staticAt = append(static, u), append(staticAt, i)
			continue
		}
		src, err := pool.NewDNSSource(u, o)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("proxykit: Config.Upstreams[%d]: %w", i, err)
		}
		srcs = append(srcs, src)
	}
	return static, staticAt, srcs, nil
}

// follow starts p following each source, and waits until each has
// answered once or wait has passed: a stack whose DNS answers serves from
// its first request, and one whose DNS does not still starts (its
// requests fail with no_upstream until an answer comes).
func follow(p *pool.Pool, srcs []*pool.DNSSource, wait time.Duration) *discovery {
	ctx, cancel := context.WithCancel(context.Background())
	d := &discovery{cancel: cancel}
	answered := make(chan struct{}, len(srcs))
	for _, src := range srcs {
		var once sync.Once
		first := pool.SourceFunc(func(ctx context.Context, update func([]pool.Target) error) error {
			return src.Watch(ctx, func(ts []pool.Target) error {
				defer once.Do(func() { answered <- struct{}{} })
				return update(ts)
			})
		})
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			_ = p.Follow(ctx, named{first, src})
		}()
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for range srcs {
		select {
		case <-answered:
		case <-timer.C:
			return d
		}
	}
	return d
}

// named is a Source that reports another's status (its name).
type named struct {
	pool.Source
	st interface{ Status() pool.SourceStatus }
}

func (n named) Status() pool.SourceStatus { return n.st.Status() }

// stop stops following and waits for the sources to end.
func (d *discovery) stop() {
	if d == nil {
		return
	}
	d.cancel()
	d.wg.Wait()
}

// SetUpstreams replaces the stack's static upstreams (the http and https
// URLs of Config.Upstreams) with upstreams, at run time and atomically
// (see [pool.Pool.SetTargets]): a kept upstream keeps its health, latency
// and limit; a new one warms up; a removed one takes no new request while
// its requests in flight finish, and its state is freed. The discovery
// upstreams of Config.Upstreams keep following DNS. It fails, changing
// nothing, on an invalid URL, a discovery URL, or a host that appears
// twice (in upstreams or beside a discovered one), and on a stack built
// without Upstreams.
func (s *Stack) SetUpstreams(upstreams []*url.URL) error {
	if s.Pool == nil {
		return errors.New("proxykit: SetUpstreams: the stack has no pool (Config.Upstreams was empty)")
	}
	ts := make([]pool.Target, len(upstreams))
	for i, u := range upstreams {
		if pool.IsDiscoveryURL(u) {
			return fmt.Errorf("proxykit: SetUpstreams: %q: discovery upstreams are set in Config.Upstreams", u.Redacted())
		}
		ts[i] = pool.Target{URL: u}
	}
	if _, err := s.Pool.SetTargets(ts); err != nil {
		return fmt.Errorf("proxykit: SetUpstreams: %w", err)
	}
	return nil
}
