package loadgen

import (
	"context"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Stream is one open-loop stream of GET requests: Rate requests a second to
// Path, evenly spaced, whether or not earlier ones have been answered.
type Stream struct {
	// Path is appended to the base URL; "" means "/".
	Path string
	// Rate is in requests per second; it must be positive.
	Rate float64
}

// OpenOptions shape an open-loop run. Zero values take the defaults noted.
type OpenOptions struct {
	// Streams are sent side by side; each keeps its own schedule.
	Streams []Stream
	// Duration bounds the schedule: no request starts after it. Requests
	// in flight then are waited for, up to Timeout. Default 2 s.
	Duration time.Duration
	// Timeout bounds each request at the client. Default 2 s.
	Timeout time.Duration
	// MaxInFlight bounds the requests in flight at once; a request due
	// while that many are in flight is not sent and counts as failed,
	// class "dropped". Default 2048.
	MaxInFlight int
	// Start, if set, is when the schedule starts (it must not be far in
	// the past); default: when RunOpen is called. A scenario that changes
	// faults on a timeline sets it, so that both share one clock.
	Start time.Time
	// Poisson spaces each stream's requests at random (exponential gaps,
	// a Poisson process of the stream's Rate), as many independent users
	// do, instead of evenly: bursts and lulls happen, as they do in
	// production, and a mechanism that counts failures in a row meets
	// them. Seed makes the schedule repeatable.
	Poisson bool
	Seed    uint64
}

// schedule returns the offsets from the start at which stream si's
// requests are due, up to d.
func (o *OpenOptions) schedule(si int, st Stream, d time.Duration) []time.Duration {
	if st.Rate <= 0 {
		return nil
	}
	var out []time.Duration
	if !o.Poisson {
		interval := float64(time.Second) / st.Rate
		for i := 0; ; i++ {
			at := time.Duration(float64(i) * interval)
			if at >= d {
				return out
			}
			out = append(out, at)
		}
	}
	rng := rand.New(rand.NewPCG(o.Seed, uint64(si)))
	at := 0.0
	for {
		at += rng.ExpFloat64() / st.Rate * float64(time.Second)
		if time.Duration(at) >= d {
			return out
		}
		out = append(out, time.Duration(at))
	}
}

// Sample is one request of an open-loop run.
type Sample struct {
	// Stream is the index of the request's stream in OpenOptions.Streams.
	Stream int
	// Start is when the request was due (and sent, unless dropped); End
	// when its response body was read, or it failed.
	Start, End time.Time
	// Status is the response status; 0 for no response.
	Status int
	// Class is "" for a success, else the failure class as in
	// Result.Failures ("dropped" for a request never sent).
	Class string
	// RetryAfter reports that the response carried a Retry-After header.
	RetryAfter bool
}

// OK reports whether the request succeeded (2xx or 3xx).
func (s Sample) OK() bool { return s.Status >= 200 && s.Status < 400 }

// OpenResult is what the clients of an open-loop run saw.
type OpenResult struct {
	// Start is when the schedule started.
	Start time.Time
	// Samples are every request due during the run, in no particular
	// order.
	Samples []Sample
}

// RunOpen sends the streams' requests to base (a URL without a trailing
// slash, e.g. "http://127.0.0.1:8080") on their schedules until
// opts.Duration passes or ctx ends, waits for the requests in flight, and
// returns every request's outcome. Unlike Run, the load does not slow down
// when the server does: what a stream of independent users does, and what a
// recovery figure needs (a closed loop stuck on slow failures sends fewer
// requests exactly when it matters).
func RunOpen(ctx context.Context, base string, opts OpenOptions) OpenResult {
	if opts.Duration <= 0 {
		opts.Duration = 2 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 2048
	}
	start := opts.Start
	if start.IsZero() {
		start = time.Now()
	}
	client := &http.Client{
		Timeout: opts.Timeout,
		Transport: &http.Transport{
			MaxIdleConns:        512,
			MaxIdleConnsPerHost: 512,
			DisableCompression:  true,
		},
	}
	defer client.CloseIdleConnections()

	var (
		inFlight atomic.Int64
		ids      atomic.Int64
		requests sync.WaitGroup
		streams  sync.WaitGroup
	)
	perStream := make([][]Sample, len(opts.Streams))
	for si, st := range opts.Streams {
		dues := opts.schedule(si, st, opts.Duration)
		samples := make([]Sample, len(dues))
		perStream[si] = samples
		url := base + st.Path
		if st.Path == "" {
			url = base + "/"
		}
		streams.Add(1)
		go func() {
			defer streams.Done()
			timer := time.NewTimer(0)
			defer timer.Stop()
			<-timer.C
			for i := range samples {
				due := start.Add(dues[i])
				if d := time.Until(due); d > 0 {
					timer.Reset(d)
					select {
					case <-timer.C:
					case <-ctx.Done():
					}
				}
				if ctx.Err() != nil {
					samples = samples[:i]
					perStream[si] = samples
					return
				}
				s := &samples[i]
				s.Stream, s.Start = si, due
				if inFlight.Add(1) > int64(opts.MaxInFlight) {
					inFlight.Add(-1)
					s.End, s.Class = due, "dropped"
					continue
				}
				requests.Add(1)
				go func() {
					defer requests.Done()
					defer inFlight.Add(-1)
					send(client, url, strconv.FormatInt(ids.Add(1), 10), s)
				}()
			}
		}()
	}
	streams.Wait()
	requests.Wait()

	r := OpenResult{Start: start}
	for _, ss := range perStream {
		r.Samples = append(r.Samples, ss...)
	}
	return r
}

// send makes one GET and records its outcome in s.
func send(client *http.Client, url, id string, s *Sample) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		s.End, s.Class = time.Now(), "client_error"
		return
	}
	req.Header.Set(LoadIDHeader, id)
	req.Header.Set("Accept", "application/json")
	res, err := client.Do(req)
	if err != nil {
		s.End, s.Class = time.Now(), "client_error"
		return
	}
	s.Status = res.StatusCode
	s.RetryAfter = res.Header.Get("Retry-After") != ""
	if res.StatusCode >= 400 {
		s.Class = ClassOf(res)
	}
	if _, err := io.Copy(io.Discard, res.Body); err != nil && s.OK() {
		s.Status, s.Class = 0, "client_error" // cut short: not served
	}
	res.Body.Close()
	s.End = time.Now()
}

