package loadgen

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunCountsWhatClientsSaw(t *testing.T) {
	var ledger Ledger
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ledger.Observe(r)
		if r.Method == http.MethodPost {
			ledger.Observe(r) // pretend the POST arrived twice
		}
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Header.Get(LoadIDHeader) == "3" {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, `{"class":"refused","status":502}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	r := Run(context.Background(), srv.URL, Options{Concurrency: 4, Duration: 5 * time.Second, MaxRequests: 100, PostRatio: 0.1})
	require.Equal(t, 100, r.Requests)
	assert.Equal(t, 99, r.Succeeded)
	assert.Equal(t, map[string]int{"refused": 1}, r.Failures)
	assert.Equal(t, 99, r.ByStatus[204])
	assert.Len(t, r.Latencies, 100)
	assert.LessOrEqual(t, r.Percentile(50), r.Percentile(99))
	assert.Equal(t, r.Latencies[99], r.Max())
	assert.InDelta(t, 99.0, r.SuccessRate(), 0.001)
	assert.Equal(t, 10, ledger.Duplicates(), "10% of 100 are POSTs, each seen twice")
	assert.EqualValues(t, 110, ledger.Total())
	row := Row{Result: r, Upstream: ledger.Total()}
	assert.InDelta(t, 1.1, row.Amplification(), 0.001)
}

// TestRunOpenKeepsItsSchedule: an open-loop run sends every stream's
// requests on schedule even while earlier ones are still unanswered (a
// slow route does not slow the other), and records each one's outcome.
func TestRunOpenKeepsItsSchedule(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"class":"open","status":503}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	for _, poisson := range []bool{false, true} {
		res := RunOpen(context.Background(), srv.URL, OpenOptions{
			Streams:  []Stream{{Path: "/slow", Rate: 20}, {Path: "/fast", Rate: 50}},
			Duration: 500 * time.Millisecond,
			Poisson:  poisson, Seed: 7,
		})
		r := res.Result()
		var slow, fast int
		for _, s := range res.Samples {
			require.False(t, s.Start.Before(res.Start), "due before the start")
			require.False(t, s.End.Before(s.Start))
			switch s.Stream {
			case 0:
				slow++
				assert.Equal(t, "open", s.Class)
				assert.GreaterOrEqual(t, s.End.Sub(s.Start), 300*time.Millisecond)
			case 1:
				fast++
				assert.True(t, s.OK())
			}
		}
		if !poisson {
			assert.Equal(t, 10, slow, "every 50 ms for 500 ms")
			assert.Equal(t, 25, fast, "every 20 ms for 500 ms")
		} else {
			assert.InDelta(t, 10, slow, 9, "a Poisson process of 20/s over 0.5 s")
			assert.InDelta(t, 25, fast, 20)
		}
		assert.Equal(t, slow+fast, r.Requests)
		assert.Equal(t, fast, r.Succeeded)
		assert.Equal(t, map[string]int{"open": slow}, r.Failures)
		assert.Len(t, r.Latencies, r.Requests)
		assert.Greater(t, r.Elapsed, 300*time.Millisecond)
	}
}

// TestRunOpenSameSeedSameSchedule: the Poisson schedule is a function of
// the seed, so two stacks compared in one run meet the same arrivals.
func TestRunOpenSameSeedSameSchedule(t *testing.T) {
	o := OpenOptions{Poisson: true, Seed: 42}
	a := o.schedule(0, Stream{Rate: 400}, time.Second)
	b := o.schedule(0, Stream{Rate: 400}, time.Second)
	assert.Equal(t, a, b)
	assert.InDelta(t, 400, len(a), 80)
	assert.NotEqual(t, a, o.schedule(1, Stream{Rate: 400}, time.Second), "streams differ")
}

// TestOpenFigures: the recovery figures read the samples by time.
func TestOpenFigures(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	res := OpenResult{Start: t0, Samples: []Sample{
		{Stream: 0, Start: at(0), End: at(1), Status: 200},
		{Stream: 0, Start: at(100), End: at(101), Status: 502, Class: "refused"},
		{Stream: 1, Start: at(200), End: at(1300), Status: 200}, // sent during the outage, served after
		{Stream: 0, Start: at(1100), End: at(1102), Status: 503, Class: "no_upstream"},
		{Stream: 0, Start: at(1150), End: at(1150), Class: "dropped"},
		{Stream: 1, Start: at(1200), End: at(1203), Status: 200},
	}}
	d, ok := res.FirstSuccessAfter(at(1000))
	require.True(t, ok)
	assert.Equal(t, 203*time.Millisecond, d, "the first success completed after the return")
	_, ok = res.FirstSuccessAfter(at(1400))
	assert.False(t, ok)

	served, total := res.Served(at(1000), at(2000), nil)
	assert.Equal(t, 1, served)
	assert.Equal(t, 3, total, "by the time the request was due")
	assert.InDelta(t, 100.0/3, res.ServedRate(at(1000), at(2000), nil), 1e-9)
	assert.InDelta(t, 100, res.ServedRate(t0, at(2000), func(s int) bool { return s == 1 }), 1e-9)
	assert.True(t, math.IsNaN(res.ServedRate(at(5000), at(6000), nil)))

	r := res.Result()
	assert.Equal(t, 6, r.Requests)
	assert.Equal(t, 3, r.Succeeded)
	assert.Equal(t, map[string]int{"refused": 1, "no_upstream": 1, "dropped": 1}, r.Failures)
	assert.Len(t, r.Latencies, 5, "a dropped request has no latency")
	assert.Equal(t, 1300*time.Millisecond, r.Elapsed)
}

// TestTableFigures: the figure columns appear when a row has figures, "-"
// where a figure does not apply, "never" for no success.
func TestTableFigures(t *testing.T) {
	var plain, mixed, md strings.Builder
	rows := []Row{{Scenario: "happy", Stack: "bare"}}
	PrintTable(&plain, rows)
	assert.NotContains(t, plain.String(), "first 200", "no figure columns without figures")

	f := NoFigures()
	f.FirstOK, f.ServedAfter = math.Inf(1), 0
	g := NoFigures()
	g.FirstOK, g.ServedAfter, g.ProbeRate = 2.5, 100, 0.25
	rows = append(rows, Row{Scenario: "restart1", Stack: "proxykit", Figures: f}, Row{Scenario: "restart1", Stack: "bare", Figures: g})
	PrintTable(&mixed, rows)
	lines := strings.Split(strings.TrimSpace(mixed.String()), "\n")
	require.Len(t, lines, 4)
	assert.Contains(t, lines[0], "first 200")
	assert.Contains(t, lines[2], "never")
	assert.Contains(t, lines[2], "0.0%")
	assert.Contains(t, lines[3], "2.5ms")
	assert.Contains(t, lines[3], "100.0%")
	assert.Contains(t, lines[3], "0.2", "probe/s")
	PrintMarkdown(&md, rows)
	for _, l := range strings.Split(strings.TrimSpace(md.String()), "\n") {
		assert.Equal(t, strings.Count(strings.Split(md.String(), "\n")[0], "|"), strings.Count(l, "|"), "every Markdown row has every column: %s", l)
	}
}
