// Package loadgen drives bounded HTTP load at a proxy on loopback and
// summarises what the clients saw: closed-loop (Run: a fixed number of
// clients, each sending its next request when the last one ended) or
// open-loop (RunOpen: requests on a fixed schedule, whatever the answers).
// The demo's tour and the load program share it.
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options shape a load run. Zero values take the defaults noted.
type Options struct {
	// Concurrency is the number of clients sending one request after
	// another. Default 16.
	Concurrency int
	// Duration bounds the run. Default 2 s.
	Duration time.Duration
	// MaxRequests bounds the run by count; 0 means no bound but Duration.
	MaxRequests int
	// PostRatio is the share of requests that are POSTs with a body, 0..1.
	PostRatio float64
	// BodySize is the POST body size in bytes. Default 1024.
	BodySize int
	// Timeout bounds each request at the client. Default 10 s.
	Timeout time.Duration
	// Progress, if set, is called about every 200 ms with the number of
	// requests finished so far.
	Progress func(done int)
}

func (o *Options) defaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Duration <= 0 {
		o.Duration = 2 * time.Second
	}
	if o.BodySize <= 0 {
		o.BodySize = 1024
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
}

// Result is what the clients saw.
type Result struct {
	Requests  int
	Succeeded int // 2xx and 3xx
	Elapsed   time.Duration
	// ByStatus counts responses by status; 0 counts transport errors.
	ByStatus map[int]int
	// Failures counts failed requests by failure class, read from
	// problem+json bodies; a failure without one is keyed by its status
	// ("502"), a client-side transport error by "client_error".
	Failures map[string]int
	// Latencies are sorted ascending.
	Latencies []time.Duration
}

// SuccessRate is Succeeded/Requests, in percent.
func (r Result) SuccessRate() float64 {
	if r.Requests == 0 {
		return 0
	}
	return 100 * float64(r.Succeeded) / float64(r.Requests)
}

// Percentile returns the p-th percentile latency (p in 0..100).
func (r Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(r.Latencies)))) - 1
	return r.Latencies[max(0, min(i, len(r.Latencies)-1))]
}

// Max returns the slowest latency.
func (r Result) Max() time.Duration { return r.Percentile(100) }

// LoadIDHeader carries a unique ID per client request, so that upstreams
// can tell a retry of the same request from a new one.
const LoadIDHeader = "X-Load-Id"

// Run sends load to url until opts.Duration passes, opts.MaxRequests were
// sent, or ctx ends, and returns what the clients saw.
func Run(ctx context.Context, url string, opts Options) Result {
	opts.defaults()
	client := &http.Client{
		Timeout: opts.Timeout,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: opts.Concurrency,
			DisableCompression:  true,
		},
	}
	defer client.CloseIdleConnections()
	body := bytes.Repeat([]byte("x"), opts.BodySize)
	ctx, cancel := context.WithTimeout(ctx, opts.Duration)
	defer cancel()

	var next atomic.Int64
	var done atomic.Int64
	type sample struct {
		status  int
		class   string
		latency time.Duration
	}
	results := make([][]sample, opts.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < opts.Concurrency; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for ctx.Err() == nil {
				n := int(next.Add(1))
				if opts.MaxRequests > 0 && n > opts.MaxRequests {
					return
				}
				method, rd := http.MethodGet, io.Reader(nil)
				if float64(n%100) < opts.PostRatio*100 {
					method, rd = http.MethodPost, bytes.NewReader(body)
				}
				req, _ := http.NewRequest(method, url, rd) // no ctx: let in-flight requests finish
				req.Header.Set(LoadIDHeader, strconv.Itoa(n))
				req.Header.Set("Accept", "application/json")
				t0 := time.Now()
				res, err := client.Do(req)
				s := sample{}
				if err != nil {
					s.class = "client_error"
				} else {
					s.status = res.StatusCode
					if res.StatusCode >= 400 {
						s.class = ClassOf(res)
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
				s.latency = time.Since(t0)
				results[c] = append(results[c], s)
				done.Add(1)
			}
		}(c)
	}
	if opts.Progress != nil {
		stop, stopped := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(stopped)
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					opts.Progress(int(done.Load()))
				case <-stop:
					return
				}
			}
		}()
		defer func() { close(stop); <-stopped }() // no Progress call after Run returns
	}
	wg.Wait()

	r := Result{Elapsed: time.Since(start), ByStatus: map[int]int{}, Failures: map[string]int{}}
	for _, rs := range results {
		for _, s := range rs {
			r.Requests++
			r.ByStatus[s.status]++
			if s.status >= 200 && s.status < 400 {
				r.Succeeded++
			} else {
				r.Failures[s.class]++
			}
			r.Latencies = append(r.Latencies, s.latency)
		}
	}
	slices.Sort(r.Latencies)
	return r
}

