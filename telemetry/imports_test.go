package telemetry

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCoreImportsNoOpenTelemetry: the core packages' import graph holds no
// OpenTelemetry, so that programs that do not import this package compile
// none of it.
func TestCoreImportsNoOpenTelemetry(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	core := []string{
		"github.com/proxykit/proxykit",
		"github.com/proxykit/proxykit/gateway/...",
		"github.com/proxykit/proxykit/retry",
		"github.com/proxykit/proxykit/breaker",
		"github.com/proxykit/proxykit/errorpage",
	}
	out, err := exec.Command("go", append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, core...)...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/proxykit/proxykit/gateway")
	for _, d := range deps {
		assert.False(t, strings.Contains(d, "opentelemetry") || strings.Contains(d, "prometheus"), "a core package imports %s", d)
	}
}
