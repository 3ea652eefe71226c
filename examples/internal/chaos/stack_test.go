package chaos

// End-to-end invariants of the recommended stack, as stack.Build wires it.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
	"github.com/proxykit/proxykit/status"
)

// built is stack.Build over servers, with round robin so that the first
// attempt of a fresh stack goes to servers[0] and a retry to servers[1];
// and a front server. Everything is closed at the end of the test.
func built(t *testing.T, logger *slog.Logger, servers ...*gatewaytest.Server) (*proxykit.Stack, *httptest.Server) {
	t.Helper()
	targets := make([]*url.URL, len(servers))
	for i, s := range servers {
		t.Cleanup(s.Close)
		targets[i] = mustURL(t, s.URL)
	}
	if logger == nil {
		logger = quiet
	}
	st, err := proxykit.New(proxykit.Config{Upstreams: targets, Logger: logger,
		Pages: errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}}, Policy: pool.RoundRobin})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	front := httptest.NewServer(st.Handler)
	t.Cleanup(front.Close)
	return st, front
}

// reads checks that every body a failing upstream read is an exact prefix
// of the body the client sent.
type reads struct {
	want []byte
	mu   sync.Mutex
	errs []string
}

func (r *reads) check(got []byte, complete bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case len(got) > len(r.want) || !bytes.Equal(got, r.want[:len(got)]):
		r.errs = append(r.errs, fmt.Sprintf("the %d bytes read are not a prefix of the %d-byte body", len(got), len(r.want)))
	case complete && len(got) != len(r.want):
		r.errs = append(r.errs, fmt.Sprintf("clean end after %d of %d bytes: truncated", len(got), len(r.want)))
	}
}

// failing is an upstream that reads k bytes of the body (all when k < 0),
// checks them, then resets the connection or answers its own 503.
func failing(check *reads, k int64, reset bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rd io.Reader = r.Body
		if k >= 0 {
			rd = io.LimitReader(r.Body, k)
		}
		got, err := io.ReadAll(rd)
		check.check(got, err == nil && k < 0)
		if reset {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				_ = c.Close()
			}
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "Service Unavailable from upstream\n")
	})
}

