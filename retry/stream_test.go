package retry

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestSSEFlushesThrough: an event stream reaches the client event by event:
// the client reads the first event while the upstream still waits to send
// the second.
func TestSSEFlushesThrough(t *testing.T) {
	release := make(chan struct{})
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Second):
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	}))
	closeLater(t, up)
	front := serve(t, mustNew(t, Options{}).Wrap(newProxy(t, ordered(t, up))))

	res, err := front.Client().Do(newRequest(t, t.Context(), http.MethodGet, front.URL, nil))
	require.NoError(t, err)
	defer res.Body.Close()
	assert.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	br := bufio.NewReader(res.Body)
	first := make(chan string, 1)
	go func() {
		line, _ := br.ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		assert.Equal(t, "data: one\n", line)
	case <-time.After(10 * time.Second):
		t.Fatal("the first event did not arrive before the upstream finished: not flushed")
	}
	close(release)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, "\ndata: two\n\n", string(rest))
}

// upgrade proxies to first then second, dials the front server, asks to
// switch to "echo", and returns the connection, the response and the
// retries made.
func upgrade(t *testing.T, first, second *gatewaytest.Server) (net.Conn, *bufio.Reader, *http.Response, *retries) {
	t.Helper()
	return upgradeWith(t, Options{}, first, second)
}

func upgradeWith(t *testing.T, opts Options, first, second *gatewaytest.Server) (net.Conn, *bufio.Reader, *http.Response, *retries) {
	t.Helper()
	closeLater(t, first, second)
	rec := &retries{}
	opts.OnRetry = rec.hook
	front := serve(t, mustNew(t, opts).Wrap(newProxy(t, ordered(t, first, second))))
	c, err := net.DialTimeout("tcp", front.Listener.Addr().String(), 10*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
	_, err = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	return c, br, res, rec
}

// TestUpgradePassesThrough: a WebSocket-style upgrade reaches the upstream
// (after a refused first pick: nothing was sent, so that is retried), the
// 101 and the upgraded stream pass through both ways.
func TestUpgradePassesThrough(t *testing.T) {
	echo := gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(false))
	c, br, res, rec := upgrade(t, gatewaytest.NewServer(gatewaytest.Refused), echo)
	assert.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	assert.Equal(t, "echo", res.Header.Get("Upgrade"))
	for _, msg := range []string{"ping\n", "pong\n"} {
		_, err := io.WriteString(c, msg)
		require.NoError(t, err)
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, msg, line)
	}
	assert.Equal(t, int64(1), echo.Requests())
	assert.Len(t, rec.get(), 1, "only the refused pick was retried")
}

// TestUpgradeOutlivesPerTryTimeout: the per-try timeout bounds an attempt
// until its response is committed; an upgraded connection is committed by
// the hijack, without a decision, and must live on past the timeout.
func TestUpgradeOutlivesPerTryTimeout(t *testing.T) {
	echo := gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(false))
	c, br, res, _ := upgradeWith(t, Options{PerTryTimeout: 150 * time.Millisecond}, echo, gatewaytest.NewHealthy(nil))
	require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	time.Sleep(400 * time.Millisecond) // well past the per-try timeout
	_, err := io.WriteString(c, "still there?\n")
	require.NoError(t, err)
	line, err := br.ReadString('\n')
	require.NoError(t, err, "the upgraded connection must outlive the per-try timeout")
	assert.Equal(t, "still there?\n", line)
}

// TestUpgradeIsNeverReplayed: an upgraded connection that the upstream drops
// is over: it is not retried on another upstream.
func TestUpgradeIsNeverReplayed(t *testing.T) {
	dropping, echo := gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(true)), gatewaytest.NewHealthy(gatewaytest.EchoUpgrade(false))
	_, br, res, rec := upgrade(t, dropping, echo)
	assert.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	_, err := br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the client sees the upgraded connection end")
	assert.Equal(t, int64(1), dropping.Requests())
	assert.Equal(t, int64(0), echo.Requests())
	assert.Empty(t, rec.get())
}

// totalAlloc returns the bytes allocated so far by the process.
func totalAlloc() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// TestLargeBodyStreamed: a 5 MiB body, larger than the 1 MiB replay cap,
// goes through without being buffered beyond the cap: the whole process
// (client, proxy, upstream) allocates well under the body's size. It is
// retried when the failed attempt read none of it, and not once it was read.
func TestLargeBodyStreamed(t *testing.T) {
	const size = 5 << 20
	want := sha(size)
	put := func(t *testing.T, front string, chunked bool) *http.Request {
		req := newRequest(t, t.Context(), http.MethodPut, front, &pattern{n: size})
		if !chunked {
			req.ContentLength = size
		}
		return req
	}

	t.Run("bounded memory", func(t *testing.T) {
		healthy := gatewaytest.NewHealthy(hashUpstream())
		closeLater(t, healthy)
		front := serve(t, mustNew(t, Options{}).Wrap(newProxy(t, ordered(t, healthy))))
		// Warm up connections and pools, then measure one request each way.
		assert.Equal(t, http.StatusOK, do(t, front, put(t, front.URL, true)).status)
		for _, c := range []struct {
			chunked bool
			limit   uint64
		}{
			// Unknown length: the tee keeps up to 1 MiB (growing by
			// doubling, about 2 MiB allocated), then drops it.
			{true, 3 << 20},
			// Declared length over the cap: nothing is kept.
			{false, 1 << 20},
		} {
			before := totalAlloc()
			res := do(t, front, put(t, front.URL, c.chunked))
			allocated := totalAlloc() - before
			require.Equal(t, http.StatusOK, res.status)
			assert.Equal(t, want, res.header.Get("X-Body-Sha256"))
			assert.Less(t, allocated, c.limit, "chunked=%t: allocated %d bytes for a %d-byte body", c.chunked, allocated, size)
			t.Logf("chunked=%t: %d KiB allocated by the whole process for a 5 MiB body", c.chunked, allocated>>10)
		}
	})

	t.Run("retried when unread", func(t *testing.T) {
		refused, healthy := gatewaytest.NewServer(gatewaytest.Refused), gatewaytest.NewHealthy(hashUpstream())
		closeLater(t, refused, healthy)
		front := serve(t, mustNew(t, Options{}).Wrap(newProxy(t, ordered(t, refused, healthy))))
		for _, chunked := range []bool{true, false} {
			res := do(t, front, put(t, front.URL, chunked))
			require.Equal(t, http.StatusOK, res.status)
			assert.Equal(t, want, res.header.Get("X-Body-Sha256"))
		}
	})

	t.Run("not retried once read", func(t *testing.T) {
		reset, healthy := gatewaytest.NewServer(gatewaytest.ResetAfterRequest), gatewaytest.NewHealthy(hashUpstream())
		closeLater(t, reset, healthy)
		var rec retries
		front := serve(t, mustNew(t, Options{OnRetry: rec.hook}).Wrap(newProxy(t, ordered(t, reset, healthy))))
		res := do(t, front, put(t, front.URL, true))
		assert.Equal(t, http.StatusBadGateway, res.status, "a PUT is idempotent, but its body is gone")
		assert.Equal(t, int64(1), reset.Requests())
		assert.Equal(t, int64(0), healthy.Requests())
		assert.Empty(t, rec.get())
		assert.True(t, strings.HasPrefix(res.body, "502 "))
	})
}
