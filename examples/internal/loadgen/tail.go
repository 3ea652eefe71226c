package loadgen

import (
	"fmt"
	"io"
	"time"
)

// TailFigures are the figures of a tail-latency scenario (random
// stalls, hedged requests): the far tail the clients saw, the throughput,
// and what hedging did. The row's Upstream and Requests count the measured
// requests only, not the warm-up before them.
type TailFigures struct {
	// Throughput is the measured requests per second.
	Throughput float64
	// Hedging says whether the stack could hedge; the hedge counts are
	// those of the measured requests.
	Hedging bool
	// Hedges is how many hedges were sent, HedgesWon how many of them
	// answered first, HedgesDenied how many the retry budget refused.
	Hedges, HedgesWon, HedgesDenied int64
	// HedgeDelay is the hedge delay at the end of the run (0: still
	// warming up).
	HedgeDelay time.Duration
}

// printTail writes the tail figures of rows that have them, as a table of
// its own below the main one: p50, p99, p99.9, upstream requests per
// request, throughput, and the hedges.
func printTail(w io.Writer, rows []Row, markdown bool) {
	var any bool
	for _, r := range rows {
		any = any || r.Tail != nil
	}
	if !any {
		return
	}
	fmt.Fprintln(w)
	if markdown {
		fmt.Fprintln(w, "| scenario | stack | requests | success | p50 | p99 | p99.9 | upstream requests per request | requests/s | hedges sent | hedges won | hedge delay |")
		fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	} else {
		fmt.Fprintf(w, "%-18s %-12s %8s %9s %9s %9s %9s %7s %8s %7s %7s %9s\n", "scenario", "stack",
			"requests", "success", "p50", "p99", "p99.9", "up/req", "req/s", "hedges", "won", "delay")
	}
	for _, r := range rows {
		f := r.Tail
		if f == nil {
			continue
		}
		sent, won, delay := "-", "-", "-"
		if f.Hedging {
			sent, won = fmt.Sprint(f.Hedges), fmt.Sprint(f.HedgesWon)
			if f.HedgesDenied > 0 {
				sent += fmt.Sprintf(" (%d denied)", f.HedgesDenied)
			}
			delay = "warming up"
			if f.HedgeDelay > 0 {
				delay = round(f.HedgeDelay).String()
			}
		}
		if markdown {
			fmt.Fprintf(w, "| %s | %s | %d | %.2f%% | %s | %s | %s | %.3f | %.0f | %s | %s | %s |\n",
				r.Scenario, r.Stack, r.Requests, r.SuccessRate(), round(r.Percentile(50)), round(r.Percentile(99)),
				round(r.Percentile(99.9)), r.Amplification(), f.Throughput, sent, won, delay)
		} else {
			fmt.Fprintf(w, "%-18s %-12s %8d %8.2f%% %9s %9s %9s %7.3f %8.0f %7s %7s %9s\n",
				r.Scenario, r.Stack, r.Requests, r.SuccessRate(), round(r.Percentile(50)), round(r.Percentile(99)),
				round(r.Percentile(99.9)), r.Amplification(), f.Throughput, sent, won, delay)
		}
	}
}
