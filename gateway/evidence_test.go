package gateway_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// roundTripFailure sends req through gt and returns its Failure.
func roundTripFailure(t *testing.T, gt *gateway.Transport, req *http.Request) *gateway.Failure {
	t.Helper()
	res, err := gt.RoundTrip(req)
	if res != nil {
		res.Body.Close()
	}
	require.Error(t, err)
	var f *gateway.Failure
	require.True(t, errors.As(err, &f), "a *gateway.Failure: %v", err)
	return f
}

// TestDeadlineWhileBodyArrivesIsTheClients: a request whose deadline passes
// while the transport still waits on its body (a slow-moving upload) is
// the client's (client_body, 408), never counted as a failure; the same
// deadline passing while a body sent whole waits on the upstream is the
// upstream's timeout.
func TestDeadlineWhileBodyArrivesIsTheClients(t *testing.T) {
	up := gatewaytest.NewServer(gatewaytest.Hang)
	defer up.Close()
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	gt := &gateway.Transport{Base: base}

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", up.URL+"/upload", gatewaytest.SlowBody(20, 100*time.Millisecond))
	require.NoError(t, err)
	req.ContentLength = 20
	f := roundTripFailure(t, gt, req)
	assert.Equal(t, gateway.ClassClientBody, f.Class, "%v", f)
	assert.Equal(t, http.StatusRequestTimeout, f.StatusCode())
	assert.False(t, f.Class.CountsAsFailure())
	assert.Equal(t, up.Addr, f.Upstream)

	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	req, err = http.NewRequestWithContext(ctx, "POST", up.URL+"/upload", strings.NewReader("whole"))
	require.NoError(t, err)
	f = roundTripFailure(t, gt, req)
	assert.Equal(t, gateway.ClassTimeout, f.Class, "the body was sent: the upstream's wait (%v)", f)
	assert.True(t, f.Sent)

	// An upstream that does not read holds the upload up: once the socket
	// buffers are full (a few MiB on loopback), the transport waits on its
	// writes, not on the client.
	silent := gatewaytest.NewServer(gatewaytest.Silent)
	defer silent.Close()
	ctx, cancel = context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	req, err = http.NewRequestWithContext(ctx, "POST", silent.URL+"/upload", bytes.NewReader(make([]byte, 64<<20)))
	require.NoError(t, err)
	f = roundTripFailure(t, gt, req)
	assert.Equal(t, gateway.ClassTimeout, f.Class, "the upstream held the body up (%v)", f)
	assert.True(t, f.Class.CountsAsFailure())
}

// TestConnectionSlotWaitIsOverloaded: a request that waits for a
// connection slot (MaxConnsPerHost reached by a long stream) until its
// deadline is local saturation (overloaded, 503, not sent), not the
// host's connect_timeout; a dial that does not finish by the deadline
// still is the host's connect_timeout; and with a DialContext of the
// user's own, which does not tell dials apart, the wait stays a connect
// timeout.
func TestConnectionSlotWaitIsOverloaded(t *testing.T) {
	release := make(chan struct{})
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	defer up.Close()
	defer close(release)

	wait := func(t *testing.T, base *http.Transport) *gateway.Failure {
		t.Helper()
		base.MaxConnsPerHost = 1
		defer base.CloseIdleConnections()
		gt := &gateway.Transport{Base: base}
		stream, err := gt.RoundTrip(newGet(t, t.Context(), up.URL+"/stream"))
		require.NoError(t, err)
		defer stream.Body.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		f := roundTripFailure(t, gt, newGet(t, ctx, up.URL+"/ok"))
		assert.Less(t, time.Since(start), 2*time.Second, "ended at the deadline (10×)")
		return f
	}

	f := wait(t, gateway.NewHTTPTransport())
	assert.Equal(t, gateway.ClassOverloaded, f.Class, "%v", f)
	assert.Equal(t, http.StatusServiceUnavailable, f.StatusCode())
	assert.False(t, f.Sent)
	assert.False(t, f.Class.CountsAsFailure())
	assert.Equal(t, up.Addr, f.Upstream)
	assert.Contains(t, f.Error(), "MaxConnsPerHost")
	assert.Positive(t, f.RetryAfter, "503 with Retry-After")

	own := gateway.NewHTTPTransport()
	d := &net.Dialer{}
	own.DialContext = d.DialContext
	f = wait(t, own)
	assert.Equal(t, gateway.ClassConnectTimeout, f.Class, "a dialer that does not tell dials apart: %v", f)

	if runtime.GOOS != "linux" {
		return
	}
	hole := gatewaytest.NewBlackhole()
	defer hole.Close()
	base := gateway.NewHTTPTransport()
	defer base.CloseIdleConnections()
	gt := &gateway.Transport{Base: base}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	f = roundTripFailure(t, gt, newGet(t, ctx, hole.URL+"/"))
	assert.Equal(t, gateway.ClassConnectTimeout, f.Class, "a dial in progress at the deadline is the host's: %v", f)
	assert.True(t, f.Class.CountsAsFailure())
}

func newGet(t *testing.T, ctx context.Context, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	require.NoError(t, err)
	return req
}

// TestEveryClassHasAnOwner: docs/ARCHITECTURE.md says, for every class,
// whose evidence it is; a class added without its row fails here.
func TestEveryClassHasAnOwner(t *testing.T) {
	doc, err := os.ReadFile("../docs/ARCHITECTURE.md")
	require.NoError(t, err)
	owners := []string{"| host", "| route", "| client", "| local"}
	for _, c := range gateway.Classes() {
		row := ""
		for _, line := range strings.Split(string(doc), "\n") {
			if strings.HasPrefix(line, "| `"+c.String()+"` |") {
				row = line
				break
			}
		}
		if !assert.NotEmpty(t, row, "no row for %s in the owners table", c) {
			continue
		}
		cells := strings.Split(row, "|")
		require.Greater(t, len(cells), 3, row)
		owner := "| " + strings.TrimSpace(cells[3])
		found := false
		for _, o := range owners {
			found = found || strings.HasPrefix(owner, o)
		}
		assert.True(t, found, "%s: the owner is one of host, route, client, local: %q", c, cells[3])
	}
}
