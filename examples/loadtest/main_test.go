package main

import (
	"context"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/examples/internal/loadgen"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestScenarios runs two short scenarios end to end: the table is printed,
// and proxykit meets the scenario's target (100% success with one of three
// upstreams refusing; no POST delivered twice with one resetting).
func TestScenarios(t *testing.T) {
	for _, sc := range []string{"refuse1", "reset20"} {
		var out, errs strings.Builder
		err := run(context.Background(), []string{"-scenario", sc, "-duration", "400ms", "-concurrency", "4"}, &out, &errs)
		require.NoError(t, err)
		text := out.String()
		assert.Contains(t, text, sc)
		assert.Contains(t, text, "proxykit")
		assert.NotContains(t, text, "missed:", text)
	}
}

func TestBadFlags(t *testing.T) {
	var out, errs strings.Builder
	for _, args := range [][]string{{"-scenario", "nope"}, {"-duration", "0s"}, {"-concurrency", "0"}, {"-x"},
		{"-rate", "0"}, {"-outage", "0s"}, {"-after", "-1s"}, {"-overload-rate", "0"},
		{"-stall-requests", "0"}, {"-stall-clients", "0"}, {"-scenario", "happy", "-stacks", "nope"}} {
		assert.Error(t, run(context.Background(), args, &out, &errs), "%v", args)
	}
}

// TestRestartScenarios runs the four restart scenarios on a short
// timeline through both stacks. The bare proxy is the control that shows
// the figures measure what they say (it serves again at once after a
// restart, sends a dead host its share of the load, and serves every
// healthy route); proxykit's figures are only required to be there:
// whether it meets its targets is the table's business, not this test's.
// The bare proxy's first 200 is bounded at 2 s, 10× the table's 200 ms,
// over a 2 s window after the return: a starved machine delays every
// answer by hundreds of milliseconds.
func TestRestartScenarios(t *testing.T) {
	tl := timeline{rate: 100, seed: 1, before: 200 * time.Millisecond, outage: 200 * time.Millisecond,
		settle: 300 * time.Millisecond, after: 2 * time.Second}
	chosen, err := choose("restart", jobs(time.Second, 4, tl, defaultOverload, defaultStall))
	require.NoError(t, err)
	require.Len(t, chosen, len(restartScenarios))
	rows := map[string]loadgen.Row{}
	for _, j := range chosen {
		for _, st := range []string{"bare", "proxykit"} {
			row, err := j.one(context.Background(), st)
			require.NoError(t, err, "%s/%s", j.name, st)
			require.NotNil(t, row.Figures, "%s/%s", j.name, st)
			assert.Positive(t, row.Requests, "%s/%s", j.name, st)
			rows[j.name+"/"+st] = row
			t.Logf("%s/%s: %d requests, %.1f%% served, figures %+v", j.name, st, row.Requests, row.SuccessRate(), *row.Figures)
		}
	}
	for _, name := range []string{"restart1", "restart3"} {
		bare, kit := rows[name+"/bare"].Figures, rows[name+"/proxykit"].Figures
		assert.Less(t, bare.FirstOK, 2000.0, "%s: the bare proxy serves again at once", name)
		assert.GreaterOrEqual(t, bare.ServedAfter, 90.0, name)
		assert.False(t, math.IsNaN(kit.FirstOK) || math.IsNaN(kit.ServedAfter), "%s: proxykit's figures are measured", name)
		assert.Less(t, rows[name+"/bare"].SuccessRate(), 100.0, "%s: the outage shows", name)
	}
	assert.Greater(t, rows["dead1/bare"].Figures.ProbeRate, 5.0, "the bare proxy keeps sending the dead host its share")
	assert.False(t, math.IsNaN(rows["dead1/proxykit"].Figures.ProbeRate))
	assert.Less(t, rows["dead1/bare"].SuccessRate(), 100.0, "the bare proxy's clients meet the dead host")
	assert.Equal(t, 100.0, rows["badroute/bare"].Figures.Others, "the bare proxy serves the healthy routes")
	assert.False(t, math.IsNaN(rows["badroute/proxykit"].Figures.Others))
	assert.Positive(t, rows["badroute/bare"].Failures["502"], "/bad answers 502")
}

// TestChoose: scenarios by name, comma-separated, or by group.
func TestChoose(t *testing.T) {
	all := jobs(time.Second, 1, defaultTimeline, defaultOverload, defaultStall)
	names := func(list string) []string {
		js, err := choose(list, all)
		require.NoError(t, err, list)
		var out []string
		for _, j := range js {
			out = append(out, j.name)
		}
		return out
	}
	assert.Equal(t, []string{"restart1", "restart3", "dead1", "badroute"}, names("restart"))
	assert.Equal(t, []string{"happy", "refuse1", "reset20", "slow1", "outage", "outage503"}, names("faults"))
	assert.Len(t, names("all"), len(scenarios)+len(restartScenarios)+6+len(healthyNames))
	assert.Equal(t, []string{"slowupload", "conncap"}, names("evidence"))
	assert.Equal(t, []string{"healthy-mix1", "healthy-mix3", "healthy-slower3", "healthy-attacker", "healthy-quiet"}, names("healthy"))
	assert.Equal(t, []string{"overload"}, names("overload"))
	assert.Equal(t, []string{"stall", "stall5", "nostall"}, names("hedging"))
	assert.Equal(t, []string{"refuse1", "badroute"}, names("badroute, refuse1"), "in table order")
	_, err := choose("restart1,nope", all)
	assert.ErrorContains(t, err, `"nope"`)
}

// TestKeepStacks: -stacks narrows each chosen scenario to the stacks named
// (scenarios that run none of them drop out), and a name that no chosen
// scenario runs is an error rather than an empty table.
func TestKeepStacks(t *testing.T) {
	all := jobs(time.Second, 1, defaultTimeline, defaultOverload, defaultStall)
	chosen, err := choose("happy,overload,dead1", all)
	require.NoError(t, err)
	kept, err := keepStacks(chosen, "proxykit, naive")
	require.NoError(t, err)
	got := map[string][]string{}
	for _, j := range kept {
		got[j.name] = j.stacks
	}
	assert.Equal(t, map[string][]string{"happy": {"naive", "proxykit"}, "overload": {"proxykit"}, "dead1": {"proxykit"}}, got)
	same, err := keepStacks(chosen, "")
	require.NoError(t, err)
	assert.Equal(t, len(chosen), len(same))
	_, err = keepStacks(chosen, "proxykit,kit-typo")
	assert.ErrorContains(t, err, `"kit-typo"`)
}

// TestCPUProfile: -cpuprofile writes a profile of the run, and -stacks
// leaves the other stacks out of the table.
func TestCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.cpu")
	var out, errs strings.Builder
	err := run(context.Background(), []string{"-scenario", "refuse1", "-stacks", "proxykit", "-duration", "200ms", "-concurrency", "2", "-cpuprofile", path}, &out, &errs)
	if f := flag.Lookup("test.cpuprofile"); f != nil && f.Value.String() != "" {
		// The test binary is being profiled (go test -cpuprofile): one
		// profile at a time, and the run must say so.
		assert.ErrorContains(t, err, "already in use")
		return
	}
	require.NoError(t, err)
	assert.Contains(t, out.String(), "proxykit")
	assert.NotContains(t, out.String(), "bare", "only the stack asked for")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Positive(t, fi.Size(), "a profile was written")
}

