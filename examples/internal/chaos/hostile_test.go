package chaos

// Hostile clients beside well-behaved ones: nothing a client
// does to its own request may cost any other client, or any upstream its
// standing.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/breaker"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// hostileUpstream is verifying, plus /big (a 1 MiB body, streamed) and
// /slow (answers "ok" after 300 ms, or ends when its client left).
func hostileUpstream(addr string) http.Handler {
	v := verifying(addr)
	chunk := make([]byte, 32<<10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(32*len(chunk)))
			for range 32 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		case "/slow":
			select {
			case <-time.After(300 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
			v.ServeHTTP(w, r)
		default:
			v.ServeHTTP(w, r)
		}
	})
}

// hostView and breakerView are what the status view's JSON says of a host
// and of a breaker; read from the JSON, so that they hold whatever the
// view's Go types become.
type hostView struct {
	Upstream string `json:"upstream"`
	State    string `json:"state"`
	Allowed  *bool  `json:"allowed"`
	Failures int64  `json:"failures"`
	InFlight int64  `json:"in_flight"`
}

type breakerView struct {
	Key      string `json:"key"`
	Overflow bool   `json:"overflow"`
	State    string `json:"state"`
	Counts   struct {
		Failures int64 `json:"failures"`
	} `json:"counts"`
}

type statusReport struct {
	Upstreams []hostView    `json:"upstreams"`
	Breakers  []breakerView `json:"breakers"`
	Traffic   struct {
		InFlight int64            `json:"in_flight"`
		Failures map[string]int64 `json:"failures"`
	} `json:"traffic"`
}

// readStatus reads the stack's status view, as an operator's tooling does.
func readStatus(t *testing.T, st *proxykit.Stack) statusReport {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/?format=json", nil)
	req.Header.Set("Accept", "application/json")
	st.Status.ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var rep statusReport
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep), rec.Body.String())
	return rep
}

// hostTrouble lists what the report says against any host: a state other
// than serving, a failure counted against it by the pool or its breaker.
func hostTrouble(rep statusReport) []string {
	var out []string
	for _, h := range rep.Upstreams {
		if h.State != "serving" || h.Allowed == nil || !*h.Allowed || h.Failures != 0 {
			out = append(out, fmt.Sprintf("upstream %s: state %q, allowed %v, %d failures", h.Upstream, h.State, h.Allowed != nil && *h.Allowed, h.Failures))
		}
	}
	for _, b := range rep.Breakers {
		if b.Overflow {
			continue
		}
		if b.State != "closed" || b.Counts.Failures != 0 {
			out = append(out, fmt.Sprintf("breaker %s: state %q, %d failures", b.Key, b.State, b.Counts.Failures))
		}
	}
	return out
}

// tally counts outcomes by label, keeping a few examples of each.
type tally struct {
	mu       sync.Mutex
	counts   map[string]int
	examples map[string][]string
}

func (t *tally) add(label, example string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts, t.examples = map[string]int{}, map[string][]string{}
	}
	t.counts[label]++
	if example != "" && len(t.examples[label]) < 5 {
		t.examples[label] = append(t.examples[label], example)
	}
}

func (t *tally) snapshot() (map[string]int, map[string][]string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.counts), t.examples
}

// rawExchange dials addr, writes req, and reads one response with a
// deadline. It returns the status, or 0 and why there was none.
func rawExchange(addr, req string, deadline time.Duration) (int, string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, "dial: " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(deadline))
	if _, err := io.WriteString(c, req); err != nil {
		return 0, "write: " + err.Error()
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "no response: " + err.Error()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	return res.StatusCode, ""
}

// resetClose closes c with a TCP RST: a client that vanished.
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// malformedChunked is a request with a malformed chunked body: five of
// these must not open the host's breaker for everyone.
const malformedChunked = "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n"