// TestStackReplayByteExact: through the full stack, a PUT or POST body of
// random size (up to 4 MiB; default: one small, one under and one over the
// 1 MiB replay cap; PROXYKIT_LONG=1: twelve sizes) meets a first upstream
// that fails at a random point — refused, reset on accept, reset after
// reading a random prefix or all of it, 503 after a random prefix or all
// of it. Invariants: every upstream read is an exact prefix of the body,
// and every complete read is the whole body; a 200 carries the hash of
// the client's body; a PUT within the replay cap always succeeds; a
// failure is the first upstream's, classified (reset) or passed through
// (its 503), never a truncated success; a POST that reached an upstream
// is never sent to another.
func TestStackReplayByteExact(t *testing.T) {
	seed := seedFor(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	const limit = retry.DefaultMaxReplayBytes
	sizes := []int{rng.IntN(64 << 10), 64<<10 + rng.IntN(limit-64<<10+1), limit + 1 + rng.IntN(3<<20)}
	if long() {
		for range 9 {
			sizes = append(sizes, rng.IntN(4<<20+1))
		}
	}
	kinds := []string{"refused", "reset-on-accept", "reset-mid", "reset-after", "503-mid", "503-after"}
	ledger := &loadgen.Ledger{}
	var id atomic.Int64
	for _, size := range sizes {
		for _, kind := range kinds {
			for _, method := range []string{http.MethodPut, http.MethodPost} {
				k := int64(-1)
				if strings.HasSuffix(kind, "-mid") {
					k = rng.Int64N(int64(size) + 1)
				}
				chunked := rng.IntN(2) == 0
				bodySeed := rng.Uint64()
				name := fmt.Sprintf("%s/%s/size=%d/k=%d/chunked=%t", method, kind, size, k, chunked)
				t.Run(name, func(t *testing.T) {
					body := randomBody(bodySeed, size)
					check := &reads{want: body}
					var first *gatewaytest.Server
					switch kind {
					case "refused":
						first = gatewaytest.NewServer(gatewaytest.Refused)
					case "reset-on-accept":
						first = gatewaytest.NewServer(gatewaytest.ResetOnAccept)
					default:
						first = gatewaytest.NewHealthy(failing(check, k, strings.HasPrefix(kind, "reset")))
					}
					servers := []*gatewaytest.Server{first, gatewaytest.NewServer(gatewaytest.Healthy), gatewaytest.NewServer(gatewaytest.Healthy)}
					upstreams := make([]string, len(servers))
					for i, s := range servers {
						if i > 0 {
							s.Handler = verifying(s.Addr)
						}
						s.OnRequest = ledger.Observe
						upstreams[i] = s.Addr
					}
					_, front := built(t, nil, servers...)

					req, err := http.NewRequest(method, front.URL+"/upload", opaque{bytes.NewReader(body)})
					require.NoError(t, err)
					if !chunked {
						req.ContentLength = int64(size)
					}
					req.Header.Set(bodyHeader, sum(body))
					req.Header.Set(loadgen.LoadIDHeader, strconv.FormatInt(id.Add(1), 10))
					req.Header.Set("Accept", "application/json")
					res, err := front.Client().Do(req)
					require.NoError(t, err)
					got, bodyErr := io.ReadAll(res.Body)
					res.Body.Close()
					v := judge(res, got, bodyErr, sum(body), upstreams)
					require.Empty(t, v.problem)
					assert.Empty(t, check.errs, "what the failing upstream read")

					applied := kind != "refused" && kind != "reset-on-accept" // the first upstream read the request
					switch {
					case kind == "refused", method == http.MethodPut && size <= limit:
						assert.Equal(t, "ok", v.label, "must be retried and succeed")
					case method == http.MethodPost && applied:
						assert.NotEqual(t, "ok", v.label, "a POST an upstream read must not be sent elsewhere")
					}
					if v.label != "ok" {
						want := "reset"
						if strings.HasPrefix(kind, "503") {
							want = "upstream_503"
						}
						assert.Equal(t, want, v.label, "the client gets the first upstream's failure")
					}
				})
			}
		}
	}
	assert.Zero(t, ledger.Duplicates(), "POSTs delivered twice")
}

// TestStackStreamsFlush: a server-sent event stream and a plain chunked
// response reach the client through every layer as they are written: the
// client reads the first part while the upstream still holds the second.
func TestStackStreamsFlush(t *testing.T) {
	for _, ctype := range []string{"text/event-stream", "text/plain; charset=utf-8"} {
		t.Run(ctype, func(t *testing.T) {
			release := make(chan struct{})
			up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ctype) // no Content-Length: chunked
				_, _ = io.WriteString(w, "data: one\n\n")
				_ = http.NewResponseController(w).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				case <-time.After(20 * time.Second):
				}
				_, _ = io.WriteString(w, "data: two\n\n")
			}))
			_, front := built(t, nil, up, gatewaytest.NewHealthy(nil))
			res, err := front.Client().Get(front.URL + "/events")
			require.NoError(t, err)
			defer res.Body.Close()
			require.Equal(t, http.StatusOK, res.StatusCode)
			br := bufio.NewReader(res.Body)
			first := make(chan string, 1)
			go func() { line, _ := br.ReadString('\n'); first <- line }()
			select {
			case line := <-first:
				assert.Equal(t, "data: one\n", line)
			case <-time.After(10 * time.Second):
				t.Fatal("the first event did not arrive while the upstream held the second: buffered")
			}
			close(release)
			rest, err := io.ReadAll(br)
			require.NoError(t, err)
			assert.Equal(t, "\ndata: two\n\n", string(rest))
		})
	}
}

// dialUpgrade asks front to switch to "echo" on a raw connection.
func dialUpgrade(t *testing.T, front *httptest.Server) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.DialTimeout("tcp", front.Listener.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	_, err = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	return c, br, res
}

