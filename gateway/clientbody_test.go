package gateway_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// rawExchange sends raw bytes to addr over a new TCP connection and reads
// one response.
func rawExchange(t *testing.T, addr, request string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, request)
	require.NoError(t, err)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(body)
}

// TestMalformedChunkedBodyIsTheClientsFault: a client
// sending a malformed chunked body gets 400, and the Failure is the
// client's (client_body), which no breaker, pool or retry counts against
// the upstream — five of them in a row must not be five 502 "internal"
// upstream failures, enough to open a breaker for everyone.
func TestMalformedChunkedBodyIsTheClientsFault(t *testing.T) {
	s := gatewaytest.NewHealthy(nil)
	defer s.Close()
	capt, front := newProxy(t, env{target: s.URL})
	const req = "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n"
	for i := range 5 {
		res, body := rawExchange(t, front.Listener.Addr().String(), req)
		assert.Equal(t, http.StatusBadRequest, res.StatusCode, "request %d", i)
		f, _ := capt.get()
		require.NotNil(t, f)
		assert.Equal(t, gateway.ClassClientBody, f.Class, "request %d: %v", i, f)
		assert.False(t, f.Class.CountsAsFailure(), "never an upstream failure")
		assert.Equal(t, s.Addr, f.Upstream)
		assert.Contains(t, f.Error(), "invalid byte in chunk length")
		assert.NotContains(t, body, "chunk", "no error text to the client")
	}
}

// TestClientBodyFailureStatuses: an oversized body is 413 (through
// http.MaxBytesReader), a client that leaves mid-body is canceled (499,
// nothing written), both classified from the body read, on real sockets.
func TestClientBodyFailureStatuses(t *testing.T) {
	t.Run("too_large", func(t *testing.T) {
		s := gatewaytest.NewHealthy(nil)
		defer s.Close()
		capt, _ := newProxy(t, env{target: s.URL})
		limited := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, 10)
			capt.ServeHTTP(w, r)
		}))
		defer limited.Close()
		res, _ := rawExchange(t, limited.Listener.Addr().String(),
			"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n01234567890123456789")
		assert.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
		f, _ := capt.get()
		require.NotNil(t, f)
		assert.Equal(t, gateway.ClassClientBody, f.Class)
	})
	t.Run("client_gone", func(t *testing.T) {
		s := gatewaytest.NewHealthy(nil)
		defer s.Close()
		capt, front := newProxy(t, env{target: s.URL})
		c, err := net.Dial("tcp", front.Listener.Addr().String())
		require.NoError(t, err)
		_, err = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
		require.NoError(t, err)
		require.Eventually(t, func() bool { return s.Requests() == 1 }, 5*time.Second, time.Millisecond,
			"the upstream must have the request before the client leaves")
		require.NoError(t, c.Close())
		require.Eventually(t, func() bool {
			f, _ := capt.get()
			return f != nil && f.Class == gateway.ClassCanceled
		}, 5*time.Second, time.Millisecond, "a client gone mid-body is canceled, not a client_body or upstream failure")
	})
}

// stalledProxy is a ReverseProxy over upstream with gateway.Transport and
// ErrorHandler behind ClientBodyTimeout(idle), recording the failures.
func stalledProxy(t *testing.T, upstream string, idle time.Duration) (*capture, *httptest.Server) {
	t.Helper()
	u := mustURL(t, upstream)
	base := gateway.NewHTTPTransport()
	t.Cleanup(base.CloseIdleConnections)
	c := &capture{next: &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(quietLogger),
	}}
	front := httptest.NewServer(gateway.ClientBodyTimeout(c, idle))
	t.Cleanup(front.Close)
	return c, front
}

// bodyReader is an upstream handler that reads the whole body, reports
// what it read and how the read ended, then answers with the byte count
// after wait.
func bodyReader(ended chan<- error, wait time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		ended <- err
		time.Sleep(wait)
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	})
}

