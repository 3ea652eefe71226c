package telemetry

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"

	"github.com/proxykit/proxykit/gateway"
)

// Attribute keys of proxykit's own, beside the semantic conventions' (which
// come from semconv).
const (
	// AttemptRoleKey is the role of an upstream attempt: "first", "retry"
	// or "hedge".
	AttemptRoleKey = attribute.Key("proxykit.attempt.role")
	// UpstreamStateKey is a host's state on the proxykit.upstream.state
	// gauge: a [pool.State] (serving, warming, resting, trial, out,
	// draining, drained), the word the status view and the logs use.
	UpstreamStateKey = attribute.Key("proxykit.upstream.state")
	// UpstreamSourceKey is where a host came from, on the
	// proxykit.upstream.state and proxykit.upstream.hosts gauges and the
	// proxykit.upstream.changes counter: pool.StaticSource ("static") or
	// the discovery source's name (its URL, as
	// "dns+http://backend:8080", user info redacted), as
	// pool.HostStatus.Source and the status view show it.
	UpstreamSourceKey = attribute.Key("proxykit.upstream.source")
	// UpstreamChangeKey is the direction of a change of the upstream set
	// on proxykit.upstream.changes: "added" or "removed".
	UpstreamChangeKey = attribute.Key("proxykit.upstream.change")
	// BreakerStateKey and BreakerPreviousStateKey are a breaker
	// transition's new and old states: "closed", "half_open" or "open".
	BreakerStateKey         = attribute.Key("proxykit.breaker.state")
	BreakerPreviousStateKey = attribute.Key("proxykit.breaker.previous_state")
	// RetryAfterKey is, on span events, how long the gateway tells the
	// client (or the next attempt) to wait, in seconds.
	RetryAfterKey = attribute.Key("proxykit.retry_after")
	// AttemptKey is, on span events, the number of the attempt, from 1.
	AttemptKey = attribute.Key("proxykit.attempt")
)

// The values of AttemptRoleKey.
const (
	RoleFirst = "first"
	RoleRetry = "retry"
	RoleHedge = "hedge"
)

// role is an attempt's role, as a small number for attribute-set keys.
type role uint8

const (
	roleFirst role = iota
	roleRetry
	roleHedge
)

var roleNames = [...]string{roleFirst: RoleFirst, roleRetry: RoleRetry, roleHedge: RoleHedge}

// other is the value of http.request.method for methods outside the
// semantic conventions' list, and of server.address for upstreams beyond
// Options.MaxUpstreams.
const other = "_OTHER"