// TestStackUpgrade: a WebSocket-style upgrade passes through every layer —
// the 101 and then the upgraded stream both ways — and an upgraded
// connection that the upstream drops is over: never retried elsewhere.
func TestStackUpgrade(t *testing.T) {
	t.Run("echo", func(t *testing.T) {
		echo := gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(false))
		st, front := built(t, nil, echo, gatewaytest.NewHealthy(nil))
		c, br, res := dialUpgrade(t, front)
		assert.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
		assert.Equal(t, "echo", res.Header.Get("Upgrade"))
		for _, msg := range []string{"ping\n", "pong\n", strings.Repeat("x", 100<<10) + "\n"} {
			_, err := io.WriteString(c, msg)
			require.NoError(t, err)
			line, err := br.ReadString('\n')
			require.NoError(t, err)
			assert.Equal(t, msg, line)
		}
		c.Close()
		require.Eventually(t, func() bool { return st.Monitor.Snapshot().InFlight == 0 }, 10*time.Second, 5*time.Millisecond)
		assert.EqualValues(t, 1, st.Monitor.Snapshot().ByStatus["1xx"])
	})
	t.Run("never retried", func(t *testing.T) {
		dropping, echo := gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(true)), gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(false))
		st, front := built(t, nil, dropping, echo)
		_, br, res := dialUpgrade(t, front)
		assert.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
		_, err := br.ReadByte()
		assert.ErrorIs(t, err, io.EOF, "the client sees the upgraded connection end")
		assert.Equal(t, int64(1), dropping.Requests())
		assert.Zero(t, echo.Requests(), "an upgrade is never replayed")
		assert.Zero(t, st.Retry.Stats().TotalRetries)
	})
}

// TestStackResponseController: a handler inside every wrapper of the
// stack — RequestID, Monitor's Interceptor, errorpage's, retry's, and the
// breaker handler seat's — reaches the connection with
// http.ResponseController: Flush sends at once, SetReadDeadline and
// SetWriteDeadline reach the connection (a write deadline in the past makes
// writes fail, and that is not retried), and Hijack hands it over.
func TestStackResponseController(t *testing.T) {
	rt, err := retry.New(retry.Options{Logger: quiet})
	require.NoError(t, err)
	pages, err := errorpage.New(errorpage.Options{Logger: quiet})
	require.NoError(t, err)
	br, err := breaker.New(breaker.Settings{Logger: quiet})
	require.NoError(t, err)
	monitor := &status.Monitor{Logger: quiet}
	controllerChecks(t, func(h http.Handler) http.Handler {
		return gateway.RequestID(monitor.Wrap(pages.Wrap(rt.Wrap(br.Wrap(h)))))
	})
	assert.Zero(t, rt.Stats().TotalRetries)
}

// controllerChecks serves a handler exercising http.ResponseController
// through wrap, and checks what a client sees.
func controllerChecks(t *testing.T, wrap func(http.Handler) http.Handler) {
	t.Helper()
	gatewaytest.CheckResponseController(t, wrap)
}

// logLines decodes JSON log lines.
func logLines(t *testing.T, buf *gatewaytest.SafeBuffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range buf.Lines() {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		out = append(out, m)
	}
	return out
}

// TestStackClientDisconnect: a client that goes away mid-request — while
// the upstream works on it, or while the stack waits out a Retry-After
// before retrying — ends the request at once: no further attempt, nothing
// counted against any breaker, and logged at debug level only, as
// "canceled", 499.
func TestStackClientDisconnect(t *testing.T) {
	cases := []struct {
		name     string
		methods  []string
		upstream func() *gatewaytest.Server
		gone     func(st *proxykit.Stack, servers []*gatewaytest.Server) bool // when to leave
		failures uint32                                                       // breaker failures before the client left, over every host
	}{
		{"upstream working", []string{http.MethodGet, http.MethodPost}, func() *gatewaytest.Server { return gatewaytest.NewServer(gatewaytest.Hang) },
			func(_ *proxykit.Stack, s []*gatewaytest.Server) bool { return s[0].Requests() == 1 }, 0},
		// A POST that got a 503 is not retried: it may have been applied.
		{"waiting to retry", []string{http.MethodGet}, func() *gatewaytest.Server { return gatewaytest.NewStatus(503, "1") },
			func(st *proxykit.Stack, _ []*gatewaytest.Server) bool { return st.Monitor.Snapshot().Retries == 1 }, 1},
	}
	for _, c := range cases {
		for _, method := range c.methods {
			t.Run(c.name+"/"+method, func(t *testing.T) {
				var logs gatewaytest.SafeBuffer
				logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
				servers := []*gatewaytest.Server{c.upstream(), c.upstream(), c.upstream()}
				st, _ := built(t, logger, servers...)
				handled := make(chan struct{})
				front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					defer close(handled)
					st.Handler.ServeHTTP(w, r)
				}))
				defer front.Close()

				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var body io.Reader
				if method == http.MethodPost {
					body = strings.NewReader("order=1")
				}
				req, err := http.NewRequestWithContext(ctx, method, front.URL+"/slow", body)
				require.NoError(t, err)
				errc := make(chan error, 1)
				go func() {
					res, err := front.Client().Do(req)
					if err == nil {
						res.Body.Close()
					}
					errc <- err
				}()
				require.Eventually(t, func() bool { return c.gone(st, servers) }, 10*time.Second, time.Millisecond)
				left := time.Now()
				cancel()
				assert.Error(t, <-errc)
				select {
				case <-handled:
				case <-time.After(5 * time.Second):
					t.Fatal("the stack kept working for a client that left")
				}
				assert.Less(t, time.Since(left), 500*time.Millisecond, "the request ends at once")

				var total int64
				for _, s := range servers {
					total += s.Requests()
				}
				assert.Equal(t, int64(1), total, "no attempt after the client left")
				var failures uint32 // every host has a breaker: the pool registers its targets
				for _, b := range st.Hosts.States() {
					if b.Overflow {
						continue
					}
					assert.Equal(t, breaker.StateClosed, b.State, b.Key)
					failures += b.Counts.Failures
				}
				assert.Equal(t, c.failures, failures, "the cancellation does not count")
				snap := st.Monitor.Snapshot()
				assert.EqualValues(t, 1, snap.Failures["canceled"])
				assert.EqualValues(t, 1, snap.ByStatus["none"], "nothing was written")

				var canceled int
				for _, l := range logLines(t, &logs) {
					if l["msg"] != "proxy: upstream failure" {
						continue // e.g. the pool resting the host that answered 503
					}
					assert.Equal(t, "DEBUG", l["level"], "a client that left is not a fault: %v", l)
					if l["class"] == "canceled" {
						canceled++
						assert.EqualValues(t, 499, l["status"])
					}
				}
				assert.GreaterOrEqual(t, canceled, 1, "the cancellation is logged, as 499")
			})
		}
	}
}

