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
	} {
		u, err := url.Parse(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, want, gateway.UpstreamName(u), in)
		}
	}
	u, _ := url.Parse("http://svc:8080/x")
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = gateway.UpstreamName(u) }))
}
