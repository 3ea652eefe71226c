package loadgen

import (
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// OverloadFigures are the figures of an overload scenario: how
// much of the offered load was served in time, and how fast the rest got
// its answer.
type OverloadFigures struct {
	// Goodput is the 200 responses complete within the run's Within, per
	// second of the schedule.
	Goodput float64
	// ServedP99 is the 99th percentile latency of the 200 responses, and
	// RestP99 that of every other outcome (503s, 504s, client errors).
	ServedP99, RestP99 time.Duration
	// Served and Rest count them; RestRetryAfter counts the rest that were
	// 503 responses with a Retry-After header.
	Served, Rest, RestRetryAfter int
}

// Overload computes the figures of r, whose schedule lasted over: a
// response counts toward goodput when it is a 200 complete within within
// of its request being due.
func (r OpenResult) Overload(within, over time.Duration) *OverloadFigures {
	var ok, rest []time.Duration
	f := &OverloadFigures{}
	good := 0
	for _, s := range r.Samples {
		d := s.End.Sub(s.Start)
		if s.Status == 200 {
			ok = append(ok, d)
			if d <= within {
				good++
			}
			continue
		}
		rest = append(rest, d)
		if s.Status == 503 && s.RetryAfter {
			f.RestRetryAfter++
		}
	}
	f.Served, f.Rest = len(ok), len(rest)
	if over > 0 {
		f.Goodput = float64(good) / over.Seconds()
	}
	f.ServedP99, f.RestP99 = percentile(ok, 99), percentile(rest, 99)
	return f
}

// percentile returns the p-th percentile of ds (sorted in place), 0 when
// empty.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(p/100*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// printOverload writes the overload figures of rows that have them, as a
// table of its own below the main one.
func printOverload(w io.Writer, rows []Row, markdown bool) {
	var any bool
	for _, r := range rows {
		any = any || r.Overload != nil
	}
	if !any {
		return
	}
	fmt.Fprintln(w)
	if markdown {
		fmt.Fprintln(w, "| scenario | stack | goodput (200 within 250 ms) | p99 of the 200s | p99 of the rest | rest: 503 + Retry-After |")
		fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
	} else {
		fmt.Fprintf(w, "%-18s %-12s %10s %10s %10s %14s\n", "scenario", "stack", "goodput/s", "p99 200", "p99 rest", "rest 503+RA")
	}
	for _, r := range rows {
		f := r.Overload
		if f == nil {
			continue
		}
		ra := "-"
		if f.Rest > 0 {
			ra = fmt.Sprintf("%d/%d", f.RestRetryAfter, f.Rest)
		}
		p99rest := "-"
		if f.Rest > 0 {
			p99rest = round(f.RestP99).String()
		}
		if markdown {
			fmt.Fprintf(w, "| %s | %s | %.0f/s | %s | %s | %s |\n", r.Scenario, r.Stack, f.Goodput, round(f.ServedP99), p99rest, ra)
		} else {
			fmt.Fprintf(w, "%-18s %-12s %10.0f %10s %10s %14s\n", r.Scenario, r.Stack,
				f.Goodput, round(f.ServedP99), p99rest, ra)
		}
	}
}
