package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type buffer struct{ strings.Builder }

// TestTour runs a short tour on free ports and checks that proxykit beats
// the bare proxy on the same upstreams.
func TestTour(t *testing.T) {
	var out buffer
	err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0",
		"-exit-after-tour", "-requests", "90"}, &out)
	require.NoError(t, err)
	text := out.String()
	m := regexp.MustCompile(`success\s+([0-9.]+)%\s+([0-9.]+)%`).FindStringSubmatch(text)
	require.NotNil(t, m, text)
	bare, _ := strconv.ParseFloat(m[1], 64)
	kit, _ := strconv.ParseFloat(m[2], 64)
	assert.Less(t, bare, 90.0, "a third of the bare proxy's requests go to the dead upstream")
	assert.Greater(t, kit, bare)
	assert.GreaterOrEqual(t, kit, 95.0)
	assert.Regexp(t, `failures by class\s+502=\d+`, text, "the bare proxy's failures are opaque 502s")
}

func TestBadFlags(t *testing.T) {
	var out buffer
	assert.Error(t, run(context.Background(), []string{"-requests", "0"}, &out))
	assert.Error(t, run(context.Background(), []string{"-bogus"}, &out))
}
