package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

type deciderFunc func(int, http.Header, *gateway.Failure) gateway.Decision

func (d deciderFunc) Decide(s int, h http.Header, f *gateway.Failure) gateway.Decision {
	return d(s, h, f)
}

var (
	passAll    = deciderFunc(func(int, http.Header, *gateway.Failure) gateway.Decision { return gateway.Pass })
	discardAll = deciderFunc(func(int, http.Header, *gateway.Failure) gateway.Decision { return gateway.Discard })
)

func TestInterceptorPass(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("X-Outer", "kept")
	var seen int
	i := gateway.NewInterceptor(rec, deciderFunc(func(s int, h http.Header, f *gateway.Failure) gateway.Decision {
		seen = s
		assert.Equal(t, "v", h.Get("X-Inner"), "the decider sees the handler's headers")
		return gateway.Pass
	}))
	i.Header().Set("X-Inner", "v")
	i.WriteHeader(http.StatusCreated)
	_, err := i.Write([]byte("body"))
	require.NoError(t, err)
	require.NoError(t, http.NewResponseController(i).Flush())

	assert.Equal(t, http.StatusCreated, seen)
	assert.Equal(t, http.StatusCreated, rec.Code)
	assert.Equal(t, "body", rec.Body.String())
	assert.True(t, rec.Flushed)
	assert.Equal(t, "kept", rec.Header().Get("X-Outer"))
	assert.Equal(t, "v", rec.Header().Get("X-Inner"))
	assert.True(t, i.Committed())
	assert.False(t, i.Discarded())
	assert.Equal(t, http.StatusCreated, i.Status())
}

func TestInterceptorDiscardRestoresHeaders(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("X-Outer", "kept")
	rec.Header().Add("Vary", "Accept")
	i := gateway.NewInterceptor(rec, discardAll)
	h := i.Header()
	h.Set("X-Inner", "dropped")
	h.Add("Vary", "Origin") // appends to a saved slice
	h.Set("X-Outer", "overwritten")
	i.WriteHeader(http.StatusBadGateway)
	n, err := i.Write([]byte("upstream body"))
	require.NoError(t, err, "discarded writes must succeed, or ReverseProxy aborts")
	assert.Equal(t, len("upstream body"), n)
	h.Set("Trailer-Ish", "late") // set after the decision, as trailers are
	i.Rollback()

	assert.False(t, rec.Flushed)
	assert.Zero(t, rec.Body.Len())
	assert.Equal(t, http.Header{"X-Outer": {"kept"}, "Vary": {"Accept"}}, rec.Header())
	assert.True(t, i.Discarded())
	assert.False(t, i.Committed())
	assert.NoError(t, http.NewResponseController(i).Flush(), "flush of a discarded response is a no-op")
}

func TestInterceptorManyHeadersSnapshot(t *testing.T) {
	rec := httptest.NewRecorder()
	for k := 0; k < 12; k++ { // more than the inline snapshot holds
		rec.Header().Set(fmt.Sprintf("X-Outer-%d", k), "v")
	}
	want := rec.Header().Clone()
	i := gateway.NewInterceptor(rec, discardAll)
	i.Header().Set("X-Inner", "x")
	i.Header().Del("X-Outer-3")
	i.WriteHeader(http.StatusServiceUnavailable)
	assert.Equal(t, want, rec.Header())
}

func TestInterceptorImplicit200(t *testing.T) {
	rec := httptest.NewRecorder()
	var seen int
	i := gateway.NewInterceptor(rec, deciderFunc(func(s int, _ http.Header, _ *gateway.Failure) gateway.Decision {
		seen = s
		return gateway.Pass
	}))
	_, _ = i.Write([]byte("x"))
	assert.Equal(t, http.StatusOK, seen)
	assert.Equal(t, http.StatusOK, rec.Code)
}

func TestInterceptorResetBetweenAttempts(t *testing.T) {
	rec := httptest.NewRecorder()
	var i gateway.Interceptor
	i.Reset(rec, discardAll)
	i.Header().Set("X-Attempt", "1")
	i.WriteHeader(http.StatusBadGateway)
	i.Header().Set("X-Late", "1")
	i.Reset(rec, passAll) // second attempt: the first one's headers are gone
	assert.Empty(t, rec.Header())
	i.Header().Set("X-Attempt", "2")
	i.WriteHeader(http.StatusOK)
	assert.Equal(t, "2", rec.Header().Get("X-Attempt"))
	assert.Equal(t, http.StatusOK, rec.Code)
}

func TestRecordFailureChain(t *testing.T) {
	rec := httptest.NewRecorder()
	outer := gateway.NewInterceptor(rec, discardAll)
	inner := gateway.NewInterceptor(outer, passAll)
	f := gateway.NewFailure(gateway.ClassRefused, "10.0.0.5:80", nil)
	require.True(t, gateway.RecordFailure(inner, f))
	inner.WriteHeader(f.StatusCode())
	assert.True(t, inner.Forwarded(), "on pass the failure travels outward")
	assert.Same(t, f, outer.Failure())
	assert.True(t, outer.Discarded())
	assert.False(t, gateway.RecordFailure(rec, f), "no recorder in a plain writer")
}

