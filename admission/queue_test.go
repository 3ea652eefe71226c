package admission

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// held is a RoundTripper whose requests to /hold wait until released (or
// their context ends); others are answered at once.
type held struct {
	release chan struct{}
	mu      sync.Mutex
	order   []string // paths, in the order they reached it
}

func newHeld() *held { return &held{release: make(chan struct{})} }

func (h *held) RoundTrip(r *http.Request) (*http.Response, error) {
	h.mu.Lock()
	h.order = append(h.order, r.URL.Path)
	h.mu.Unlock()
	if r.URL.Path == "/upload" {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	if r.URL.Path == "/hold" {
		select {
		case <-h.release:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("ok")), Request: r}, nil
}

func (h *held) reached() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.order...)
}

// quiet settings: windows never close during a test, so that a limit set
// by hand stays.
func quiet(s Settings) Settings {
	s.Window = time.Hour
	return s
}

// congest sets host's enforced limit by hand.
func congest(l *Limiter, name string, limit int64) *host {
	h := l.admit(name)
	h.ctlMu.Lock()
	h.ctl.congested, h.ctl.limit = true, float64(limit)
	h.ctlMu.Unlock()
	h.limit.Store(limit)
	return h
}

const testHost = "upstream.test:80"

func req(ctx context.Context, path string, header ...string) *http.Request {
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://upstream.test"+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	return r
}

// result is what a RoundTrip returned.
type result struct {
	path string
	res  *http.Response
	err  error
	took time.Duration
}

func (r result) class() string {
	if r.err == nil {
		return "ok"
	}
	return gateway.ClassifyError(r.err, "", true).Class.String()
}

// send runs a RoundTrip in the background.
func send(rt http.RoundTripper, r *http.Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		start := time.Now()
		res, err := rt.RoundTrip(r)
		if res != nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		ch <- result{path: r.URL.Path, res: res, err: err, took: time.Since(start)}
	}()
	return ch
}

// waitQueued waits until n requests wait for a slot of h.
func waitQueued(t *testing.T, h *host, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return h.queued.Load() == n }, 5*time.Second, time.Millisecond)
}