// TestStalledUploadIs408: a client that declares a body
// and stalls gets 408 once the idle timeout passes; the Failure is the
// client's, not an upstream timeout; and the upstream sees its request end
// (its connection is released, not held for as long as the client likes).
func TestStalledUploadIs408(t *testing.T) {
	ended := make(chan error, 1)
	s := gatewaytest.NewHealthy(bodyReader(ended, 0))
	defer s.Close()
	const idle = 200 * time.Millisecond
	capt, front := stalledProxy(t, s.URL, idle)

	start := time.Now()
	res, body := rawExchange(t, front.Listener.Addr().String(),
		"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
	took := time.Since(start)
	assert.Equal(t, http.StatusRequestTimeout, res.StatusCode, body)
	assert.GreaterOrEqual(t, took, idle)
	assert.Less(t, took, 5*time.Second)
	f, _ := capt.get()
	require.NotNil(t, f)
	assert.Equal(t, gateway.ClassClientBody, f.Class, "%v", f)
	assert.Equal(t, http.StatusRequestTimeout, f.Status)
	assert.False(t, f.Class.CountsAsFailure())
	select {
	case err := <-ended:
		assert.Error(t, err, "the upstream's request ends incomplete")
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream's request was not ended")
	}
}

// TestMovingUploadOutlastsIdleTimeout: an upload that keeps sending, over
// many idle periods, is never cut; and a response that takes several idle
// periods after the body ended still arrives (the deadline is cleared at
// the body's end, so net/http's background read cannot cancel the
// request). The gap between chunks is a tenth of the idle timeout, so a
// busy machine's scheduling delays do not pass for a stalled client; the
// upload still lasts three idle periods, so a deadline set once for the
// whole body would cut it.
func TestMovingUploadOutlastsIdleTimeout(t *testing.T) {
	const idle = 500 * time.Millisecond
	ended := make(chan error, 1)
	s := gatewaytest.NewHealthy(bodyReader(ended, 2*idle))
	defer s.Close()
	capt, front := stalledProxy(t, s.URL, idle)

	c, err := net.Dial("tcp", front.Listener.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	const chunks, chunk = 30, "0123456789"
	_, err = io.WriteString(c, "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: "+
		strconv.Itoa(chunks*len(chunk))+"\r\n\r\n")
	require.NoError(t, err)
	for range chunks { // 30 × 50 ms: 1.5 s, 3 idle periods
		_, err = io.WriteString(c, chunk)
		require.NoError(t, err)
		time.Sleep(50 * time.Millisecond)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, strconv.Itoa(chunks*len(chunk)), string(body))
	assert.NoError(t, <-ended)
	f, _ := capt.get()
	assert.Nil(t, f)
}

// TestClientBodyTimeoutLeavesBodylessRequestsAlone: requests without a
// body get no read deadline: a long response is unaffected.
func TestClientBodyTimeoutLeavesBodylessRequestsAlone(t *testing.T) {
	var wrapped bool
	h := gateway.ClientBodyTimeout(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wrapped = r.Body != http.NoBody
		time.Sleep(300 * time.Millisecond)
		_, _ = io.WriteString(w, "done")
	}), 50*time.Millisecond)
	front := httptest.NewServer(h)
	defer front.Close()
	res, body := get(t, front.Client(), front.URL)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "done", body)
	assert.False(t, wrapped, "a request without a body is passed through untouched")
}

// TestClientBodyLoggedAtInfo: a client's broken body is not a warning.
func TestClientBodyLoggedAtInfo(t *testing.T) {
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := &gateway.Failure{Class: gateway.ClassClientBody, Status: 400, Err: errors.New("invalid byte in chunk length")}
	gateway.LogFailure(logger, httptest.NewRequest("POST", "/", nil), f, time.Millisecond)
	line := logs.String()
	assert.True(t, strings.Contains(line, "level=INFO"), line)
	assert.Contains(t, line, "class=client_body")
}

// TestExpectContinueFailureAnsweredAtOnce: a client that sent "Expect:
// 100-continue" and waits for it gets the failure of an upstream that
// refused at once, as from a bare ReverseProxy, not after the idle timeout
// (net/http must still see its own body type to know the body was never
// asked for).
func TestExpectContinueFailureAnsweredAtOnce(t *testing.T) {
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	const idle = 5 * time.Second
	_, front := stalledProxy(t, down.URL, idle)
	start := time.Now()
	res, _ := rawExchange(t, front.Listener.Addr().String(),
		"PUT /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
	took := time.Since(start)
	assert.Equal(t, http.StatusBadGateway, res.StatusCode)
	assert.Less(t, took, idle/2, "answered without waiting for the unsent body")
}

// deadlineWriter takes read deadlines, as net/http's ResponseWriter does,
// and counts them.
type deadlineWriter struct {
	discardWriter
	set, cleared int
}

func (w *deadlineWriter) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		w.cleared++
	} else {
		w.set++
	}
	return nil
}

// unwrapWriter stands for a layer's ResponseWriter wrapper between the
// timeout and the server.
type unwrapWriter struct{ http.ResponseWriter }

func (u unwrapWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }

// TestClientBodyTimeoutCost: through a wrapper that only unwraps, the
// deadline reaches the connection's writer when the body starts, after
// every read that brings data, and is cleared at its end; and the whole
// timeout costs one allocation per request with a body (the request copy
// with its wrapped body), however many reads: setting a deadline
// allocates nothing.
func TestClientBodyTimeoutCost(t *testing.T) {
	data := []byte(strings.Repeat("x", 4096))
	buf := make([]byte, 1024) // four reads with data, one EOF
	drain := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for {
			if _, err := r.Body.Read(buf); err != nil {
				return
			}
		}
	})
	br := bytes.NewReader(nil)
	req := httptest.NewRequest("POST", "/", io.NopCloser(br))
	req.ContentLength = int64(len(data))
	dw := &deadlineWriter{discardWriter: discardWriter{h: http.Header{}}}
	w := unwrapWriter{dw}
	run := func(h http.Handler) func() {
		return func() { br.Reset(data); h.ServeHTTP(w, req) }
	}
	run(gateway.ClientBodyTimeout(drain, time.Minute))()
	assert.Equal(t, 1+4, dw.set, "at the start, then after each read with data")
	assert.Equal(t, 1, dw.cleared, "cleared at the end of the body")

	bare := testing.AllocsPerRun(100, run(drain))
	wrapped := testing.AllocsPerRun(100, run(gateway.ClientBodyTimeout(drain, time.Minute)))
	assert.Equal(t, 1.0, wrapped-bare, "one allocation per request with a body")
}