// TestStackAbortedResponse: an upstream whose body breaks after the 200
// went out (close mid-body) makes the proxy panic with
// http.ErrAbortHandler; it propagates through every layer, so the client's
// connection is cut — it sees a 200 whose body ends early, never an error
// page — and the request is not retried elsewhere.
func TestStackAbortedResponse(t *testing.T) {
	for _, accept := range []string{"text/html", "application/json"} {
		t.Run(accept, func(t *testing.T) {
			broken, healthy := gatewaytest.NewServer(gatewaytest.CloseMidBody), gatewaytest.NewHealthy(nil)
			st, front := built(t, nil, broken, healthy)
			req, err := http.NewRequest(http.MethodGet, front.URL+"/file", nil)
			require.NoError(t, err)
			req.Header.Set("Accept", accept)
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Error(t, err, "the client must see the body cut")
			assert.Less(t, len(body), 1<<20)
			assert.Equal(t, "text/plain", res.Header.Get("Content-Type"), "the upstream's header, not a page's")
			assert.Equal(t, bytes.Repeat([]byte{0}, len(body)), body, "only the upstream's bytes")
			assert.Equal(t, int64(1), broken.Requests())
			assert.Zero(t, healthy.Requests(), "a response that started is never retried")
			assert.Zero(t, st.Retry.Stats().TotalRetries)
		})
	}
}