// TestQueueDeadlineAndCancel: a request waiting for a slot waits no longer
// than its own deadline, and leaves at once when its client goes away;
// one whose slot frees in time goes through.
func TestQueueDeadlineAndCancel(t *testing.T) {
	l, err := New(quiet(Settings{QueueTimeout: 5 * time.Second}))
	require.NoError(t, err)
	up := newHeld()
	rt := l.Transport(up)
	h := congest(l, testHost, 1)

	holder := send(rt, req(context.Background(), "/hold"))
	require.Eventually(t, func() bool { return h.inflight.Load() == 1 }, 5*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	deadline := send(rt, req(ctx, "/deadline"))
	waitQueued(t, h, 1)
	r := <-deadline
	assert.Equal(t, "overloaded", r.class(), "its deadline came while it waited")
	assert.Less(t, r.took, 2*time.Second, "the deadline, not QueueTimeout, bounded the wait")
	var f *gateway.Failure
	require.ErrorAs(t, r.err, &f)
	assert.False(t, f.Sent)
	assert.Equal(t, 503, f.StatusCode())
	assert.Equal(t, time.Second, f.RetryAfter)
	assert.ErrorIs(t, r.err, ErrShed)
	assert.Equal(t, testHost, f.Upstream)

	ctx2, cancel2 := context.WithCancel(context.Background())
	gone := send(rt, req(ctx2, "/gone"))
	waitQueued(t, h, 1)
	start := time.Now()
	cancel2()
	r = <-gone
	assert.Equal(t, "canceled", r.class(), "a client that went away is not shed: it is canceled")
	assert.Less(t, time.Since(start), time.Second)

	waits := send(rt, req(context.Background(), "/waits"))
	waitQueued(t, h, 1)
	close(up.release)
	assert.Equal(t, "ok", (<-holder).class())
	assert.Equal(t, "ok", (<-waits).class(), "the freed slot went to the waiting request")
	assert.Equal(t, []string{"/hold", "/waits"}, up.reached(), "nothing shed or canceled reached the upstream")
	assert.EqualValues(t, 0, h.queued.Load())
	assert.EqualValues(t, 0, h.inflight.Load())
	assert.EqualValues(t, 1, h.shed.Load())
}

// TestQueueTimeout: with no deadline of its own, a request waits at most
// QueueTimeout; with the queue off, not at all.
func TestQueueTimeout(t *testing.T) {
	for _, c := range []struct {
		name string
		s    Settings
		max  time.Duration
	}{
		{"timeout", Settings{QueueTimeout: 30 * time.Millisecond}, 2 * time.Second},
		{"off", Settings{QueueLength: -1}, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := New(quiet(c.s))
			require.NoError(t, err)
			up := newHeld()
			rt := l.Transport(up)
			h := congest(l, testHost, 1)
			holder := send(rt, req(context.Background(), "/hold"))
			require.Eventually(t, func() bool { return h.inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
			r := <-send(rt, req(context.Background(), "/x"))
			assert.Equal(t, "overloaded", r.class())
			if c.s.QueueTimeout > 0 {
				assert.GreaterOrEqual(t, r.took, c.s.QueueTimeout)
			}
			assert.Less(t, r.took, c.max)
			close(up.release)
			<-holder
		})
	}
}

// TestPriorityOrdersShedding: while a host is at its limit, the next free
// slot goes to the highest priority waiting; a request that finds the
// queue full takes the place of a waiting one of lower priority, which is
// shed at once; negative priorities may fill only part of the limit.
func TestPriorityOrdersShedding(t *testing.T) {
	prio := func(r *http.Request) int { p, _ := strconv.Atoi(r.Header.Get("P")); return p }
	l, err := New(quiet(Settings{QueueLength: 2, QueueTimeout: 10 * time.Second, Priority: prio}))
	require.NoError(t, err)
	up := newHeld()
	rt := l.Transport(up)
	h := congest(l, testHost, 1)

	holder := send(rt, req(context.Background(), "/hold"))
	require.Eventually(t, func() bool { return h.inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
	crawlerA := send(rt, req(context.Background(), "/crawler-a", "P", "-1"))
	waitQueued(t, h, 1)
	crawlerB := send(rt, req(context.Background(), "/crawler-b", "P", "-1"))
	waitQueued(t, h, 2)
	checkout := send(rt, req(context.Background(), "/checkout", "P", "1"))
	r := <-crawlerB
	assert.Equal(t, "overloaded", r.class(), "the latest crawler made room for checkout")
	assert.Less(t, r.took, 5*time.Second, "shed at once, not at its timeout")
	plain := send(rt, req(context.Background(), "/plain"))
	r = <-crawlerA
	assert.Equal(t, "overloaded", r.class(), "a default-priority request outranks the other crawler")
	another := send(rt, req(context.Background(), "/crawler-c", "P", "-1"))
	r = <-another
	assert.Equal(t, "overloaded", r.class(), "a full queue of higher priorities sheds a crawler at once")
	waitQueued(t, h, 2)

	close(up.release)
	for _, ch := range []<-chan result{holder, checkout, plain} {
		assert.Equal(t, "ok", (<-ch).class())
	}
	assert.Equal(t, []string{"/hold", "/checkout", "/plain"}, up.reached(), "checkout got the first free slot")
	assert.EqualValues(t, 3, h.shed.Load())

	// A negative priority fills at most three quarters of the limit.
	up2 := newHeld()
	l2, err := New(quiet(Settings{QueueLength: -1, Priority: prio}))
	require.NoError(t, err)
	rt2 := l2.Transport(up2)
	h2 := congest(l2, testHost, 4)
	var hold []<-chan result
	for range 3 {
		hold = append(hold, send(rt2, req(context.Background(), "/hold", "P", "-1")))
	}
	require.Eventually(t, func() bool { return h2.inflight.Load() == 3 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, "overloaded", (<-send(rt2, req(context.Background(), "/crawler", "P", "-1"))).class())
	hold = append(hold, send(rt2, req(context.Background(), "/hold")))
	require.Eventually(t, func() bool { return h2.inflight.Load() == 4 }, 5*time.Second, time.Millisecond,
		"the last quarter is kept for the rest")
	close(up2.release)
	for _, ch := range hold {
		assert.Equal(t, "ok", (<-ch).class())
	}
}

// TestUnlimitedWhileHealthy: a host that shows no queueing has no limit:
// any number of requests go through at once, none waits or is shed, and
// the priority hook is never called.
func TestUnlimitedWhileHealthy(t *testing.T) {
	called := false
	l, err := New(quiet(Settings{Priority: func(*http.Request) int { called = true; return 0 }}))
	require.NoError(t, err)
	up := newHeld()
	rt := l.Transport(up)
	var hold []<-chan result
	for range 200 {
		hold = append(hold, send(rt, req(context.Background(), "/hold")))
	}
	require.Eventually(t, func() bool { h := l.lookup(testHost); return h != nil && h.inflight.Load() == 200 }, 5*time.Second, time.Millisecond)
	h := l.lookup(testHost)
	assert.False(t, h.limit.Load() < unlimited, "no limit enforced")
	close(up.release)
	for _, ch := range hold {
		assert.Equal(t, "ok", (<-ch).class())
	}
	assert.False(t, called)
	assert.EqualValues(t, 0, h.shed.Load())
	assert.EqualValues(t, 0, h.active.Load(), "every body closed")
}

// TestUnknownHostsBounded: hosts beyond MaxHosts pass unlimited, and the
// Limiter keeps no state for them.
func TestUnknownHostsBounded(t *testing.T) {
	l, err := New(quiet(Settings{MaxHosts: 2}))
	require.NoError(t, err)
	rt := l.Transport(newHeld())
	for i := range 5 {
		r, _ := http.NewRequest(http.MethodGet, "http://h"+strconv.Itoa(i)+".test/", nil)
		res, err := rt.RoundTrip(r)
		require.NoError(t, err)
		res.Body.Close()
	}
	assert.Len(t, l.Status(), 2)
}

func TestSettingsInvalid(t *testing.T) {
	_, err := New(Settings{Tolerance: 1, MinQueueDelay: -1, Window: -time.Second, MinLimit: -1,
		QueueTimeout: time.Minute, RetryAfter: -1, MaxHosts: -3})
	require.Error(t, err)
	for _, want := range []string{"Tolerance 1", "MinQueueDelay -1ns is negative", "Window -1s is negative",
		"MinLimit -1 is negative", "QueueTimeout 1m0s is longer", "RetryAfter -1ns is negative", "MaxHosts -3 is negative"} {
		assert.Contains(t, err.Error(), want)
	}
	_, err = New(Settings{Window: time.Microsecond})
	assert.ErrorContains(t, err, "shorter than 1 ms")
	l, err := New(Settings{})
	require.NoError(t, err)
	assert.Equal(t, DefaultTolerance, l.c.Tolerance)
	assert.Equal(t, DefaultQueueTimeout, l.c.QueueTimeout)
}

func TestCanonicalHost(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.5:8080":         "10.0.0.5:8080",
		"http://svc":            "svc:80",
		"https://svc/x":         "svc:443",
		"[::1]:9000":            "[::1]:9000",
		"http://[::1]:9000/":    "[::1]:9000",
		"Upstream.test:80":      "upstream.test:80",
		"LOCALHOST.:019001":     "localhost:19001",
		"[::ffff:10.0.0.5]:80":  "10.0.0.5:80",
		"HTTP://Svc.:0080/":     "svc:80",
		"ftp://svc":             "",
		"svc":                   "",
		"svc:":                  "",
		"":                      "",
		"10.0.0.5:8080/x":       "",
		"http://":               "",
		"svc:80?upstream=other": "",
	} {
		got, err := canonicalHost(in)
		if want == "" {
			assert.Error(t, err, in)
			continue
		}
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	assert.False(t, errors.Is(nil, ErrUnknownHost))
}

// TestHostOfAnySpelling: the limiter keys a host by its canonical name
// whichever spelling the outbound URL carries, so one server has one limit.
func TestHostOfAnySpelling(t *testing.T) {
	l, err := New(quiet(Settings{}))
	require.NoError(t, err)
	h := l.hostOf(&url.URL{Scheme: "http", Host: "localhost:19001"})
	require.NotNil(t, h)
	for _, in := range []string{"LOCALHOST:19001", "localhost.:19001", "localhost:019001"} {
		assert.Same(t, h, l.hostOf(&url.URL{Scheme: "http", Host: in}), in)
		assert.Same(t, h, l.hostOf(&url.URL{Scheme: "http", Host: in}), "%s, cached", in)
	}
	assert.Same(t, l.hostOf(&url.URL{Scheme: "http", Host: "127.0.0.1:80"}), l.hostOf(&url.URL{Scheme: "http", Host: "[::ffff:127.0.0.1]"}))
	assert.Len(t, l.Status(), 2)
}

// TestUploadHoldsNoSlot: a request whose client is still uploading its body
// holds no slot (it is no work for the host yet), so stalled uploads cannot
// fill a congested host's limit; it takes its slot back once its body was
// sent whole.
func TestUploadHoldsNoSlot(t *testing.T) {
	l, err := New(quiet(Settings{QueueLength: -1}))
	require.NoError(t, err)
	up := newHeld()
	rt := l.Transport(up)
	h := congest(l, testHost, 1)

	pr, pw := io.Pipe()
	r, _ := http.NewRequest(http.MethodPost, "http://upstream.test/upload", pr)
	upload := send(rt, r)
	require.Eventually(t, func() bool { return len(up.reached()) == 1 }, 5*time.Second, time.Millisecond)
	assert.EqualValues(t, 0, h.inflight.Load(), "the stalled upload holds no slot")
	assert.EqualValues(t, 1, h.active.Load(), "but a drain waits for it")
	assert.Equal(t, "ok", (<-send(rt, req(context.Background(), "/get"))).class(), "the slot is free for others")

	holder := send(rt, req(context.Background(), "/hold"))
	require.Eventually(t, func() bool { return h.inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
	_, _ = pw.Write([]byte("body"))
	require.NoError(t, pw.Close())
	assert.Equal(t, "ok", (<-upload).class(), "an upload admitted once is not shed when it finishes")
	close(up.release)
	assert.Equal(t, "ok", (<-holder).class())
	assert.EqualValues(t, 0, h.inflight.Load())
	assert.EqualValues(t, 0, h.active.Load())
}

// TestHealthAtLimit: a pool passes over a host at its limit (share 0),
// and never sends a request back to a host at its limit that it tried
// already; the queries tell the same.
func TestHealthAtLimit(t *testing.T) {
	l, err := New(quiet(Settings{}))
	require.NoError(t, err)
	hl := l.Health(nil)
	up := newHeld()
	rt := l.Transport(up)
	h := congest(l, testHost, 1)
	shares := hl.(interface{ Share(string) float64 })
	rh := hl.(interface {
		AllowsRequest(string, *http.Request) bool
	})
	assert.Equal(t, 1.0, shares.Share(testHost))
	assert.True(t, l.Congested(testHost))
	holder := send(rt, req(context.Background(), "/hold"))
	require.Eventually(t, func() bool { return h.inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, 0.0, shares.Share(testHost))
	assert.False(t, l.Headroom(testHost))

	tc, trail := gateway.WithTrail(context.Background())
	fresh := req(tc, "/")
	assert.True(t, rh.AllowsRequest(testHost, fresh), "a first attempt may wait for a slot")
	trail.Add(testHost)
	assert.False(t, rh.AllowsRequest(testHost, fresh), "a retry is not queued on the same host")
	assert.True(t, hl.Allows(testHost))
	assert.Equal(t, pool.StateServing, hl.(pool.HostStater).HostState(testHost), "at its limit, still in service")

	close(up.release)
	<-holder
	assert.True(t, rh.AllowsRequest(testHost, fresh), "with a slot free, a retry may go back")
	assert.True(t, l.Headroom(testHost))
	assert.False(t, l.Draining(testHost))
	assert.False(t, l.Congested("other.test:80"))
}
