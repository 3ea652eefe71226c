package gateway_test

import (
	"log/slog"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestFailureLogLevels: only faults warn; what a client or an operator
// caused, and load shedding, do not.
func TestFailureLogLevels(t *testing.T) {
	for class, level := range map[gateway.Class]string{
		gateway.ClassRefused:     "WARN",
		gateway.ClassOpen:        "WARN",
		gateway.ClassClientBody:  "INFO",
		gateway.ClassOverloaded:  "INFO",
		gateway.ClassCanceled:    "DEBUG",
		gateway.ClassMaintenance: "DEBUG",
	} {
		var buf gatewaytest.SafeBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		gateway.LogFailure(logger, httptest.NewRequest("GET", "/", nil), gateway.NewFailure(class, "10.0.0.5:80", nil), 0)
		assert.True(t, strings.HasPrefix(strings.SplitN(buf.String(), "level=", 2)[1], level), "%s: %s", class, buf.String())
	}
}

// TestUpstreamName: host:port, the scheme's default port filled in, IPv6
// literals bracketed; a name with a port costs no allocation.
func TestUpstreamName(t *testing.T) {
	for in, want := range map[string]string{
		"http://svc":             "svc:80",
		"https://svc":            "svc:443",
		"http://svc:8080":        "svc:8080",
		"http://10.0.0.5":        "10.0.0.5:80",
		"http://10.0.0.5:81":     "10.0.0.5:81",
		"http://[::1]":           "[::1]:80",
		"https://[::1]:8443":     "[::1]:8443",
		"http://[fe80::1%25en0]": "[fe80::1%en0]:80",
		// One server, one name, however the URL spells it.
		"http://LOCALHOST:19001":              "localhost:19001",
		"http://LocalHost.:19001":             "localhost:19001",
		"http://localhost.":                   "localhost:80",
		"http://localhost:019001":             "localhost:19001",
		"https://Svc.Example.COM":             "svc.example.com:443",
		"http://[::ffff:127.0.0.1]:19001":     "127.0.0.1:19001",
		"http://[::FFFF:7f00:1]:19001":        "127.0.0.1:19001",
		"http://[0:0:0:0:0:0:0:1]:8080":       "[::1]:8080",
		"http://[2001:DB8::1]":                "[2001:db8::1]:80",
		"http://127.0.0.1:00080":              "127.0.0.1:80",
		"http://svc:0":                        "svc:0",
		"http://[::ffff:127.0.0.1]":           "127.0.0.1:80",
		"https://[::ffff:10.0.0.5]:0443/path": "10.0.0.5:443",
	} {
		u, err := url.Parse(in)
		if assert.NoError(t, err, in) {
			got := gateway.UpstreamName(u)
			assert.Equal(t, want, got, in)
			again := gateway.UpstreamName(&url.URL{Scheme: u.Scheme, Host: got})
			assert.Equal(t, got, again, "%s: a canonical name is its own name", in)
		}
	}
}

// TestUpstreamNameAllocs: an already-canonical name costs no allocation,
// so that naming the upstream of every request is free. Counted without
// the race detector, whose instrumentation allocates on its own.
func TestUpstreamNameAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are inflated by the race detector; BenchmarkUpstreamName reports them")
	}
	for _, in := range []string{"http://svc:8080/x", "http://10.0.0.5:80", "https://[::1]:8443", "http://[2001:db8::1]:80"} {
		u, _ := url.Parse(in)
		assert.Zero(t, testing.AllocsPerRun(100, func() { _ = gateway.UpstreamName(u) }), in)
	}
}

// BenchmarkUpstreamName: the cost of naming an upstream, canonical (the
// request path's case: 0 allocations) and not.
func BenchmarkUpstreamName(b *testing.B) {
	for _, in := range []string{"http://svc:8080", "https://[2001:db8::1]:8443", "http://svc", "http://LOCALHOST:019001"} {
		u, _ := url.Parse(in)
		b.Run(u.Host, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = gateway.UpstreamName(u)
			}
		})
	}
}