// TestFigureColumns: a run with a restart scenario prints the figure
// columns and the targets proxykit missed.
func TestFigureColumns(t *testing.T) {
	fig := loadgen.NoFigures()
	fig.FirstOK, fig.ServedAfter = math.Inf(1), 0
	fake := job{name: "restart1", one: func(_ context.Context, stack string) (loadgen.Row, error) {
		return loadgen.Row{Scenario: "restart1", Stack: stack, Figures: fig}, nil
	}, check: func(kit, _ loadgen.Row) string { return checkRestart(kit) }}
	var out, errs strings.Builder
	require.NoError(t, runJobs(context.Background(), []job{fake}, false, &out, &errs))
	text := out.String()
	assert.Contains(t, text, "first 200")
	assert.Contains(t, text, "never")
	assert.Contains(t, text, "restart1: missed: first 200 ≤ 250 ms after the return; ≥ 99% served after the return")
}

// TestOverloadScenario runs the overload scenario, scaled down (an
// upstream of 2 workers × 20 ms offered 150 GET/s for 1.5 s), through the
// bare proxy and proxykit: the bare proxy lets its served requests queue,
// proxykit sheds the excess with 503 + Retry-After and keeps them fast.
// Counted, not compared: on a starved machine the open-loop client falls
// behind, the bare proxy's queue may not build, and latency and goodput
// comparisons flip; those are the load test's figures (BENCHMARKS.md).
func TestOverloadScenario(t *testing.T) {
	sp := overloadSpec{rate: 150, length: 1500 * time.Millisecond, workers: 2, service: 20 * time.Millisecond,
		tryLimit: time.Second, within: 250 * time.Millisecond}
	bare, err := runOverload(context.Background(), "bare", sp)
	require.NoError(t, err)
	kit, err := runOverload(context.Background(), "kit-noretry", sp)
	require.NoError(t, err)
	require.NotNil(t, bare.Overload)
	require.NotNil(t, kit.Overload)
	t.Logf("bare %+v", *bare.Overload)
	t.Logf("kit  %+v", *kit.Overload)
	assert.Zero(t, bare.Failures["overloaded"])
	assert.Zero(t, bare.Overload.RestRetryAfter, "the bare proxy sheds nothing")
	assert.Positive(t, kit.Failures["overloaded"], "the excess was shed")
	assert.Positive(t, kit.Overload.Served, "and the rest served")
	assert.Equal(t, kit.Overload.Rest, kit.Overload.RestRetryAfter, "every shed answer is a 503 with Retry-After")

	var out, errs strings.Builder
	require.NoError(t, runJobs(context.Background(), []job{{name: "overload", stacks: []string{"kit-noretry"},
		one: func(ctx context.Context, stack string) (loadgen.Row, error) { return kit, nil }}}, false, &out, &errs))
	assert.Contains(t, out.String(), "goodput/s")
}

