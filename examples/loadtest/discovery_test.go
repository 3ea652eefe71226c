package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDiscoveryGroup(t *testing.T) {
	chosen, err := choose("discovery", append(jobs(3*time.Second, 1, defaultTimeline, defaultOverload, defaultStall), discJobs(defaultDisc)...))
	require.NoError(t, err)
	var names []string
	for _, j := range chosen {
		names = append(names, j.name)
	}
	assert.Equal(t, []string{"rolling", "scaleout", "scalein", "dnsdown", "refuse1of10", "churn"}, names)
}

// TestDNSDownScenario runs the dnsdown scenario, shortened: every request
// served from the last answer, one log line, the status view stale.
func TestDNSDownScenario(t *testing.T) {
	var out strings.Builder
	err := run(context.Background(), []string{"-scenario", "dnsdown", "-dns-down", "3s", "-discovery-rate", "100"}, &out, io.Discard)
	require.NoError(t, err)
	assert.Contains(t, out.String(), `proxykit late 0, 1 "discovery failed" lines, stale shown true`)
	assert.NotContains(t, out.String(), "dnsdown: missed")
}
