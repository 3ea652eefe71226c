package retry

// Reliability tests: bodies replayed byte-exact at random sizes
// and failure points, no cross-talk between concurrent requests' replay
// buffers, bounded memory for a 100 MiB upload, and
// http.ResponseController through the retry layer's writer. Long variants
// run with PROXYKIT_LONG=1.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// relLong reports whether the long variants run (PROXYKIT_LONG=1).
func relLong() bool { return os.Getenv("PROXYKIT_LONG") == "1" }

// relSeed returns the seed of a randomized test: PROXYKIT_SEED if set,
// else a fresh one. It is logged, so that a failure can be replayed.
func relSeed(t *testing.T) uint64 {
	t.Helper()
	seed := rand.Uint64()
	if s := os.Getenv("PROXYKIT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "PROXYKIT_SEED")
		seed = v
	}
	t.Logf("seed %d (replay with PROXYKIT_SEED=%d)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FAILED with seed %d: replay with PROXYKIT_SEED=%d", seed, seed)
		}
	})
	return seed
}

// relBody returns n random bytes drawn from seed.
func relBody(seed uint64, n int) []byte {
	b := make([]byte, n)
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// relHex returns the hex SHA-256 of b.
func relHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// relReset closes the hijacked connection of w with a TCP RST.
func relReset(w http.ResponseWriter) {
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// relPrefixCheck records whether every body an upstream read was a prefix
// of the body the client sent.
type relPrefixCheck struct {
	want []byte
	mu   sync.Mutex
	errs []string
}

func (p *relPrefixCheck) check(where string, got []byte, complete bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case len(got) > len(p.want):
		p.errs = append(p.errs, fmt.Sprintf("%s: read %d bytes of a %d-byte body", where, len(got), len(p.want)))
	case !bytes.Equal(got, p.want[:len(got)]):
		p.errs = append(p.errs, fmt.Sprintf("%s: the %d bytes read differ from the body sent", where, len(got)))
	case complete && len(got) != len(p.want):
		p.errs = append(p.errs, fmt.Sprintf("%s: clean end of body after %d of %d bytes: truncated", where, len(got), len(p.want)))
	}
}

func (p *relPrefixCheck) failures() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.errs...)
}

// relFailAfter is an upstream that reads k bytes of the body (all of it
// when k < 0), checks them, then fails: "reset" (TCP RST, no answer) or
// "503" (its own 503).
func relFailAfter(check *relPrefixCheck, k int64, kind string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rd io.Reader = r.Body
		if k >= 0 {
			rd = io.LimitReader(r.Body, k)
		}
		got, err := io.ReadAll(rd)
		check.check("failing upstream", got, err == nil && k < 0)
		if kind == "reset" {
			relReset(w)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "busy\n")
	})
}

// relNoGetBody hides a reader's type, so that net/http sets neither a
// length nor GetBody from it.
type relNoGetBody struct{ io.Reader }