// TestStallScenario runs the stall scenarios on a short timeline (4
// clients, 600 measured requests, 3% of responses stalled by 100 ms; and
// stall5, 5% by 100 ms, which a delay learned from the stalls would stop
// hedging). The bare proxy is the control: its p99 is a stall. proxykit
// with hedging off waits them out too; with its defaults it hedges them (hedges sent and
// won, for at least a third of the stalls; a hedge delay learned in the
// warm-up). Without stalls, hedging adds next to no upstream requests.
func TestStallScenario(t *testing.T) {
	sp := stallSpec{clients: 4, requests: 600, warmup: 600, ratio: 0.03, delay: 100 * time.Millisecond}
	rows := map[string]loadgen.Row{}
	for _, j := range stallJobs(sp) {
		for _, st := range j.stacks {
			row, err := j.one(context.Background(), st)
			require.NoError(t, err, "%s/%s", j.name, st)
			require.NotNil(t, row.Tail, "%s/%s", j.name, st)
			assert.Equal(t, sp.requests, row.Requests, "%s/%s: the warm-up is not counted", j.name, st)
			assert.Equal(t, 100.0, row.SuccessRate(), "%s/%s", j.name, st)
			t.Logf("%s/%s: p50 %v p99 %v p99.9 %v, %.3f upstream/request, %+v", j.name, st,
				row.Percentile(50), row.Percentile(99), row.Percentile(99.9), row.Amplification(), *row.Tail)
			rows[j.name+"/"+st] = row
		}
	}
	bare, off, on := rows["stall/bare"], rows["stall/kit-nohedge"], rows["stall/proxykit"]
	assert.GreaterOrEqual(t, bare.Percentile(99), sp.delay, "the stalls show at the bare proxy's p99")
	assert.GreaterOrEqual(t, off.Percentile(99), sp.delay, "hedging off: the stalls show")
	assert.Zero(t, off.Tail.Hedges)
	assert.False(t, off.Tail.Hedging)
	assert.True(t, on.Tail.Hedging)
	assert.Positive(t, on.Tail.HedgeDelay, "the hedge delay was learned in the warm-up")
	assert.Positive(t, on.Tail.Hedges, "stalled requests were hedged")
	assert.Positive(t, on.Tail.HedgesWon, "and the hedges answered first")
	// What hedging does to the latency is the load test's to measure: on a
	// busy machine, under -race, a p99 bound is noise. What it did is not.
	assert.GreaterOrEqual(t, on.Tail.HedgesWon, int64(float64(sp.requests)*sp.ratio/3),
		"hedges answered first for at least a third of the expected stalls")
	assert.Greater(t, on.Amplification(), 1.0, "a hedge is an upstream request")
	assert.InDelta(t, 1.0, bare.Amplification(), 0.001)
	assert.LessOrEqual(t, rows["nostall/proxykit"].Amplification(), 1.10, "without stalls, few hedges")
	on5 := rows["stall5/proxykit"]
	assert.GreaterOrEqual(t, rows["stall5/bare"].Percentile(99), stall5.delay, "5%: the stalls show at the bare proxy's p99")
	// About 30 of the 600 requests stall: a delay that learned the stall
	// hedges next to none of them.
	assert.GreaterOrEqual(t, on5.Tail.HedgesWon, int64(10), "5%%: stalled requests were hedged, and the hedges answered first (delay %v)", on5.Tail.HedgeDelay)

	var out, errs strings.Builder
	require.NoError(t, runJobs(context.Background(), []job{{name: "stall", stacks: []string{"bare", "proxykit"},
		one:   func(_ context.Context, stack string) (loadgen.Row, error) { return rows["stall/"+stack], nil },
		check: func(kit, _ loadgen.Row) string { return checkStall(kit) }}}, true, &out, &errs))
	text := out.String()
	assert.Contains(t, text, "| p99.9 |")
	assert.Contains(t, text, "| hedges sent | hedges won |")
	assert.Contains(t, text, "| stall | bare |")
}