// methods are the semantic conventions' known methods; index 0 is _OTHER.
var methods = [...]string{other, "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "QUERY"}

// methodIndex returns m's index in methods: 0 (_OTHER) when unknown. The
// comparison is case-sensitive, as HTTP methods are.
func methodIndex(m string) uint64 {
	switch m {
	case "GET":
		return 1
	case "HEAD":
		return 2
	case "POST":
		return 3
	case "PUT":
		return 4
	case "DELETE":
		return 5
	case "PATCH":
		return 6
	case "OPTIONS":
		return 7
	case "CONNECT":
		return 8
	case "TRACE":
		return 9
	case "QUERY":
		return 10
	}
	return 0
}

// errKind says where error.type comes from.
const (
	errNone   = 0 // no error: error.type absent
	errClass  = 1 // a failure class
	errStatus = 2 // the status code, as a string (a 4xx or 5xx that is no gateway failure)
)

// opts is one attribute set, as the options the metric API takes, built
// once: recording with a cached slice allocates nothing.
type opts struct {
	rec []metric.RecordOption
	add []metric.AddOption
}

func newOpts(kvs ...attribute.KeyValue) *opts {
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return &opts{rec: []metric.RecordOption{o}, add: []metric.AddOption{o}}
}

// optCache maps a packed key to its attribute set. Reads take one atomic
// load and a map lookup; a miss copies the map (keys are few and bounded
// by construction, so misses stop soon after start).
type optCache struct {
	mu sync.Mutex
	m  atomic.Pointer[map[uint64]*opts]
}

func (c *optCache) get(key uint64, build func() *opts) *opts {
	if m := c.m.Load(); m != nil {
		if o := (*m)[key]; o != nil {
			return o
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if o := (*old)[key]; o != nil {
			return o
		}
	}
	o := build()
	next := make(map[uint64]*opts, len(mapOrNil(old))+1)
	for k, v := range mapOrNil(old) {
		next[k] = v
	}
	next[key] = o
	c.m.Store(&next)
	return o
}

func mapOrNil[K comparable, V any](m *map[K]V) map[K]V {
	if m == nil {
		return nil
	}
	return *m
}

// upstream is an upstream admitted to the metrics' attributes.
type upstream struct {
	idx  uint64 // 1…; the _OTHER entry has limit+1
	name string // gateway.UpstreamName, or _OTHER
	kvs  []attribute.KeyValue
}

// upstreams admits upstream names to attributes: the first limit distinct
// names get their own server.address and server.port, every further one
// is _OTHER. With a pool the names are its targets (admitted first, when
// the stack is instrumented); without one, whatever hosts the proxy routes
// to, which may come from requests: the cap keeps the series bounded.
type upstreams struct {
	limit int
	other *upstream

	mu     sync.Mutex
	byName atomic.Pointer[map[string]*upstream]
	// byURL maps an outbound URL's host, as written, to its upstream: [0]
	// for http, [1] for https (the scheme decides the default port).
	byURL [2]atomic.Pointer[map[string]*upstream]
}

func newUpstreams(limit int) *upstreams {
	return &upstreams{
		limit: limit,
		other: &upstream{idx: uint64(limit) + 1, name: other, kvs: []attribute.KeyValue{semconv.ServerAddressKey.String(other)}},
	}
}

// named returns the upstream for a canonical name (host:port), admitting
// it while there is room; "" gives nil.
func (u *upstreams) named(name string) *upstream {
	if name == "" {
		return nil
	}
	if m := u.byName.Load(); m != nil {
		if e := (*m)[name]; e != nil {
			return e
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.admitLocked(name)
}

func (u *upstreams) admitLocked(name string) *upstream {
	old := mapOrNil(u.byName.Load())
	if e := old[name]; e != nil {
		return e
	}
	if len(old) >= u.limit {
		return u.other
	}
	e := &upstream{idx: uint64(len(old)) + 1, name: name, kvs: hostPortAttrs(name)}
	next := make(map[string]*upstream, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[name] = e
	u.byName.Store(&next)
	return e
}

// forURL returns the upstream a request to u goes to, without allocating
// once the URL's host was seen.
func (u *upstreams) forURL(target *url.URL) *upstream {
	tls := 0
	if target.Scheme == "https" || target.Scheme == "wss" {
		tls = 1
	}
	if m := u.byURL[tls].Load(); m != nil {
		if e := (*m)[target.Host]; e != nil {
			return e
		}
	}
	name := gateway.UpstreamName(target)
	if name == "" {
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	e := u.admitLocked(name)
	old := mapOrNil(u.byURL[tls].Load())
	if len(old) < 2*u.limit { // spellings of admitted hosts, and a bounded few others
		next := make(map[string]*upstream, len(old)+1)
		for key, v := range old {
			next[key] = v
		}
		next[target.Host] = e
		u.byURL[tls].Store(&next)
	}
	return e
}

// hostPortAttrs returns server.address and server.port for a canonical
// host:port name.
func hostPortAttrs(name string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(name)
	if err != nil {
		return []attribute.KeyValue{semconv.ServerAddressKey.String(name)}
	}
	kvs := []attribute.KeyValue{semconv.ServerAddressKey.String(host)}
	if p, err := strconv.Atoi(port); err == nil {
		kvs = append(kvs, semconv.ServerPortKey.Int(p))
	}
	return kvs
}

// errorType returns the value of error.type for a failure class, or a
// status code when there is no failure but the status is an error.
func errorType(kind uint64, class gateway.Class, status int) (attribute.KeyValue, bool) {
	switch kind {
	case errClass:
		return semconv.ErrorTypeKey.String(class.String()), true
	case errStatus:
		return semconv.ErrorTypeKey.String(strconv.Itoa(status)), true
	}
	return attribute.KeyValue{}, false
}

// sensitiveQuery are the query parameters whose values the semantic
// conventions ask to redact in url.full (signed-URL credentials): never
// shown, even when Options.URLQueryValues lists them.
var sensitiveQuery = [...]string{"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"}

// fullURL returns u for url.full: without user info, and with the value of
// every query parameter not in shown replaced by REDACTED. The query keeps
// its order and its names as sent.
func fullURL(u *url.URL, shown map[string]bool) string {
	c := *u
	c.User = nil
	if c.RawQuery != "" {
		c.RawQuery = redactQuery(c.RawQuery, shown)
	}
	return c.String()
}

// redactQuery returns the raw query q with the values of the parameters
// not in shown replaced by REDACTED; a parameter without a value, or with
// an empty one, is kept as it is.
func redactQuery(q string, shown map[string]bool) string {
	var b strings.Builder
	b.Grow(len(q))
	first := true
	for part := range strings.SplitSeq(q, "&") {
		if !first {
			b.WriteByte('&')
		}
		first = false
		key, value, ok := strings.Cut(part, "=")
		if !ok || value == "" {
			b.WriteString(part)
			continue
		}
		if name, err := url.QueryUnescape(key); err == nil && shown[name] {
			b.WriteString(part)
			continue
		}
		b.WriteString(key)
		b.WriteString("=REDACTED")
	}
	return b.String()
}