// TestReliabilityReplayRandomSizes: with a replay cap of 4 MiB, a PUT body
// of random size up to 4 MiB reaches the second upstream byte-exact
// whatever the first did: refused (read nothing), read a random prefix and
// reset, read all and reset, read a random prefix and answered 503. What
// the first upstream read is always an exact prefix. Default: 4 cases;
// PROXYKIT_LONG=1: 40.
func TestReliabilityReplayRandomSizes(t *testing.T) {
	seed := relSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	n := 4
	if relLong() {
		n = 40
	}
	const maxSize = 4 << 20
	kinds := []string{"refused", "reset-mid", "reset-after", "503-mid", "503-after"}
	for i := range n {
		size := rng.IntN(maxSize + 1)
		if i == 0 {
			size = maxSize // the largest, always
		}
		kind := kinds[(i+rng.IntN(len(kinds)))%len(kinds)]
		chunked := rng.IntN(2) == 0
		k := int64(-1)
		if kind == "reset-mid" || kind == "503-mid" {
			k = rng.Int64N(int64(size) + 1)
		}
		bodySeed := rng.Uint64()
		t.Run(fmt.Sprintf("%d/%s/size=%d/k=%d/chunked=%t", i, kind, size, k, chunked), func(t *testing.T) {
			body := relBody(bodySeed, size)
			check := &relPrefixCheck{want: body}
			var first *gatewaytest.Server
			switch kind {
			case "refused":
				first = gatewaytest.NewServer(gatewaytest.Refused)
			case "reset-mid", "reset-after":
				first = gatewaytest.NewHealthy(relFailAfter(check, k, "reset"))
			default:
				first = gatewaytest.NewHealthy(relFailAfter(check, k, "503"))
			}
			healthy := gatewaytest.NewHealthy(hashUpstream())
			closeLater(t, first, healthy)
			var rec retries
			rt := mustNew(t, Options{MaxReplayBytes: maxSize, OnRetry: rec.hook})
			front := serve(t, rt.Wrap(newProxy(t, ordered(t, first, healthy))))
			req := newRequest(t, t.Context(), http.MethodPut, front.URL, relNoGetBody{bytes.NewReader(body)})
			if !chunked {
				req.ContentLength = int64(size)
			}
			res := do(t, front, req)
			require.NoError(t, res.err)
			require.Equal(t, http.StatusOK, res.status, "body: %.200s", res.body)
			assert.Equal(t, relHex(body), res.header.Get("X-Body-Sha256"), "byte-exact at the upstream")
			assert.Equal(t, strconv.Itoa(size), res.header.Get("X-Body-Len"))
			assert.Len(t, rec.get(), 1, "one retry")
			assert.Equal(t, int64(1), healthy.Requests())
			assert.Empty(t, check.failures())
		})
	}
}

// TestReliabilityConcurrentReplayNoCrossTalk: 128 clients PUT bodies of
// random sizes at once through one Retry to two upstreams that reset a
// third of the requests after reading them. Replay state is pooled and
// recycled between requests: every answer must carry the hash of the
// client's own body, and every request either succeeds or fails as a
// classified reset after its attempts ran out.
func TestReliabilityConcurrentReplayNoCrossTalk(t *testing.T) {
	seed := relSeed(t)
	clients, perClient := 128, 3
	if relLong() {
		clients, perClient = 256, 8
	}
	a, b := gatewaytest.NewHealthy(hashUpstream()), gatewaytest.NewHealthy(hashUpstream())
	closeLater(t, a, b)
	for _, s := range []*gatewaytest.Server{a, b} {
		require.NoError(t, s.SetFlaky(gatewaytest.ResetAfterRequest, 0.33))
	}
	rt := mustNew(t, Options{BudgetRatio: math.Inf(1)})
	front := serve(t, rt.Wrap(newProxy(t, roundRobin(t, a, b))))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 60 * time.Second}
	defer client.CloseIdleConnections()

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var problems []string
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			for i := range perClient {
				body := relBody(rng.Uint64(), rng.IntN(256<<10))
				req, err := http.NewRequest(http.MethodPut, front.URL, relNoGetBody{bytes.NewReader(body)})
				if err != nil {
					report("%v", err)
					return
				}
				if rng.IntN(2) == 0 {
					req.ContentLength = int64(len(body))
				}
				res, err := client.Do(req)
				if err != nil {
					report("client %d/%d: %v", c, i, err)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				switch res.StatusCode {
				case http.StatusOK:
					ok.Add(1)
					if got := res.Header.Get("X-Body-Sha256"); got != relHex(body) {
						report("client %d/%d: the upstream got another body (%d bytes sent, %s received)", c, i, len(body), res.Header.Get("X-Body-Len"))
					}
				case http.StatusBadGateway:
					failed.Add(1) // three resets in a row: p ≈ 0.04
				default:
					report("client %d/%d: status %d", c, i, res.StatusCode)
				}
			}
		}(c)
	}
	wg.Wait()
	assert.Empty(t, problems)
	total := int64(clients * perClient)
	assert.Equal(t, total, ok.Load()+failed.Load())
	assert.Less(t, failed.Load(), total/8, "most requests are saved by a retry")
	assert.Positive(t, rt.Stats().TotalRetries)
	t.Logf("%d ok, %d failed after 3 attempts, %d retries", ok.Load(), failed.Load(), rt.Stats().TotalRetries)
}