// TestChaosHostileClients: well-behaved clients (GET, PUT and POST with
// bodies checked byte for byte) share the stack from proxykit.New, served
// by proxykit.NewServer, with a hostile mix over three healthy upstreams:
//
//   - malformed chunked bodies (malformedChunked, in a loop);
//   - stalled uploads: Content-Length 100000, 10 bytes sent, then nothing
//     (16 at a time, a new one as soon as one ends);
//   - clients that vanish mid-upload (5,000 of 100,000 bytes, then RST),
//     mid-response (after the first bytes of a 1 MiB answer), and while
//     the upstream works on their request.
//
// Junk breaker keys are not part of the mix: the stack from proxykit.New
// has no keyed breaker (the handler seat with a Key) to flood.
//
// Nothing but the hostile clients' own requests may suffer: every
// well-behaved request succeeds; no upstream is ever out, resting or
// counted a failure, no breaker leaves closed, and nothing is retried
// (checked on the status view all through the run and at its end);
// nothing is logged above info. The hostile clients get what they
// should: 400 for a malformed body, and a stalled upload ended by the
// stack's body read deadline (408, class client_body) — not left to hold
// its upstream connection as long as it likes. Nothing stays in flight.
func TestChaosHostileClients(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	seed := seedFor(t)
	duration, good := 2*time.Second, 8
	if long() {
		duration, good = 20*time.Second, 32
	}
	// The body read deadline under test, short so that stalls end (and
	// their outcomes are counted) by the run's end, yet long beside the
	// gaps of a well-behaved client's upload: under -race on a starved
	// machine the client's own writes may pause for hundreds of
	// milliseconds, which the stack rightly reads as a stalled body.
	const idle = 2 * time.Second

	servers := make([]*gatewaytest.Server, 3)
	targets := make([]*url.URL, len(servers))
	addrs := make([]string, len(servers))
	for i := range servers {
		s := gatewaytest.NewServer(gatewaytest.Healthy)
		s.Handler = hostileUpstream(s.Addr)
		servers[i], addrs[i], targets[i] = s, s.Addr, mustURL(t, s.URL)
	}
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var transitions atomic.Int64
	st, err := proxykit.New(proxykit.Config{
		Upstreams: targets,
		Logger:    logger,
		Pages:     errorpage.Options{Brand: errorpage.Brand{Name: "Hostile"}},
		Breaker: breaker.Settings{OnStateChange: func(string, string, breaker.State, breaker.State) {
			transitions.Add(1)
		}},
		ClientBodyTimeout: idle,
	})
	require.NoError(t, err)
	srv := proxykit.NewServer(st, quiet)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	front := "http://" + ln.Addr().String()
	frontAddr := ln.Addr().String()

	ctx, stop := context.WithTimeout(context.Background(), duration)
	defer stop()
	var (
		wg                                   sync.WaitGroup
		goodOut, malformed, stalls, vanished tally
		trouble                              []string
		troubleMu                            sync.Mutex
	)
	noteTrouble := func(when string, ps []string) {
		troubleMu.Lock()
		defer troubleMu.Unlock()
		for _, p := range ps {
			if len(trouble) < 20 {
				trouble = append(trouble, when+": "+p)
			}
		}
	}

	// The status view, watched all through the run.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				noteTrouble("during the run", hostTrouble(readStatus(t, st)))
			}
		}
	}()

	// Well-behaved clients.
	client := &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: good, DisableCompression: true}}
	defer client.CloseIdleConnections()
	for c := range good {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			for n := 0; ctx.Err() == nil; n++ {
				method, body := []string{http.MethodGet, http.MethodPut, http.MethodPost}[rng.IntN(3)], []byte(nil)
				if method != http.MethodGet {
					body = randomBody(rng.Uint64(), rng.IntN(16<<10))
				}
				req, err := http.NewRequest(method, front+"/r/"+strconv.Itoa(c)+"/"+strconv.Itoa(n), opaque{bytes.NewReader(body)})
				if err != nil {
					goodOut.add("PROBLEM", err.Error())
					return
				}
				hash := ""
				if body == nil {
					req.Body = nil
				} else {
					hash = sum(body)
					req.Header.Set(bodyHeader, hash)
					if rng.IntN(2) == 0 {
						req.ContentLength = int64(len(body))
					}
				}
				req.Header.Set("Accept", "application/json")
				res, err := client.Do(req)
				if err != nil {
					goodOut.add("PROBLEM", fmt.Sprintf("%s: no response: %v", method, err))
					continue
				}
				got, err := io.ReadAll(res.Body)
				res.Body.Close()
				v := judge(res, got, err, hash, addrs)
				switch {
				case v.problem != "":
					goodOut.add("PROBLEM", method+": "+v.problem)
				case v.label != "ok":
					goodOut.add(v.label, fmt.Sprintf("%s: %d %.200q", method, res.StatusCode, got))
				default:
					goodOut.add("ok", "")
				}
			}
		}()
	}

	// Malformed chunked bodies.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			status, why := rawExchange(frontAddr, malformedChunked, 10*time.Second)
			malformed.add(strconv.Itoa(status), why)
			time.Sleep(10 * time.Millisecond)
		}
	}()

	// Stalled uploads: each waits for the stack to end it.
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				start := time.Now()
				status, why := rawExchange(frontAddr,
					"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n0123456789",
					idle+5*time.Second)
				took := time.Since(start).Round(time.Millisecond)
				label := strconv.Itoa(status)
				if status == 0 && strings.Contains(why, "timeout") {
					label = "not ended by the stack"
				}
				stalls.add(label, fmt.Sprintf("after %v: %s", took, why))
			}
		}()
	}

	// Clients that vanish: mid-upload, mid-response, mid-wait.
	vanish := []struct {
		name, req string
		after     func(c net.Conn) // what the client does before it vanishes
	}{
		{"mid-upload", "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("v", 5000),
			func(net.Conn) { time.Sleep(5 * time.Millisecond) }},
		{"mid-response", "GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
			func(c net.Conn) { _, _ = io.ReadFull(c, make([]byte, 4096)) }},
		{"mid-wait", "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n",
			func(net.Conn) { time.Sleep(50 * time.Millisecond) }},
	}
	for _, v := range vanish {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := net.DialTimeout("tcp", frontAddr, 5*time.Second)
				if err != nil {
					vanished.add("dial failed", err.Error())
					return
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(c, v.req); err != nil {
					vanished.add(v.name+": write failed", err.Error())
				}
				v.after(c)
				resetClose(c)
				vanished.add(v.name, "")
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}

	wg.Wait()
	client.CloseIdleConnections()
	// Everything the hostile clients started ends: nothing stays in flight,
	// upstream connections included.
	require.Eventually(t, func() bool {
		rep := readStatus(t, st)
		if rep.Traffic.InFlight != 0 {
			return false
		}
		for _, h := range rep.Upstreams {
			if h.InFlight != 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "requests still in flight after every client finished")
	final := readStatus(t, st)
	noteTrouble("at the end", hostTrouble(final))

	require.NoError(t, srv.Close())
	<-served
	st.Close()
	for _, s := range servers {
		s.Close()
	}

	goodCounts, goodEx := goodOut.snapshot()
	malCounts, malEx := malformed.snapshot()
	stallCounts, stallEx := stalls.snapshot()
	vanCounts, vanEx := vanished.snapshot()
	t.Logf("well-behaved: %v; malformed: %v; stalled: %v; vanished: %v; failures by class %v; breaker transitions %d",
		goodCounts, malCounts, stallCounts, vanCounts, final.Traffic.Failures, transitions.Load())

	// Nothing but the hostile clients' own requests suffered.
	assert.Greater(t, goodCounts["ok"], 10, "the well-behaved load ran (a busy machine runs fewer requests: 34 seen under a CPU hog)")
	delete(goodCounts, "ok")
	assert.Empty(t, goodCounts, "every well-behaved request succeeds: %v", goodEx)
	assert.Empty(t, trouble, "no upstream out, resting or counted a failure because of hostile clients")
	assert.Zero(t, transitions.Load(), "no breaker changed state")
	assert.Zero(t, st.Retry.Stats().TotalRetries, "a hostile client's request is never retried")

	// A client that vanishes mid-response makes ReverseProxy abort the
	// response: status.Monitor logs that as canceled (debug, 499), not as
	// an upstream reset. No hostile client makes the stack warn.
	for _, line := range logLines(t, &logs) {
		lvl, _ := line["level"].(string)
		if lvl == "WARN" || lvl == "ERROR" {
			assert.Fail(t, "a hostile client made the stack warn", "%v", line)
		}
	}
	for class, n := range final.Traffic.Failures {
		switch {
		case n == 0, class == gateway.ClassClientBody.String(), class == gateway.ClassCanceled.String():
		default:
			assert.Fail(t, "a failure that is not the client's own", "%s: %d (failures by class %v)", class, n, final.Traffic.Failures)
		}
	}

	// The hostile clients got what they should.
	assert.Positive(t, malCounts["400"], "malformed bodies were sent")
	assert.Equal(t, map[string]int{"400": malCounts["400"]}, malCounts, "a malformed body is answered 400: %v", malEx)
	assert.Positive(t, vanCounts["mid-upload"]+vanCounts["mid-response"]+vanCounts["mid-wait"], "clients vanished: %v", vanEx)
	assert.Positive(t, stallCounts["408"], "stalled uploads are ended by the body read deadline with 408: %v", stallEx)
	assert.Equal(t, map[string]int{"408": stallCounts["408"]}, stallCounts, "every stalled upload ended by the stack, with 408: %v", stallEx)

	if t.Failed() {
		t.Logf("trouble: %v", trouble)
	}
	goleak.VerifyNone(t, ignore)
}

// deadlineConn records the read deadline last set on a connection.
type deadlineConn struct {
	net.Conn
	mu   sync.Mutex
	read time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.read = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.read = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *deadlineConn) readDeadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read
}

// deadlineListener hands out deadlineConns, and each on conns.
type deadlineListener struct {
	net.Listener
	conns chan *deadlineConn
}

func (l *deadlineListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	dc := &deadlineConn{Conn: c}
	select {
	case l.conns <- dc:
	default:
	}
	return dc, nil
}

// TestChaosStalledUploadBoundedByDefault: the stack
// from proxykit.New with its defaults, served by proxykit.NewServer, puts
// a read deadline on a client's connection while it streams the client's
// body upstream — so that an upload that declares 100,000 bytes and stalls
// after 10 cannot hold its upstream connection for as long as it likes.
// The test reads the deadline off the connection instead of waiting for
// it, so it holds whatever the default is.
func TestChaosStalledUploadBoundedByDefault(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	st, err := proxykit.New(proxykit.Config{Upstreams: []*url.URL{mustURL(t, up.URL)}, Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	srv := proxykit.NewServer(st.Handler, quiet)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &deadlineListener{Listener: inner, conns: make(chan *deadlineConn, 1)}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close(); <-served }()

	c, err := net.DialTimeout("tcp", inner.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
	require.NoError(t, err)
	var dc *deadlineConn
	select {
	case dc = <-ln.conns:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection was not accepted")
	}
	// The stack is streaming the body upstream: the upstream has the request.
	require.Eventually(t, func() bool { return up.Requests() == 1 }, 5*time.Second, time.Millisecond)
	dl := dc.readDeadline()
	if assert.False(t, dl.IsZero(), "a stalled upload has no read deadline: it holds its upstream connection as long as the client likes (the recommended stack sets a body read deadline)") {
		left := time.Until(dl)
		assert.Positive(t, left)
		assert.LessOrEqual(t, left, 5*time.Minute, "the deadline bounds the stall")
		t.Logf("a stalled upload is ended in %v", left.Round(time.Second))
	}
	resetClose(c)
	require.Eventually(t, func() bool { return st.Monitor.Snapshot().InFlight == 0 }, 5*time.Second, time.Millisecond)
	st.Close()
	_ = srv.Close()
	<-served
	up.Close()
	goleak.VerifyNone(t, ignore)
}
