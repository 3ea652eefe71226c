package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults and bounds of [DNSOptions].
const (
	DefaultDNSRefresh = 5 * time.Second
	DefaultDNSTimeout = 2 * time.Second
	MinDNSRefresh     = 100 * time.Millisecond
	MaxDNSRefresh     = 5 * time.Minute
)

// Discovery schemes of an upstream URL (see [NewDNSSource]).
const (
	schemeDNS = "dns+"
	schemeSRV = "srv+"
)

// errEmptyAnswer: DNS answered, with no address.
var errEmptyAnswer = errors.New("no address in the answer")

// DNSOptions configures a [DNSSource].
type DNSOptions struct {
	// Resolver is the DNS server to ask, host:port ("127.0.0.1:5353"),
	// over UDP (TCP for a truncated answer) with Go's own resolver. Empty
	// means the system's resolver configuration (/etc/resolv.conf).
	Resolver string
	// Refresh is how often the name is resolved again, each wait drawn
	// from ±10% of it so that a fleet of replicas does not ask in
	// lockstep. Go's resolver does not report record TTLs, so Refresh is
	// the only clock: set it near the records' TTL (a Kubernetes
	// headless Service answers with TTL 5 s; Consul's default is 0).
	// Default 5 s; bounded to [100 ms, 5 min].
	Refresh time.Duration
	// Timeout bounds one resolution (every query of it). Default 2 s.
	Timeout time.Duration
	// MaxStale bounds how long the last good answer is served while the
	// DNS server fails or answers no address: past it the source's hosts
	// leave the pool. Zero keeps the last good answer until DNS answers
	// again (as Envoy's STRICT_DNS does): hosts that are gone meanwhile
	// are taken out by their health, not by DNS.
	MaxStale time.Duration
	// Logger receives the source's logs: one WARN line when resolution
	// starts failing, one INFO line when it recovers. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// DNSSource is a [Source] that resolves a name in DNS, on an interval,
// into one target per address:
//
//   - dns+http://name:port/prefix (or dns+https): the name's A and AAAA
//     records; each address is a host, at port (default the scheme's);
//   - srv+http://_service._proto.name/prefix (or srv+https): the name's
//     SRV records; each address of each record's target is a host, at the
//     record's port, with its weight (shown in the status view; the
//     balancer does not use it). No port in the URL. Every record is
//     used whatever its priority: backup records (a higher priority
//     number) take traffic beside the primaries, so publish only the
//     records that should serve.
//
// An SRV target that DNS says has no address is left out; a target whose
// lookup fails otherwise (a timeout, a server failure) fails the whole
// refresh, so the last good answer stays rather than a healthy host
// leaving for a transient error. One DNSSource may be followed by several
// pools; each gets every answer.
//
// Each address is a host of its own in the health model, the balancer, the
// limiter and the status view, so retries and hedges go to another
// address, and one bad address is taken out alone. The path prefix and
// query apply to every target. The outbound Host header is the address,
// as for any target: set it in a Rewrite if the upstreams route by name.
//
// When DNS fails or answers no address, the last good answer stays (see
// DNSOptions.MaxStale), the status view shows the source stale, and one
// line is logged until it answers again.
type DNSSource struct {
	raw    string // the discovery URL, redacted
	srv    bool
	scheme string // http or https
	name   string
	port   uint16 // A/AAAA mode
	tmpl   url.URL
	o      DNSOptions
	res    *net.Resolver

	mu       sync.Mutex
	st       SourceStatus
	lastGood time.Time
}

// dnsWatch is what one Watch call has given its update function, so that
// one DNSSource can be followed by several pools.
type dnsWatch struct {
	sent    []Target // the last set given to update
	dropped bool     // past MaxStale: the hosts were removed
}

// IsDiscoveryURL reports whether u names a [DNSSource] (scheme dns+http,
// dns+https, srv+http or srv+https) rather than a target.
func IsDiscoveryURL(u *url.URL) bool {
	return u != nil && (strings.HasPrefix(u.Scheme, schemeDNS) || strings.HasPrefix(u.Scheme, schemeSRV))
}

// NewDNSSource returns a source for the discovery URL u (see [DNSSource]).
// It fails on a URL that is not one, or whose name is not a valid DNS
// name; it resolves nothing.
func NewDNSSource(u *url.URL, o DNSOptions) (*DNSSource, error) {
	if u == nil {
		return nil, errors.New("pool: NewDNSSource: nil URL")
	}
	d := &DNSSource{raw: u.Redacted(), o: o}
	if err := d.parse(u); err != nil {
		return nil, fmt.Errorf("pool: NewDNSSource: %q: %w", d.raw, err)
	}
	switch {
	case o.Refresh < 0 || o.Timeout < 0 || o.MaxStale < 0:
		return nil, fmt.Errorf("pool: NewDNSSource: %q: negative Refresh, Timeout or MaxStale", d.raw)
	case o.Refresh == 0:
		d.o.Refresh = DefaultDNSRefresh
	}
	d.o.Refresh = min(max(d.o.Refresh, MinDNSRefresh), MaxDNSRefresh)
	if d.o.Timeout == 0 {
		d.o.Timeout = DefaultDNSTimeout
	}
	if d.o.Logger == nil {
		d.o.Logger = slog.Default()
	}
	d.res = net.DefaultResolver
	if addr := o.Resolver; addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("pool: NewDNSSource: resolver address %q: %w", addr, err)
		}
		d.res = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialResolver(ctx, network, addr)
		}}
	}
	d.st = SourceStatus{Source: d.raw}
	return d, nil
}