// relStream is an upload of n bytes that costs no memory: a fixed random
// block of prime length, repeated, hashed as it is read.
type relStream struct {
	block []byte
	n     int64
	off   int64
	h     hash.Hash
}

func newRelStream(n int64) *relStream {
	return &relStream{block: relBody(7, 65521), n: n, h: sha256.New()}
}

func (s *relStream) Read(p []byte) (int, error) {
	if s.off >= s.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.n-s.off)]
	k := 0
	for k < len(p) {
		k += copy(p[k:], s.block[(s.off+int64(k))%int64(len(s.block)):])
	}
	s.h.Write(p)
	s.off += int64(k)
	return k, nil
}

func (s *relStream) sum() string { return hex.EncodeToString(s.h.Sum(nil)) }

// relHeapPeak samples the heap in use until stop is closed, and returns
// the highest value seen.
func relHeapPeak(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		var m runtime.MemStats
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// TestReliabilityUpload100MiB: a 100 MiB upload through retry (to a
// refused upstream first, so the retry layer really holds the body, then
// to one that hashes it) arrives byte-exact while the whole process —
// client, front server, retry, proxy, upstream — stays within the 1 MiB
// replay cap plus a few MiB: the heap in use never grows by more than the
// cap + 3 MiB and all allocations together stay under twice the cap +
// 2 MiB (a buffered body would cost 100 MiB of either). Chunked (the tee keeps 1 MiB, then drops
// it) and with a Content-Length (nothing kept).
func TestReliabilityUpload100MiB(t *testing.T) {
	const size = 100 << 20
	refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(hashUpstream())
	closeLater(t, refused, healthy)
	front := serve(t, mustNew(t, Options{}).Wrap(newProxy(t, ordered(t, refused, healthy))))
	// Warm up connections and pools.
	assert.Equal(t, http.StatusOK, do(t, front, newRequest(t, t.Context(), http.MethodPut, front.URL, newRelStream(1<<20))).status)

	for _, chunked := range []bool{true, false} {
		t.Run(fmt.Sprintf("chunked=%t", chunked), func(t *testing.T) {
			src := newRelStream(size)
			req := newRequest(t, t.Context(), http.MethodPut, front.URL, src)
			if !chunked {
				req.ContentLength = size
			}
			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			stop := make(chan struct{})
			peakc := relHeapPeak(stop)
			start := time.Now()
			res := do(t, front, req)
			took := time.Since(start)
			close(stop)
			peak := <-peakc
			var after runtime.MemStats
			runtime.ReadMemStats(&after)

			require.Equal(t, http.StatusOK, res.status)
			assert.Equal(t, src.sum(), res.header.Get("X-Body-Sha256"), "byte-exact")
			assert.Equal(t, strconv.Itoa(size), res.header.Get("X-Body-Len"))
			allocated := after.TotalAlloc - before.TotalAlloc
			grown := int64(peak) - int64(before.HeapInuse)
			t.Logf("100 MiB in %v: %d KiB allocated, heap in use grew by at most %d KiB", took.Round(time.Millisecond), allocated>>10, grown>>10)
			// The replay buffer grows by doubling to the 1 MiB cap (< 2 MiB
			// in all); everything else is per-request constant.
			assert.Less(t, allocated, uint64(2*DefaultMaxReplayBytes+2<<20), "total allocation for a 100 MiB upload")
			assert.Less(t, grown, int64(DefaultMaxReplayBytes+3<<20), "peak heap growth for a 100 MiB upload")
		})
	}
}

// TestReliabilityResponseController: a handler behind the retry layer
// reaches the connection through http.ResponseController: Flush sends what
// was written at once, SetWriteDeadline and SetReadDeadline reach the
// connection (a deadline in the past makes the next write fail), and
// Hijack hands over the connection — and none of these is retried.
func TestReliabilityResponseController(t *testing.T) {
	relResponseController(t, func(h http.Handler) http.Handler { return mustNew(t, Options{}).Wrap(h) })
}

// relResponseController serves a handler exercising ResponseController
// through wrap, and checks what a client sees.
func relResponseController(t *testing.T, wrap func(http.Handler) http.Handler) {
	t.Helper()
	gatewaytest.CheckResponseController(t, wrap)
}
