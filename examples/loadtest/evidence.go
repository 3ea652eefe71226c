package main

// The evidence scenarios: healthy traffic that looks unusual, where a
// protection that charges the host for what the client or the gateway
// itself caused becomes the outage. A slow-moving upload is the client's
// pace; a wait for a free connection under MaxConnsPerHost is the
// gateway's own limit. Neither may take a healthy host out.

import (
	"context"
	"io"
	"log"
	"log/slog"
	"math"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/proxykit/proxykit"
	"github.com/proxykit/proxykit/examples/internal/loadgen"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/retry"
)

// The shapes of the evidence scenarios.
const (
	// slowupload: 4 POSTs whose bodies move a byte every 300 ms for 3 s,
	// beside 50 GET/s for 4 s, on one upstream.
	uploads       = 4
	uploadBytes   = 10
	uploadEvery   = 300 * time.Millisecond
	uploadTry     = time.Second     // proxykit's per-try timeout; the bare proxy's response-header timeout
	uploadRequest = 2 * time.Second // kit-reqtimeout's RequestTimeout; the bare proxy's request deadline
	besideRate    = 50              // GET/s beside the uploads or streams
	besideLength  = 4 * time.Second

	// conncap: MaxConnsPerHost 8, all of them held by streams for 2 s,
	// GETs at 50/s from 0.2 s to 4 s, a 300 ms per-try timeout.
	capConns   = 8
	capStream  = 2 * time.Second
	capTry     = 300 * time.Millisecond
	capWarmup  = 200 * time.Millisecond
	capTimeout = 5 * time.Second // the clients'
)

// slowuploadStacks: the bare proxy (a 1 s response-header timeout, which
// starts once the request was written, body included), proxykit with a
// 1 s per-try timeout, and proxykit with a 2 s RequestTimeout (the bare
// proxy with the same 2 s deadline on each request beside it:
// bare-reqtimeout).
var (
	slowuploadStacks = []string{"bare", "proxykit", "bare-reqtimeout", "kit-reqtimeout"}
	conncapStacks    = []string{"bare", "proxykit"}
)

// evidenceJobs returns the slowupload and conncap jobs.
func evidenceJobs() []job {
	var mu sync.Mutex
	rows := map[string]loadgen.Row{} // slowupload's rows, for its check
	return []job{
		{name: "slowupload", stacks: slowuploadStacks, length: besideLength,
			one: func(ctx context.Context, stack string) (loadgen.Row, error) {
				row, err := runSlowUpload(ctx, stack)
				mu.Lock()
				rows[stack] = row
				mu.Unlock()
				return row, err
			},
			check: func(kit, _ loadgen.Row) string {
				mu.Lock()
				rt := rows["kit-reqtimeout"]
				mu.Unlock()
				return checkSlowUpload(kit, rt)
			}},
		{name: "conncap", stacks: conncapStacks, length: besideLength,
			one:   runConnCap,
			check: func(kit, _ loadgen.Row) string { return checkConnCap(kit) }},
	}
}

// checkSlowUpload: with a 1 s per-try timeout every upload and GET is
// served; with a 2 s request timeout the uploads are the client's
// (client_body) and nothing else fails: the host is never charged, so
// every GET beside them is served.
func checkSlowUpload(kit, rt loadgen.Row) string {
	var misses []string
	if kit.Requests > 0 {
		misses = append(misses, want(kit.SuccessRate() == 100, "every upload and GET served with a 1 s per-try timeout"))
	}
	if rt.Requests > 0 {
		misses = append(misses, want(rt.Failures["client_body"] == uploads && len(rt.Failures) == 1,
			"with a 2 s request timeout, the uploads answered as the client's (client_body) and every GET served"))
	}
	return join(misses...)
}

// checkConnCap: the waits are local saturation (overloaded), never the
// host's connect_timeout, and the host is never taken out for them (no
// open, no no_upstream): it serves every GET due once a connection is
// free.
func checkConnCap(kit loadgen.Row) string {
	if kit.Figures == nil {
		return ""
	}
	charged := kit.Failures["connect_timeout"] + kit.Failures["open"] + kit.Failures["no_upstream"]
	return join(want(kit.Failures["overloaded"] > 0 && charged == 0, "the waits answered as overloaded, never charged to the host"),
		want(kit.Figures.ServedAfter == 100, "every GET served once a connection is free"))
}

// buildEvidence returns the handler of an evidence scenario's stack over
// target: the bare proxy with base as its transport, or proxykit on base
// with ro and a request timeout; a bare-… stack bounds each request's
// context by requestTimeout, as proxykit's RequestTimeout does.
func buildEvidence(stack string, target *url.URL, base *http.Transport, ro retry.Options, requestTimeout time.Duration) (http.Handler, func(), error) {
	if strings.HasPrefix(stack, "bare") {
		var h http.Handler = &httputil.ReverseProxy{
			Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
			Transport:  base,
			ErrorLog:   log.New(io.Discard, "", 0),
			BufferPool: gateway.NewBufferPool(0, 0),
		}
		if requestTimeout > 0 {
			next := h
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
				defer cancel()
				next.ServeHTTP(w, r.WithContext(ctx))
			})
		}
		return h, base.CloseIdleConnections, nil
	}
	ro.Logger = slog.New(slog.DiscardHandler)
	st, err := proxykit.New(proxykit.Config{
		Upstreams:      []*url.URL{target},
		Transport:      base,
		Retry:          ro,
		RequestTimeout: requestTimeout,
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, nil, err
	}
	return st.Handler, st.Close, nil
}

