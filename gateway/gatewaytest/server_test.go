package gatewaytest_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func client() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

func TestSwitchFaultsOnOnePort(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.Healthy)
	defer s.Close()
	c := client()
	get := func() (*http.Response, error) {
		res, err := c.Get(s.URL)
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		return res, err
	}
	res, err := get()
	require.NoError(t, err)
	assert.Equal(t, 200, res.StatusCode)
	assert.Equal(t, s.Addr, res.Header.Get("X-Upstream"))

	require.NoError(t, s.SetFault(gatewaytest.Refused))
	_, err = get()
	require.Error(t, err)
	assert.True(t, errors.Is(err, syscall.ECONNREFUSED), "refused at the TCP level: %v", err)

	require.NoError(t, s.SetFault(gatewaytest.Status))
	s.RetryAfter = "3"
	res, err = get()
	require.NoError(t, err, "the same port serves again")
	assert.Equal(t, 503, res.StatusCode)
	assert.Equal(t, "3", res.Header.Get("Retry-After"))

	require.NoError(t, s.SetFault(gatewaytest.ResetOnAccept))
	_, err = get()
	assert.Error(t, err)

	require.NoError(t, s.SetFault(gatewaytest.Healthy))
	_, err = get()
	require.NoError(t, err)
	assert.EqualValues(t, 3, s.Requests(), "healthy, status, healthy")
	assert.EqualValues(t, 4, s.Accepts())
	assert.Equal(t, gatewaytest.Healthy, s.Fault())
}

func TestRefusedFromStart(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.Refused)
	defer s.Close()
	_, err := net.DialTimeout("tcp", s.Addr, time.Second)
	assert.True(t, errors.Is(err, syscall.ECONNREFUSED), "%v", err)
	require.NoError(t, s.SetFault(gatewaytest.Healthy))
	res, err := client().Get(s.URL)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, 200, res.StatusCode)
}

func TestCloseEndsHangingRequests(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.Hang)
	done := make(chan error, 1)
	go func() {
		_, err := client().Get(s.URL)
		done <- err
	}()
	for s.Requests() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	s.Close()
	assert.Error(t, <-done)
	assert.Less(t, time.Since(start), 4*time.Second)
}

func TestSlowHeaders(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.SlowHeaders)
	defer s.Close()
	s.Delay = 50 * time.Millisecond
	start := time.Now()
	res, err := client().Get(s.URL)
	require.NoError(t, err)
	res.Body.Close()
	assert.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
}

func TestEmptyZoneAnswersNXDOMAIN(t *testing.T) {
	d := gatewaytest.NewZone()
	defer d.Close()
	_, err := d.Resolver().LookupHost(t.Context(), gatewaytest.UnresolvableHost)
	var dnsErr *net.DNSError
	require.ErrorAs(t, err, &dnsErr)
	assert.True(t, dnsErr.IsNotFound)
	assert.Positive(t, d.Queries())
}

func TestBlackholeDialTimesOut(t *testing.T) {
	b := gatewaytest.NewBlackhole()
	defer b.Close()
	_, err := net.DialTimeout("tcp", b.Addr, 150*time.Millisecond)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
}

func TestFlaky(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.Healthy)
	defer s.Close()
	require.NoError(t, s.SetFlaky(gatewaytest.Status, 0.3))
	assert.Error(t, s.SetFlaky(gatewaytest.Refused, 0.3))
	assert.Error(t, s.SetFlaky(gatewaytest.Status, 1.5))
	c := client()
	failed := 0
	const n = 400
	for i := 0; i < n; i++ {
		res, err := c.Get(s.URL)
		require.NoError(t, err)
		res.Body.Close()
		if res.StatusCode == 503 {
			failed++
		}
	}
	// 30% of 400: the binomial standard deviation is about 9; allow 5 of them.
	assert.InDelta(t, 120, failed, 46)
	require.NoError(t, s.SetFlaky(gatewaytest.Healthy, 0))
	res, err := c.Get(s.URL)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, 200, res.StatusCode)
}

// TestCloseAfterRequest: the request, body included, is read and counted,
// then the connection is closed cleanly (a FIN: the client reads EOF, not
// a reset) without a response.
func TestCloseAfterRequest(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.CloseAfterRequest)
	defer s.Close()
	assert.Equal(t, "close_after_request", gatewaytest.CloseAfterRequest.String())
	c, err := net.Dial("tcp", s.Addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	require.NoError(t, err)
	n, err := c.Read(make([]byte, 1))
	assert.Zero(t, n, "no response")
	assert.ErrorIs(t, err, io.EOF, "closed, not reset")
	assert.EqualValues(t, 1, s.Requests())
}