// TestStackHostileHeaders: a 1 MB X-Request-ID full of markup, and Accept
// headers with 100,000 entries (in one line, and in 100,000 lines), cost
// bounded work: the ID is replaced by a minted one, which the upstream,
// the page and the log line get instead; negotiation stops at its bound
// (problem+json, not the text/html at the end); nothing from the headers
// is reflected in the response or in the log line, and each stays small.
func TestStackHostileHeaders(t *testing.T) {
	hugeID := strings.Repeat(`<script>alert(1)</script>`, (1<<20)/25)
	junk := strings.Repeat("application/x-junk;q=0.5, ", 100_000) + "text/html"
	lines := make([]string, 100_000)
	for i := range lines {
		lines[i] = "application/x-junk"
	}
	lines[len(lines)-1] = "text/html"

	var seenID atomic.Value
	up := gatewaytest.NewHealthy(nil)
	up.OnRequest = func(r *http.Request) { seenID.Store(r.Header.Get("X-Request-Id")) }
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	okStack, _ := built(t, logger, up)
	failStack, _ := built(t, logger, gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewServer(gatewaytest.Refused))
	serve := func(h http.Handler) *httptest.Server {
		s := httptest.NewUnstartedServer(h)
		s.Config.MaxHeaderBytes = 8 << 20 // let the hostile headers in
		s.Start()
		t.Cleanup(s.Close)
		return s
	}
	okFront, failFront := serve(okStack.Handler), serve(failStack.Handler)

	do := func(t *testing.T, s *httptest.Server, h http.Header) (*http.Response, string, time.Duration) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, s.URL+"/p", nil)
		require.NoError(t, err)
		req.Header = h
		start := time.Now()
		res, err := s.Client().Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return res, string(body), time.Since(start)
	}
	checkLogs := func(t *testing.T) {
		for _, line := range logs.Lines() {
			assert.Less(t, len(line), 4<<10, "a log line stays small")
			assert.NotContains(t, line, "<script>")
			assert.NotContains(t, line, "x-junk")
		}
	}

	t.Run("X-Request-ID to a healthy upstream", func(t *testing.T) {
		res, body, _ := do(t, okFront, http.Header{"X-Request-Id": {hugeID}})
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, "ok\n", body)
		id := res.Header.Get("X-Request-Id")
		assert.True(t, validRequestID(id) && len(id) < 64, "a minted ID, not %.40q", id)
		assert.Equal(t, id, seenID.Load(), "the upstream got the minted ID")
		checkLogs(t)
	})
	t.Run("X-Request-ID on an error page", func(t *testing.T) {
		for _, accept := range []string{"text/html", "application/json", "text/plain"} {
			res, body, _ := do(t, failFront, http.Header{"X-Request-Id": {hugeID}, "Accept": {accept}})
			assert.Contains(t, []int{502, 503}, res.StatusCode)
			id := res.Header.Get("X-Request-Id")
			assert.True(t, validRequestID(id) && len(id) < 64)
			assert.Contains(t, body, id, "the page quotes the minted ID")
			assert.NotContains(t, body, "<script>")
			assert.NotContains(t, body, "alert(1)")
			assert.Less(t, len(body), 64<<10, accept)
		}
		checkLogs(t)
	})
	t.Run("Accept with 100k entries", func(t *testing.T) {
		for name, h := range map[string]http.Header{
			"one line":      {"Accept": {junk}},
			"100k lines":    {"Accept": lines},
			"with the page": {"Accept": {junk}, "X-Request-Id": {hugeID}},
		} {
			res, body, took := do(t, failFront, h)
			assert.Contains(t, []int{502, 503}, res.StatusCode, name)
			assert.Equal(t, "application/problem+json", res.Header.Get("Content-Type"), "%s: text/html lies beyond the bound", name)
			assert.NotContains(t, body, "x-junk", name)
			assert.Less(t, len(body), 16<<10, name)
			// Bounded work is shown by the content type above (negotiation
			// stopped before text/html); the time bound only catches work
			// that grows with the entries (quadratic in 100k: minutes), at
			// 10× what net/http's own parsing of these headers takes under
			// -race on a busy machine.
			assert.Less(t, took, 30*time.Second, name)
			t.Logf("%s: %v", name, took)
		}
		checkLogs(t)
	})
}

// TestStackStatusViewIsNotPublic: the status view (upstream addresses,
// breaker states) is a separate handler for an admin listener; the public
// handler never serves it, whatever the path or Accept, and its failure
// responses carry no upstream address or breaker state.
func TestStackStatusViewIsNotPublic(t *testing.T) {
	up := gatewaytest.NewHealthy(nil)
	st, front := built(t, nil, up, gatewaytest.NewServer(gatewaytest.Refused))
	for _, path := range []string{"/", "/status", "/?format=json", "/debug/vars"} {
		for _, accept := range []string{"application/json", "text/html"} {
			req, err := http.NewRequest(http.MethodGet, front.URL+path, nil)
			require.NoError(t, err)
			req.Header.Set("Accept", accept)
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			assert.Equal(t, "ok\n", string(body), "%s: proxied, not the status view", path)
			assert.NotContains(t, string(body), "breakers")
		}
	}
	// The admin view, served separately, does show them.
	rec := httptest.NewRecorder()
	st.Status.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	assert.Contains(t, rec.Body.String(), up.Addr)
}

// validRequestID is the documented request-ID syntax, written here
// independently of gateway's own check.
func validRequestID(id string) bool { return requestIDSyntax.MatchString(id) }

var requestIDSyntax = regexp.MustCompile(`^[A-Za-z0-9\-_.:+/=@]{1,128}$`)