// runSlowUpload runs slowupload through one stack.
func runSlowUpload(ctx context.Context, stack string) (loadgen.Row, error) {
	var ledger loadgen.Ledger
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	}))
	up.OnRequest = ledger.Observe
	defer up.Close()
	target, _ := url.Parse(up.URL)
	base := gateway.NewHTTPTransport()
	var ro retry.Options
	var reqTimeout time.Duration
	switch stack {
	case "bare":
		base.ResponseHeaderTimeout = uploadTry
	case "proxykit":
		ro.PerTryTimeout = uploadTry
	default: // bare-reqtimeout, kit-reqtimeout
		reqTimeout = uploadRequest
	}
	h, cleanup, err := buildEvidence(stack, target, base, ro, reqTimeout)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer cleanup()
	front, stop, err := serveOn(h)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()

	results := make(chan loadgen.Sample, uploads)
	start := time.Now()
	var wg sync.WaitGroup
	for range uploads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(250 * time.Millisecond) // among the GETs
			results <- upload(ctx, front+"/upload")
		}()
	}
	gets := loadgen.RunOpen(ctx, front, loadgen.OpenOptions{
		Streams:  []loadgen.Stream{{Path: "/get", Rate: besideRate}},
		Duration: besideLength, Timeout: capTimeout, Start: start,
	})
	wg.Wait()
	close(results)
	for s := range results {
		gets.Samples = append(gets.Samples, s)
	}
	return loadgen.Row{Scenario: "slowupload", Stack: stack, Result: gets.Result(), Upstream: ledger.Total()}, nil
}

// upload sends one slow-moving POST and records its outcome.
func upload(ctx context.Context, u string) loadgen.Sample {
	s := loadgen.Sample{Stream: 1, Start: time.Now()}
	defer func() { s.End = time.Now() }()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, gatewaytest.SlowBody(uploadBytes, uploadEvery))
	if err != nil {
		s.Class = "client_error"
		return s
	}
	req.ContentLength = uploadBytes
	req.Header.Set("Accept", "application/json")
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	res, err := client.Do(req)
	if err != nil {
		s.Class = "client_error" // the gateway ended the exchange mid-upload
		return s
	}
	defer res.Body.Close()
	s.Status = res.StatusCode
	if !s.OK() {
		s.Class = loadgen.ClassOf(res)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	s.End = time.Now()
	return s
}

// runConnCap runs conncap through one stack: the upstream's connections
// (MaxConnsPerHost 8) are all held by streams for 2 s while GETs arrive;
// the GETs due after the streams ended show whether the host was taken
// out for the wait.
func runConnCap(ctx context.Context, stack string) (loadgen.Row, error) {
	var ledger loadgen.Ledger
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			_, _ = io.WriteString(w, "ok\n")
			return
		}
		rc := http.NewResponseController(w)
		end := time.After(capStream)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			_, _ = io.WriteString(w, ".")
			_ = rc.Flush()
			select {
			case <-end:
				return
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	}))
	up.OnRequest = ledger.Observe
	defer up.Close()
	target, _ := url.Parse(up.URL)
	base := gateway.NewHTTPTransport()
	base.MaxConnsPerHost = capConns
	h, cleanup, err := buildEvidence(stack, target, base, retry.Options{PerTryTimeout: capTry}, 0)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer cleanup()
	front, stop, err := serveOn(h)
	if err != nil {
		return loadgen.Row{}, err
	}
	defer stop()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: capTimeout}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	streamsEnd := time.Now().Add(capStream)
	for range capConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, front+"/stream", nil)
			if err != nil {
				return
			}
			if res, err := client.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}()
	}
	time.Sleep(capWarmup) // the streams hold every connection
	gets := loadgen.RunOpen(ctx, front, loadgen.OpenOptions{
		Streams:  []loadgen.Stream{{Path: "/get", Rate: besideRate}},
		Duration: besideLength - capWarmup, Timeout: capTimeout,
	})
	wg.Wait()
	free := streamsEnd.Add(100 * time.Millisecond) // the streams' last bytes are read
	first := math.Inf(1)
	if d, ok := gets.FirstSuccessAfter(free); ok {
		first = float64(d) / float64(time.Millisecond)
	}
	fig := &loadgen.Figures{FirstOK: first, ServedAfter: gets.ServedRate(free, time.Now(), nil),
		ProbeRate: math.NaN(), Others: math.NaN()}
	return loadgen.Row{Scenario: "conncap", Stack: stack, Result: gets.Result(),
		Upstream: ledger.Total(), Figures: fig}, nil
}