// Result summarises the run as a closed-loop Run would: counts, failures
// by class, and latencies (dropped requests excluded from latencies).
func (r OpenResult) Result() Result {
	out := Result{ByStatus: map[int]int{}, Failures: map[string]int{}}
	var last time.Time
	for _, s := range r.Samples {
		out.Requests++
		out.ByStatus[s.Status]++
		if s.OK() {
			out.Succeeded++
		} else {
			out.Failures[s.Class]++
		}
		if s.Class != "dropped" {
			out.Latencies = append(out.Latencies, s.End.Sub(s.Start))
		}
		if s.End.After(last) {
			last = s.End
		}
	}
	if !last.IsZero() {
		out.Elapsed = last.Sub(r.Start)
	}
	slices.Sort(out.Latencies)
	return out
}

// Served returns how many requests due in [from, to) succeeded, of how
// many, among the streams whose index keep accepts (nil: every stream).
func (r OpenResult) Served(from, to time.Time, keep func(stream int) bool) (served, total int) {
	for _, s := range r.Samples {
		if s.Start.Before(from) || !s.Start.Before(to) || (keep != nil && !keep(s.Stream)) {
			continue
		}
		total++
		if s.OK() {
			served++
		}
	}
	return served, total
}

// ServedRate is Served in percent; NaN when no request was due.
func (r OpenResult) ServedRate(from, to time.Time, keep func(stream int) bool) float64 {
	served, total := r.Served(from, to, keep)
	if total == 0 {
		return math.NaN()
	}
	return 100 * float64(served) / float64(total)
}

// FirstSuccessAfter returns how long after t the first successful response
// was complete (whenever its request was sent), and false if none was.
func (r OpenResult) FirstSuccessAfter(t time.Time) (time.Duration, bool) {
	var first time.Time
	for _, s := range r.Samples {
		if s.OK() && !s.End.Before(t) && (first.IsZero() || s.End.Before(first)) {
			first = s.End
		}
	}
	if first.IsZero() {
		return 0, false
	}
	return first.Sub(t), true
}

// Figures are the figures of the restart scenarios, printed as extra
// columns of the table. A field that does not apply to a scenario is NaN.
type Figures struct {
	// FirstOK is the time from an upstream's return to the first success,
	// in milliseconds; +Inf when there was none within the watch window.
	FirstOK float64
	// ServedAfter is the share of requests due in the watch window after
	// the return that succeeded, in percent.
	ServedAfter float64
	// ProbeRate is the connections per second a dead host accepted once it
	// had been out for a while.
	ProbeRate float64
	// Others is the share of requests to routes other than a failing one
	// that succeeded, in percent.
	Others float64
}

// NoFigures returns Figures with every field NaN, to fill in.
func NoFigures() *Figures {
	nan := math.NaN()
	return &Figures{FirstOK: nan, ServedAfter: nan, ProbeRate: nan, Others: nan}
}

// figureColumns are the extra columns: header, and how each is printed.
var figureColumns = []struct {
	head string
	get  func(f *Figures) string
}{
	{"first 200", func(f *Figures) string { return formatMillis(f.FirstOK) }},
	{"after", func(f *Figures) string { return formatPercent(f.ServedAfter) }},
	{"probe/s", func(f *Figures) string { return formatFloat(f.ProbeRate, 1) }},
	{"others", func(f *Figures) string { return formatPercent(f.Others) }},
}

func hasFigures(rows []Row) bool {
	return slices.ContainsFunc(rows, func(r Row) bool { return r.Figures != nil })
}

func figureCells(r Row) []string {
	cells := make([]string, len(figureColumns))
	for i, c := range figureColumns {
		if r.Figures == nil {
			cells[i] = "-"
		} else {
			cells[i] = c.get(r.Figures)
		}
	}
	return cells
}

func formatMillis(ms float64) string {
	switch {
	case math.IsNaN(ms):
		return "-"
	case math.IsInf(ms, 1):
		return "never"
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
}

func formatPercent(p float64) string {
	if math.IsNaN(p) {
		return "-"
	}
	return strconv.FormatFloat(p, 'f', 1, 64) + "%"
}

func formatFloat(v float64, prec int) string {
	if math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', prec, 64)
}

// padCells left-pads cells to width w each, space-separated.
func padCells(cells []string, w int) string {
	var b strings.Builder
	for _, c := range cells {
		b.WriteByte(' ')
		b.WriteString(strings.Repeat(" ", max(0, w-len(c))))
		b.WriteString(c)
	}
	return b.String()
}
