package gateway_test

import (
	"log/slog"
	"net/http/httptest"
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