// TestInterceptorOverRealServer checks, over a real connection, that 1xx
// responses go through, that 101 + Hijack commit without a decision, and
// that http.ResponseController reaches the connection through Unwrap.
func TestInterceptorOverRealServer(t *testing.T) {
	var decided atomic.Int32
	var committed atomic.Bool
	var hijackStatus atomic.Int64
	d := deciderFunc(func(int, http.Header, *gateway.Failure) gateway.Decision {
		decided.Add(1)
		return gateway.Pass
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := gateway.NewInterceptor(w, d)
		rc := http.NewResponseController(i)
		require.NoError(t, rc.SetWriteDeadline(time.Now().Add(5*time.Second)))
		if r.URL.Path == "/upgrade" {
			c, brw, err := rc.Hijack()
			if !assert.NoError(t, err) {
				return
			}
			defer c.Close()
			committed.Store(i.Committed())
			hijackStatus.Store(int64(i.Status()))
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
			_ = brw.Flush()
			line, _ := brw.ReadString('\n')
			_, _ = brw.WriteString(line)
			_ = brw.Flush()
			return
		}
		i.Header().Set("Link", "</style.css>; rel=preload")
		i.WriteHeader(http.StatusEarlyHints)
		i.Header().Del("Link")
		_, _ = io.WriteString(i, "final")
	}))
	defer srv.Close()

	var got1xx atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			if code == http.StatusEarlyHints && h.Get("Link") != "" {
				got1xx.Add(1)
			}
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/hints", nil)
	res, err := srv.Client().Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, "final", string(body))
	assert.Equal(t, int32(1), got1xx.Load(), "103 reaches the client")
	assert.Equal(t, int32(1), decided.Load(), "1xx is not a decision")

	// Upgrade: raw client, since net/http's client would hand back a 101 body.
	u, _ := url.Parse(srv.URL)
	conn, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err = http.ReadResponse(br, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	_, _ = io.WriteString(conn, "ping\n")
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "ping\n", line)
	assert.True(t, committed.Load())
	assert.Equal(t, int64(http.StatusSwitchingProtocols), hijackStatus.Load(), "a hijack is an upgrade: 101")
	assert.Equal(t, int32(1), decided.Load(), "an upgrade is never offered to the decider")
}

// TestTransportKeepsOuterTrace: the instrumented Transport merges its hooks
// into a trace already on the context instead of replacing it, so the
// caller's hooks and ReverseProxy's 1xx forwarding keep working.
func TestTransportKeepsOuterTrace(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	tr := &gateway.Transport{Base: base}

	var wrote, conn atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		WroteHeaders: func() { wrote.Add(1) },
		GotConn:      func(httptrace.GotConnInfo) { conn.Add(1) },
	})
	req, _ := http.NewRequestWithContext(ctx, "GET", up.URL, nil)
	res, err := tr.RoundTrip(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, int32(1), wrote.Load(), "the caller's WroteHeaders still fires")
	assert.Equal(t, int32(1), conn.Load())
	assert.Same(t, req, res.Request)

	// Through a ReverseProxy, whose own trace forwards 1xx responses.
	u, _ := url.Parse(up.URL)
	front := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: tr,
	})
	defer front.Close()
	var hints atomic.Int32
	ctx = httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
			hints.Add(1)
			return nil
		},
	})
	req, _ = http.NewRequestWithContext(ctx, "GET", front.URL, nil)
	res, err = front.Client().Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, "ok", string(body))
	assert.Equal(t, int32(1), hints.Load(), "103 forwarded through the proxy")
}

// TestTransportSentFlag: a request that reached the upstream is marked
// sent, and the tracker reuse across many requests keeps flags separate.
func TestTransportSentFlag(t *testing.T) {
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	reset := gatewaytest.NewServer(gatewaytest.ResetAfterRequest)
	defer reset.Close()
	refused := gatewaytest.NewServer(gatewaytest.Refused)
	defer refused.Close()
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	tr := &gateway.Transport{Base: base}
	for n := 0; n < 20; n++ {
		res, err := tr.RoundTrip(mustRequest(t, "GET", ok.URL, nil))
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()

		_, err = tr.RoundTrip(mustRequest(t, "POST", refused.URL, strings.NewReader("x")))
		f := requireFailure(t, err)
		assert.Equal(t, gateway.ClassRefused, f.Class)
		assert.False(t, f.Sent, "a refused request was not sent (iteration %d)", n)

		_, err = tr.RoundTrip(mustRequest(t, "POST", reset.URL, strings.NewReader("x")))
		f = requireFailure(t, err)
		assert.Equal(t, gateway.ClassReset, f.Class)
		assert.True(t, f.Sent, "a request the upstream read was sent (iteration %d)", n)
	}
	assert.EqualValues(t, 20, reset.Requests())
}

func requireFailure(t *testing.T, err error) *gateway.Failure {
	t.Helper()
	f, ok := err.(*gateway.Failure)
	require.True(t, ok, "want *gateway.Failure, got %T %v", err, err)
	return f
}

func mustRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	return req
}