// parse reads the discovery URL u into d.
func (d *DNSSource) parse(u *url.URL) error {
	mode, scheme, _ := strings.Cut(u.Scheme, "+")
	switch {
	case mode+"+" != schemeDNS && mode+"+" != schemeSRV || scheme != "http" && scheme != "https":
		return errors.New("scheme must be dns+http, dns+https, srv+http or srv+https")
	case u.Opaque != "" || u.Host == "":
		return errors.New("no name")
	case u.User != nil:
		return errors.New("user info is not forwarded; set credentials in a Rewrite")
	case u.Fragment != "":
		return errors.New("fragment")
	}
	d.srv, d.scheme = mode+"+" == schemeSRV, scheme
	d.name = u.Hostname()
	if err := checkDNSName(d.name); err != nil {
		return err
	}
	p := u.Port()
	switch {
	case d.srv && p != "":
		return errors.New("an srv+ URL takes no port: the SRV records give it")
	case strings.HasSuffix(u.Host, ":"):
		return errors.New("empty port")
	case p == "" && scheme == "https":
		d.port = 443
	case p == "":
		d.port = 80
	default:
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("bad port %q", p)
		}
		d.port = uint16(n)
	}
	d.tmpl = url.URL{Scheme: scheme, Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}
	return nil
}

// checkDNSName reports a name that is not a valid DNS name: labels of 1 to
// 63 letters, digits, hyphens or underscores (SRV's _service._proto),
// 253 characters in all, an optional final dot.
func checkDNSName(name string) error {
	n := strings.TrimSuffix(name, ".")
	if n == "" || len(n) > 253 {
		return fmt.Errorf("invalid DNS name %q", name)
	}
	if _, err := netip.ParseAddr(n); err == nil {
		return fmt.Errorf("%q is an address, not a name: give it as an http:// upstream", name)
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("invalid DNS name %q: label %q", name, label)
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid DNS name %q: character %q", name, c)
			}
		}
	}
	return nil
}

// String returns the discovery URL.
func (d *DNSSource) String() string { return d.raw }

// Status returns the source's state for the status view.
func (d *DNSSource) Status() SourceStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

// Resolve resolves the name once and returns its targets, sorted by host.
// An answer without an address is an error.
func (d *DNSSource) Resolve(ctx context.Context) ([]Target, error) {
	ctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	var (
		ts  []Target
		err error
	)
	if d.srv {
		ts, err = d.resolveSRV(ctx)
	} else {
		ts, err = d.resolveAddrs(ctx, d.name, d.port, 0, nil)
	}
	if err != nil {
		return nil, err
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("resolve %s: %w", d.name, errEmptyAnswer)
	}
	slices.SortFunc(ts, func(a, b Target) int { return cmp.Compare(a.URL.Host, b.URL.Host) })
	return ts, nil
}

// resolveAddrs appends a target for each address of name at port to ts.
func (d *DNSSource) resolveAddrs(ctx context.Context, name string, port uint16, weight int, ts []Target) ([]Target, error) {
	addrs, err := d.res.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return ts, fmt.Errorf("resolve %s: %w", name, err)
	}
	for _, a := range addrs {
		host := netip.AddrPortFrom(a.Unmap(), port).String()
		if slices.ContainsFunc(ts, func(t Target) bool { return t.URL.Host == host }) {
			continue
		}
		u := d.tmpl
		u.Host = host
		ts = append(ts, Target{URL: &u, Source: d.raw, Weight: weight})
	}
	return ts, nil
}