// ClassOf reads the failure class from a problem+json body, or falls back
// to the status.
func ClassOf(res *http.Response) string {
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/problem+json") {
		var p struct {
			Class string `json:"class"`
		}
		if json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&p) == nil && p.Class != "" {
			return p.Class
		}
	}
	return strconv.Itoa(res.StatusCode)
}

// Ledger counts the requests upstreams read, by load ID, to find
// non-idempotent requests delivered more than once. Use Observe as a
// gatewaytest.Server's OnRequest.
type Ledger struct {
	mu    sync.Mutex
	posts map[string]int
	total atomic.Int64
}

// Observe records one request read by an upstream.
func (l *Ledger) Observe(r *http.Request) {
	l.total.Add(1)
	if r.Method != http.MethodPost {
		return
	}
	id := r.Header.Get(LoadIDHeader)
	l.mu.Lock()
	if l.posts == nil {
		l.posts = map[string]int{}
	}
	l.posts[id]++
	l.mu.Unlock()
}

// Total returns how many requests the upstreams read.
func (l *Ledger) Total() int64 { return l.total.Load() }

// Duplicates returns how many POSTs reached an upstream more than once.
func (l *Ledger) Duplicates() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.posts {
		if c > 1 {
			n++
		}
	}
	return n
}

// Row is one line of a results table.
type Row struct {
	Scenario, Stack string
	Result
	// Upstream is how many requests the upstreams read.
	Upstream int64
	// Duplicates is how many POSTs reached an upstream twice.
	Duplicates int
	// Figures, if set, are a restart scenario's own figures; the tables
	// print them as extra columns when any row has them.
	Figures *Figures
	// Overload, if set, are an overload scenario's figures; the tables
	// print them in a table of their own below.
	Overload *OverloadFigures
	// Tail, if set, are a tail-latency scenario's figures (p99.9, hedges);
	// the tables print them in a table of their own below.
	Tail *TailFigures
}

// Amplification is upstream requests per client request.
func (r Row) Amplification() float64 {
	if r.Requests == 0 {
		return 0
	}
	return float64(r.Upstream) / float64(r.Requests)
}

// PrintTable writes rows as an aligned text table. When a row has
// Figures, the columns "first 200", "after", "probe/s" and "others" follow
// "dup" (see Figures), "-" where they do not apply.
func PrintTable(w io.Writer, rows []Row) {
	extra := hasFigures(rows)
	heads := ""
	if extra {
		h := make([]string, len(figureColumns))
		for i, c := range figureColumns {
			h[i] = c.head
		}
		heads = padCells(h, 9)
	}
	fmt.Fprintf(w, "%-18s %-10s %8s %9s %9s %9s %9s %7s %5s%s  %s\n",
		"scenario", "stack", "requests", "success", "p50", "p99", "max", "up/req", "dup", heads, "failures by class")
	for _, r := range rows {
		cells := ""
		if extra {
			cells = padCells(figureCells(r), 9)
		}
		fmt.Fprintf(w, "%-18s %-10s %8d %8.2f%% %9s %9s %9s %7.2f %5d%s  %s\n",
			r.Scenario, r.Stack, r.Requests, r.SuccessRate(),
			round(r.Percentile(50)), round(r.Percentile(99)), round(r.Max()),
			r.Amplification(), r.Duplicates, cells, formatCounts(r.Failures))
	}
	printOverload(w, rows, false)
	printTail(w, rows, false)
}

// PrintMarkdown writes rows as a Markdown table, with the Figures columns
// as PrintTable has them.
func PrintMarkdown(w io.Writer, rows []Row) {
	extra := hasFigures(rows)
	heads, align := "", ""
	if extra {
		heads = " first 200 after the return | served in the window after the return | probe connections/s at the dead host | other routes served |"
		align = strings.Repeat("---:|", len(figureColumns))
	}
	fmt.Fprintln(w, "| scenario | stack | requests | success | p50 | p99 | max | upstream/request | POSTs duplicated |"+heads+" failures by class |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|"+align+"---|")
	for _, r := range rows {
		cells := ""
		if extra {
			cells = " " + strings.Join(figureCells(r), " | ") + " |"
		}
		fmt.Fprintf(w, "| %s | %s | %d | %.2f%% | %s | %s | %s | %.2f | %d |%s %s |\n",
			r.Scenario, r.Stack, r.Requests, r.SuccessRate(),
			round(r.Percentile(50)), round(r.Percentile(99)), round(r.Max()),
			r.Amplification(), r.Duplicates, cells, formatCounts(r.Failures))
	}
	printOverload(w, rows, true)
	printTail(w, rows, true)
}

func formatCounts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Itoa(m[k])
	}
	return strings.Join(parts, " ")
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
