package retry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// balancer is a test-only Rewrite: it picks the first target this request
// has not tried (gateway.Trail), starting at index 0 (ordered) or at a
// rotating offset (round robin), and records the pick in the trail.
type balancer struct {
	targets []*url.URL
	rotate  bool
	next    atomic.Uint64
}

func ordered(t *testing.T, servers ...*gatewaytest.Server) *balancer {
	t.Helper()
	b := &balancer{}
	for _, s := range servers {
		u, err := url.Parse(s.URL)
		require.NoError(t, err)
		b.targets = append(b.targets, u)
	}
	return b
}

func roundRobin(t *testing.T, servers ...*gatewaytest.Server) *balancer {
	b := ordered(t, servers...)
	b.rotate = true
	return b
}

func (b *balancer) Rewrite(pr *httputil.ProxyRequest) {
	trail := gateway.TrailFrom(pr.In.Context())
	start := 0
	if b.rotate && trail.Len() == 0 {
		start = int(b.next.Add(1) - 1)
	}
	n := len(b.targets)
	pick := b.targets[start%n]
	for i := range n {
		if u := b.targets[(start+i)%n]; !trail.Tried(u.Host) {
			pick = u
			break
		}
	}
	if trail != nil {
		trail.Add(pick.Host)
	}
	pr.SetURL(pick)
}

// newProxy returns a ReverseProxy over b with the gateway's Transport and
// ErrorHandler, as users build it.
func newProxy(t *testing.T, b *balancer) *httputil.ReverseProxy {
	return newProxyVia(t, b, nil)
}

// newProxyVia is newProxy with the Transport wrapped by wrap (for counting).
func newProxyVia(t *testing.T, b *balancer, wrap func(http.RoundTripper) http.RoundTripper) *httputil.ReverseProxy {
	t.Helper()
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	var rt http.RoundTripper = &gateway.Transport{Base: base}
	if wrap != nil {
		rt = wrap(rt)
	}
	return &httputil.ReverseProxy{
		Rewrite:      b.Rewrite,
		Transport:    rt,
		ErrorHandler: gateway.NewErrorHandler(discard),
		ErrorLog:     log.New(io.Discard, "", 0),
	}
}

var discard = slog.New(slog.DiscardHandler)

// countingRT counts round trips: the requests the upstreams were offered.
type countingRT struct {
	next http.RoundTripper
	n    atomic.Int64
}

func (c *countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

// mustNew is New for options that must be valid; it keeps test backoffs
// short unless the options say otherwise.
func mustNew(t *testing.T, o Options) *Retry {
	t.Helper()
	if o.BaseDelay == 0 && o.MaxDelay == 0 {
		o.BaseDelay, o.MaxDelay = time.Millisecond, 2*time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = discard
	}
	rt, err := New(o)
	require.NoError(t, err)
	return rt
}

// serve starts a front server for h.
func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func closeLater(t *testing.T, servers ...*gatewaytest.Server) {
	for _, s := range servers {
		t.Cleanup(s.Close)
	}
}

// response is what a client got.
type response struct {
	status int
	header http.Header
	body   string
	err    error // reading the body
}

// do sends a request to the front server and reads the whole response.
func do(t *testing.T, front *httptest.Server, req *http.Request) response {
	t.Helper()
	res, err := front.Client().Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: string(b), err: err}
}

func newRequest(t *testing.T, ctx context.Context, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	require.NoError(t, err)
	return req
}

// outer stands where errorpage would: it passes every response, and records
// the Failure the inner layers hand outward.
type outer struct {
	next http.Handler

	mu      sync.Mutex
	failure *gateway.Failure
	calls   int
}

func (o *outer) Decide(status int, _ http.Header, f *gateway.Failure) gateway.Decision {
	return gateway.Pass
}

func (o *outer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := newInterceptor(w, o)
	o.next.ServeHTTP(i, r)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	o.failure = i.Failure()
}

func (o *outer) get() *gateway.Failure {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failure
}

// requireFailure checks the class and attempt count of the Failure that
// reached the enclosing layer, and returns it.
func (o *outer) requireFailure(t *testing.T, class gateway.Class, attempts int) *gateway.Failure {
	t.Helper()
	f := o.get()
	require.NotNil(t, f, "the enclosing layer must learn the failure")
	assert.Equal(t, class, f.Class, "class (error: %v)", f.Err)
	assert.Equal(t, attempts, f.Attempts, "attempts")
	return f
}

// retries records OnRetry calls.
type retries struct {
	mu    sync.Mutex
	calls []retryCall
}

type retryCall struct {
	attempt int
	failure gateway.Failure
	delay   time.Duration
}

func (r *retries) hook(attempt int, f *gateway.Failure, delay time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, retryCall{attempt, *f, delay})
}

func (r *retries) get() []retryCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]retryCall(nil), r.calls...)
}

func (r *retries) classes() []gateway.Class {
	var cs []gateway.Class
	for _, c := range r.get() {
		cs = append(cs, c.failure.Class)
	}
	return cs
}

// hashUpstream answers with the SHA-256 and the length of the request body
// it read, and records the X-Attempt header.
func hashUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Body-Sha256", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set("X-Body-Len", strconv.FormatInt(n, 10))
		w.Header().Set("X-Seen-Attempt", r.Header.Get("X-Attempt"))
		_, _ = io.WriteString(w, "hashed\n")
	})
}

// pattern is a deterministic body of n bytes that allocates nothing.
type pattern struct{ n, off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		x := p.off + int64(i)
		b[i] = byte(x*131 + x>>9)
	}
	p.off += int64(len(b))
	return len(b), nil
}

// sha returns the hex SHA-256 of the n-byte pattern.
func sha(n int64) string {
	h := sha256.New()
	_, _ = io.Copy(h, &pattern{n: n})
	return hex.EncodeToString(h.Sum(nil))
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// lines returns the records with message msg at level, as attribute maps.
func (h *logRecorder) lines(level slog.Level, msg string) []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]string
	for _, r := range h.recs {
		if r.Level != level || r.Message != msg {
			continue
		}
		m := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			m[a.Key] = a.Value.String()
			return true
		})
		out = append(out, m)
	}
	return out
}

// leaving is a client request that the test abandons midway.
type leaving struct {
	cancel context.CancelFunc
	errc   chan error    // the client's outcome
	done   chan struct{} // closed when the server's handler returned
}

// leave serves h and sends it a GET in the background; goAway cancels it.
func leave(t *testing.T, h http.Handler) *leaving {
	t.Helper()
	l := &leaving{errc: make(chan error, 1), done: make(chan struct{})}
	front := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(l.done)
		h.ServeHTTP(w, r)
	}))
	ctx, cancel := context.WithCancel(t.Context())
	l.cancel = cancel
	req := newRequest(t, ctx, http.MethodGet, front.URL, nil)
	go func() {
		res, err := front.Client().Do(req)
		if err == nil {
			res.Body.Close()
		}
		l.errc <- err
	}()
	return l
}

// goAway cancels the request and waits for the server's handler to end.
func (l *leaving) goAway(t *testing.T) {
	t.Helper()
	l.cancel()
	assert.Error(t, <-l.errc)
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not finish after the client went away")
	}
}

func newInterceptor(w http.ResponseWriter, d gateway.Decider) *gateway.Interceptor {
	i := new(gateway.Interceptor)
	i.Reset(w, d)
	return i
}
