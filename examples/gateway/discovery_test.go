package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/status"
)

// TestDiscoveryFlags: -upstream srv+http://… with -resolver serves each
// SRV address as a host, and the status view shows where each came from.
func TestDiscoveryFlags(t *testing.T) {
	zone := gatewaytest.NewZone()
	defer zone.Close()
	var recs []gatewaytest.SRV
	for range 2 {
		up := gatewaytest.NewHealthy(nil)
		defer up.Close()
		u, err := url.Parse(up.URL)
		require.NoError(t, err)
		port, err := strconv.Atoi(u.Port())
		require.NoError(t, err)
		recs = append(recs, gatewaytest.SRV{Target: "lo.test", Port: uint16(port)})
	}
	zone.SetAddrs("lo.test", netip.MustParseAddr("127.0.0.1"))
	zone.SetSRV("_http._tcp.web.test", recs...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &gatewaytest.SafeBuffer{}
	errs := &gatewaytest.SafeBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0",
			"-upstream", "srv+http://_http._tcp.web.test", "-resolver", zone.Addr, "-dns-refresh", "200ms"}, out, errs)
	}()
	var base, adminURL string
	require.Eventually(t, func() bool {
		for _, l := range strings.Split(out.String(), "\n") {
			if a, ok := strings.CutPrefix(l, "status view on "); ok {
				adminURL = a
			}
		}
		if m := listening.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
		}
		return adminURL != "" && base != ""
	}, 10*time.Second, 10*time.Millisecond)

	for range 6 {
		res, err := http.Get(base + "/")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode)
	}
	res, err := http.Get(adminURL + "/?format=json")
	require.NoError(t, err)
	var rep status.Report
	require.NoError(t, json.NewDecoder(res.Body).Decode(&rep))
	res.Body.Close()
	require.Len(t, rep.Upstreams, 2)
	assert.Equal(t, "srv+http://_http._tcp.web.test", rep.Upstreams[0].Source)
	require.NotNil(t, rep.Discovery)
	assert.Equal(t, 2, rep.Discovery.Hosts)
	assert.Contains(t, errs.String(), "upstream set changed")
	cancel()
	require.NoError(t, <-done)

	var sink gatewaytest.SafeBuffer
	err = run(context.Background(), []string{"-upstream", "dns+http://bad..name:80"}, &sink, &sink)
	require.ErrorContains(t, err, "invalid DNS name")
}
