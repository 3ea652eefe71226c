package main

import (
	"context"
	"slices"
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

// TestDNSDownScenario runs the dnsdown scenario, shortened, through
// proxykit without its limiter (whose shedding on a busy machine's latency
// jumps is not this scenario's subject): every request served from the
// last answer, one log line, the status view stale. The outage (6 s) is 3x
// the lookup timeout that must pass before the first failure shows.
func TestDNSDownScenario(t *testing.T) {
	i := slices.IndexFunc(discScenarios, func(sc discScenario) bool { return sc.name == "dnsdown" })
	require.GreaterOrEqual(t, i, 0)
	sp := discSpec{rate: 100, refresh: defaultDisc.refresh, down: 6 * time.Second, churn: time.Second}
	var figs discFigures
	row, err := runDiscovery(context.Background(), discScenarios[i], "kit-nolimit", sp, &figs)
	require.NoError(t, err)
	assert.Equal(t, 100.0, row.SuccessRate())
	assert.EqualValues(t, 1, figs.failLogs, "logged once")
	assert.True(t, figs.staleShown, "the status view shows the answer stale")
	assert.Zero(t, figs.late)
}