// resolveSRV returns a target for each address of each SRV record's
// target. A record target the DNS says has no address (NXDOMAIN, or no
// A/AAAA record) is left out: it is gone. Any other failure to resolve
// one (a timeout, a server failure) fails the whole answer, so that the
// last good answer is kept rather than a healthy host dropped for a
// transient error.
func (d *DNSSource) resolveSRV(ctx context.Context) ([]Target, error) {
	_, recs, err := d.res.LookupSRV(ctx, "", "", d.name)
	if err != nil {
		return nil, fmt.Errorf("resolve SRV %s: %w", d.name, err)
	}
	var ts []Target
	var gone error
	for _, r := range recs {
		if r.Target == "." || r.Port == 0 {
			continue // "." is "no service here" (RFC 2782)
		}
		if ts, err = d.resolveAddrs(ctx, r.Target, r.Port, int(r.Weight), ts); err != nil {
			var dnsErr *net.DNSError
			if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
				return nil, err
			}
			if gone == nil {
				gone = err
			}
		}
	}
	if len(ts) == 0 && gone != nil {
		return nil, gone
	}
	return ts, nil
}

// Watch implements [Source]: it resolves the name at once, then every
// DNSOptions.Refresh (jittered), and calls update when the answer
// differs from the last one sent.
func (d *DNSSource) Watch(ctx context.Context, update func([]Target) error) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var f dnsWatch
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		d.refresh(ctx, &f, update)
		wait := time.Duration(float64(d.o.Refresh) * (0.9 + 0.2*rand.Float64()))
		d.mu.Lock()
		d.st.Next = time.Now().Add(wait)
		d.mu.Unlock()
		timer.Reset(wait)
	}
}

// refresh resolves once and applies the answer, or keeps the last good
// one.
func (d *DNSSource) refresh(ctx context.Context, f *dnsWatch, update func([]Target) error) {
	ts, err := d.Resolve(ctx)
	if ctx.Err() != nil {
		return // stopping: not DNS's failure
	}
	now := time.Now()
	if err != nil {
		d.failed(now, err, f, update)
		return
	}
	if f.dropped || !slices.EqualFunc(ts, f.sent, sameTarget) {
		if err := update(ts); err != nil {
			d.failed(now, err, f, update)
			return
		}
	}
	f.sent, f.dropped = ts, false
	d.mu.Lock()
	wasStale := d.st.Stale
	d.st.Hosts, d.st.Updated, d.st.Stale, d.st.Error = len(ts), now, false, ""
	d.lastGood = now
	d.mu.Unlock()
	if wasStale {
		d.o.Logger.LogAttrs(ctx, slog.LevelInfo, "pool: discovery answers again",
			slog.String("source", d.raw), slog.Int("hosts", len(ts)))
	}
}

// failed records a failed resolution (or a rejected answer): the first of
// a run is logged; past MaxStale the source's hosts leave the pool.
func (d *DNSSource) failed(now time.Time, err error, f *dnsWatch, update func([]Target) error) {
	d.mu.Lock()
	first := !d.st.Stale
	d.st.Stale, d.st.Error = true, err.Error()
	drop := d.o.MaxStale > 0 && !f.dropped && !d.lastGood.IsZero() && now.Sub(d.lastGood) >= d.o.MaxStale
	if drop {
		f.dropped, d.st.Hosts = true, 0
	}
	last := d.lastGood
	d.mu.Unlock()
	if first {
		attrs := []slog.Attr{slog.String("source", d.raw), slog.Any("error", err)}
		if !last.IsZero() {
			attrs = append(attrs, slog.Time("serving_answer_of", last))
		}
		d.o.Logger.LogAttrs(context.Background(), slog.LevelWarn,
			"pool: discovery failed; keeping the last good answer", attrs...)
	}
	if drop {
		d.o.Logger.LogAttrs(context.Background(), slog.LevelWarn,
			"pool: discovery answer older than MaxStale; its hosts leave the pool",
			slog.String("source", d.raw), slog.Duration("max_stale", d.o.MaxStale))
		_ = update(nil)
	}
}

// sameTarget reports whether a and b are the same target.
func sameTarget(a, b Target) bool {
	return *a.URL == *b.URL && a.Source == b.Source && a.Weight == b.Weight
}

// dialResolver dials the DNS server addr. The connection's reads and
// writes end when ctx does: Go's resolver bounds them only by its own
// per-query timeout (resolv.conf's, 5 s by default), so a lookup given
// up on would otherwise linger that long while the server is silent.
func dialResolver(ctx context.Context, network, addr string) (net.Conn, error) {
	var dl net.Dialer
	c, err := dl.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	if uc, ok := c.(*net.UDPConn); ok {
		return &resolverPacketConn{UDPConn: uc, stop: stop}, nil // the resolver wants a PacketConn for UDP
	}
	return &resolverConn{Conn: c, stop: stop}, nil
}

type resolverPacketConn struct {
	*net.UDPConn
	stop func() bool
}

func (c *resolverPacketConn) Close() error {
	c.stop()
	return c.UDPConn.Close()
}

type resolverConn struct {
	net.Conn
	stop func() bool
}

func (c *resolverConn) Close() error {
	c.stop()
	return c.Conn.Close()
}
