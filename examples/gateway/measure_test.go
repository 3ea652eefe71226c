package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestMeasureHostile measures hostile clients' cost against the built
// examples/gateway binary, run as a subprocess on loopback: the gateway
// process's RSS (VmRSS, VmHWM from /proc/PID/status) before and during
// each attack, and what each attack does:
//
//  1. 100 chunked PUTs that send 1 MiB of body, then stall with the
//     connection open: RSS, upstream connections held, and whether and when
//     they end (408 after the client-body idle timeout, 30 s; there is no
//     flag for it, so this waits once, ~36 s).
//  2. 20 concurrent requests with 70,000 small header fields each: RSS and
//     the status the clients get (431 with a 64 KiB header limit).
//  3. 200 concurrent GETs to an upstream that never answers: upstream
//     connections open (counted in /proc/net/tcp at the upstream's port),
//     RSS, and whether they are released at the transport's response-header
//     timeout (30 s): one run of ~37 s.
//
// Each attack gets a fresh gateway process, so VmHWM is the attack's peak.
// If PROXYKIT_MEASURE_COMPARE names a checkout of the
// repository, its examples/gateway is built and attacked the same way, at
// the same time, for comparison, e.g.
//
//	git worktree add ../proxykit-compare <commit>
//
// Not a check: it runs only when asked (Linux only), and takes about a
// minute and a half.
//
//	PROXYKIT_MEASURE=1 go test -run TestMeasureHostile -v -timeout 10m ./examples/gateway/
func TestMeasureHostile(t *testing.T) {
	if os.Getenv("PROXYKIT_MEASURE") != "1" {
		t.Skip("set PROXYKIT_MEASURE=1 to measure")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc: Linux only")
	}
	dir := t.TempDir()
	builds := []*mBuild{{name: "this", src: "."}}
	if pre := os.Getenv("PROXYKIT_MEASURE_COMPARE"); pre == "" {
		t.Log("PROXYKIT_MEASURE_COMPARE unset: measuring this build only")
	} else if _, err := os.Stat(filepath.Join(pre, "examples", "gateway", "main.go")); err == nil {
		builds = append([]*mBuild{{name: "compare", src: filepath.Join(pre, "examples", "gateway")}}, builds...)
	} else {
		t.Logf("no checkout at %s: measuring this build only", pre)
	}
	t0 := time.Now()
	mEach(builds, func(b *mBuild) {
		b.bin = filepath.Join(dir, "gateway-"+b.name)
		cmd := exec.Command("go", "build", "-o", b.bin, ".")
		cmd.Dir = b.src
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building %s: %v: %s", b.name, err, out)
			return
		}
		help, _ := exec.Command(b.bin, "-help").CombinedOutput()
		b.bodyFlag = regexp.MustCompile(`(?i)-\S*body\S*`).FindString(string(help))
	})
	for _, b := range builds {
		require.NoError(t, b.err)
	}
	t.Logf("built %d gateway(s) in %v", len(builds), time.Since(t0).Round(time.Millisecond))
	for _, b := range builds {
		if b.bodyFlag == "" {
			t.Logf("%s: -help has no client-body timeout flag: the stack's default applies", b.name)
		} else {
			t.Logf("%s: -help has %s (not used: defaults measured)", b.name, b.bodyFlag)
		}
	}

	for _, a := range []struct {
		name string
		run  func(t *testing.T, b *mBuild, dir string) []mRow
	}{
		{"1 stalled chunked PUTs", mStalledPUTs},
		{"2 huge headers", mHugeHeaders},
		{"3 hanging upstream", mHangingUpstream},
	} {
		start := time.Now()
		mEach(builds, func(b *mBuild) { b.rows = append(b.rows, a.run(t, b, dir)...) })
		t.Logf("attack %s: %v", a.name, time.Since(start).Round(time.Millisecond))
	}

	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 2, 8, 2, ' ', 0)
	fmt.Fprint(tw, "metric")
	for _, b := range builds {
		fmt.Fprintf(tw, "\t%s", b.name)
	}
	fmt.Fprintln(tw)
	var metrics []string
	values := map[string]map[string]string{}
	for _, b := range builds {
		for _, r := range b.rows {
			if values[r.metric] == nil {
				values[r.metric] = map[string]string{}
				metrics = append(metrics, r.metric)
			}
			values[r.metric][b.name] = r.value
		}
	}
	for _, m := range metrics {
		fmt.Fprint(tw, m)
		for _, b := range builds {
			v := values[m][b.name]
			if v == "" {
				v = "?"
			}
			fmt.Fprintf(tw, "\t%s", v)
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()
	t.Logf("total %v\n%s", time.Since(t0).Round(time.Second), buf.String())
}

// mBuild is one gateway binary and its measurements.
type mBuild struct {
	name, src, bin string
	bodyFlag       string
	err            error
	rows           []mRow
}

type mRow struct{ metric, value string }

// mEach runs f for every build at once and waits.
func mEach(builds []*mBuild, f func(*mBuild)) {
	var wg sync.WaitGroup
	for _, b := range builds {
		wg.Add(1)
		go func() { defer wg.Done(); f(b) }()
	}
	wg.Wait()
}

// mGateway is a running gateway process.
type mGateway struct {
	cmd     *exec.Cmd
	addr    string
	logPath string
}

// mStart runs b's gateway in front of upstream; it reports failures with
// t.Errorf (it runs off the test's goroutine) and returns nil then.
func mStart(t *testing.T, b *mBuild, dir, attack, upstream string) *mGateway {
	logPath := filepath.Join(dir, b.name+"-"+attack+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Errorf("%s: %v", b.name, err)
		return nil
	}
	defer logf.Close()
	var out gatewaytest.SafeBuffer
	cmd := exec.Command(b.bin, "-listen", "127.0.0.1:0", "-upstream", upstream)
	cmd.Stdout, cmd.Stderr = &out, logf
	if err := cmd.Start(); err != nil {
		t.Errorf("%s: %v", b.name, err)
		return nil
	}
	g := &mGateway{cmd: cmd, logPath: logPath}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := regexp.MustCompile(`listening on http://(\S+)`).FindStringSubmatch(out.String()); m != nil {
			g.addr = m[1]
			time.Sleep(300 * time.Millisecond) // let the process settle before the idle reading
			return g
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.stop()
	t.Errorf("%s: gateway did not print its address: %q", b.name, out.String())
	return nil
}

func (g *mGateway) stop() {
	_ = g.cmd.Process.Kill()
	_ = g.cmd.Wait()
}

// classes tallies the class= values in the gateway's log.
func (g *mGateway) classes() string {
	data, _ := os.ReadFile(g.logPath)
	n := map[string]int{}
	for _, m := range regexp.MustCompile(`class=(\S+)`).FindAllSubmatch(data, -1) {
		n[string(m[1])]++
	}
	return mTally(n)
}

// mem reads VmRSS and VmHWM of pid in MiB.
func mMem(pid int) (rss, hwm float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// mSampler polls the gateway's RSS and the upstream's open connections.
type mSampler struct {
	pid, port int
	start     time.Time
	stopc     chan struct{}
	done      chan struct{}

	mu      sync.Mutex
	maxRSS  float64
	maxOpen int
	series  []string // "t:open" whenever the count changes
	last    int
}

func mSample(pid, port int) *mSampler {
	s := &mSampler{pid: pid, port: port, start: time.Now(), stopc: make(chan struct{}), done: make(chan struct{}), last: -1}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			rss, _ := mMem(pid)
			open := mOpenConns(port)
			s.mu.Lock()
			s.maxRSS = max(s.maxRSS, rss)
			s.maxOpen = max(s.maxOpen, open)
			if open != s.last {
				s.series = append(s.series, fmt.Sprintf("%.1fs:%d", time.Since(s.start).Seconds(), open))
				s.last = open
			}
			s.mu.Unlock()
			select {
			case <-s.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *mSampler) stop() { close(s.stopc); <-s.done }

func (s *mSampler) peak() (rss float64, open int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxRSS, s.maxOpen
}

// mOpenConns counts established TCP connections whose local port is port:
// the upstream's side of the gateway's connections to it.
func mOpenConns(port int) int {
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 4 || fs[3] != "01" {
				continue
			}
			i := strings.LastIndexByte(fs[1], ':')
			if p, err := strconv.ParseInt(fs[1][i+1:], 16, 32); err == nil && int(p) == port {
				n++
			}
		}
	}
	return n
}

func mPort(s *gatewaytest.Server) int {
	_, p, _ := net.SplitHostPort(s.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// mResult is one attacking client's outcome.
type mResult struct {
	status  int // 0: no response
	err     string
	elapsed time.Duration // from the end of its writing to the response
	wrote   bool
}

// mSummary reports outcomes as "N×STATUS at A–B s", one part per status.
func mSummary(rs []mResult) string {
	type agg struct {
		n        int
		min, max time.Duration
	}
	by := map[string]*agg{}
	for _, r := range rs {
		k := strconv.Itoa(r.status)
		if r.status == 0 {
			k = "none(" + r.err + ")"
		}
		a := by[k]
		if a == nil {
			a = &agg{min: r.elapsed, max: r.elapsed}
			by[k] = a
		}
		a.n++
		a.min, a.max = min(a.min, r.elapsed), max(a.max, r.elapsed)
	}
	var parts []string
	for k, a := range by {
		if strings.HasPrefix(k, "none") {
			parts = append(parts, fmt.Sprintf("%d×%s", a.n, k))
			continue
		}
		parts = append(parts, fmt.Sprintf("%d×%s at %.1f–%.1fs", a.n, k, a.min.Seconds(), a.max.Seconds()))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func mTally(n map[string]int) string {
	if len(n) == 0 {
		return "-"
	}
	var parts []string
	for k, v := range n {
		parts = append(parts, fmt.Sprintf("%s×%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func mErr(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ne) && ne.Timeout():
		return "no answer"
	case strings.Contains(err.Error(), "reset"):
		return "reset"
	case strings.Contains(err.Error(), "EOF"):
		return "EOF"
	}
	return err.Error()
}

// mReadStatus reads one response's status from c until deadline.
func mReadStatus(c net.Conn, deadline time.Time) (int, error) {
	_ = c.SetReadDeadline(deadline)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func mf(v float64) string { return fmt.Sprintf("%.0f", v) }

// mStalledPUTs: 100 chunked PUTs send 1 MiB each, then stall.
func mStalledPUTs(t *testing.T, b *mBuild, dir string) []mRow {
	const (
		clients = 100
		chunk   = 64 << 10
		chunks  = 16 // 1 MiB
		wait    = 36 * time.Second
	)
	up := gatewaytest.NewHealthy(nil) // reads the body: waits for the rest
	defer up.Close()
	g := mStart(t, b, dir, "puts", up.URL)
	if g == nil {
		return nil
	}
	defer g.stop()
	pid := g.cmd.Process.Pid
	idle, _ := mMem(pid)
	s := mSample(pid, mPort(up))

	data := "10000\r\n" + strings.Repeat("a", chunk) + "\r\n" // 64 KiB chunk
	res := make([]mResult, clients)
	wrote := make(chan struct{}, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
			if err != nil {
				res[i] = mResult{err: mErr(err)}
				wrote <- struct{}{}
				return
			}
			defer c.Close()
			_ = c.SetWriteDeadline(time.Now().Add(15 * time.Second))
			_, err = fmt.Fprintf(c, "PUT /upload/%d HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n", i)
			for k := 0; k < chunks && err == nil; k++ {
				_, err = c.Write([]byte(data))
			}
			stalled := time.Now()
			res[i].wrote = err == nil
			wrote <- struct{}{}
			// Stall: send nothing more, keep the connection open, wait for
			// an answer.
			st, rerr := mReadStatus(c, start.Add(wait))
			res[i].status, res[i].err, res[i].elapsed = st, mErr(rerr), time.Since(stalled)
		}()
	}
	for range clients {
		<-wrote
	}
	sent := time.Since(start)
	time.Sleep(2 * time.Second) // let the gateway take in what it will
	stalledRSS, _ := mMem(pid)
	open := mOpenConns(mPort(up))
	wg.Wait()
	s.stop()
	peakRSS, peakOpen := s.peak()
	endRSS, hwm := mMem(pid)
	after := mOpenConns(mPort(up))
	nWrote := 0
	for _, r := range res {
		if r.wrote {
			nWrote++
		}
	}
	t.Logf("%s puts: all bodies written in %v; upstream open conns over time: %s; log classes: %s",
		b.name, sent.Round(time.Millisecond), strings.Join(s.series, " "), g.classes())
	return []mRow{
		{"1 PUTs: RSS idle MiB", mf(idle)},
		{"1 PUTs: RSS 2 s into stall / peak / VmHWM MiB", mf(stalledRSS) + " / " + mf(peakRSS) + " / " + mf(hwm)},
		{"1 PUTs: 1 MiB bodies fully written", fmt.Sprintf("%d/%d", nWrote, clients)},
		{"1 PUTs: upstream conns open while stalled (peak)", fmt.Sprintf("%d (%d)", open, peakOpen)},
		{"1 PUTs: outcome (time after stall)", mSummary(res)},
		{"1 PUTs: upstream conns open at the end / RSS MiB", fmt.Sprintf("%d / %s", after, mf(endRSS))},
		{"1 PUTs: logged classes", g.classes()},
	}
}

// mHugeHeaders: 20 concurrent requests with 70,000 small header fields.
func mHugeHeaders(t *testing.T, b *mBuild, dir string) []mRow {
	const clients, fields = 20, 70000
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	g := mStart(t, b, dir, "headers", up.URL)
	if g == nil {
		return nil
	}
	defer g.stop()
	pid := g.cmd.Process.Pid
	idle, _ := mMem(pid)
	s := mSample(pid, mPort(up))

	var req bytes.Buffer
	req.WriteString("GET /headers HTTP/1.1\r\nHost: gateway\r\n")
	for i := 1; i <= fields; i++ {
		fmt.Fprintf(&req, "X-A%d: b\r\n", i)
	}
	req.WriteString("\r\n")
	raw := req.Bytes()

	res := make([]mResult, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
			if err != nil {
				res[i] = mResult{err: mErr(err)}
				return
			}
			defer c.Close()
			begin := time.Now()
			var wwg sync.WaitGroup
			wwg.Add(1)
			var werr error
			go func() { // write while reading: a 431 comes before the end
				defer wwg.Done()
				_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
				_, werr = c.Write(raw)
			}()
			st, rerr := mReadStatus(c, time.Now().Add(30*time.Second))
			res[i] = mResult{status: st, err: mErr(rerr), elapsed: time.Since(begin), wrote: werr == nil}
			_ = c.Close()
			wwg.Wait()
		}()
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond)
	s.stop()
	peakRSS, _ := s.peak()
	endRSS, hwm := mMem(pid)
	nWrote := 0
	for _, r := range res {
		if r.wrote {
			nWrote++
		}
	}
	t.Logf("%s headers: request size %d bytes; upstream read %d requests; log classes: %s", b.name, len(raw), up.Requests(), g.classes())
	return []mRow{
		{"2 headers: RSS idle MiB", mf(idle)},
		{"2 headers: RSS peak / VmHWM / end MiB", mf(peakRSS) + " / " + mf(hwm) + " / " + mf(endRSS)},
		{"2 headers: client status (time)", mSummary(res)},
		{"2 headers: requests fully written / reached upstream", fmt.Sprintf("%d / %d", nWrote, up.Requests())},
	}
}

// mHangingUpstream: 200 concurrent GETs to an upstream that never answers.
func mHangingUpstream(t *testing.T, b *mBuild, dir string) []mRow {
	const (
		clients = 200
		wait    = 37 * time.Second
	)
	up := gatewaytest.NewServer(gatewaytest.Hang)
	defer up.Close()
	port := mPort(up)
	g := mStart(t, b, dir, "hang", up.URL)
	if g == nil {
		return nil
	}
	defer g.stop()
	pid := g.cmd.Process.Pid
	idle, _ := mMem(pid)
	s := mSample(pid, port)

	res := make([]mResult, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
			if err != nil {
				res[i] = mResult{err: mErr(err)}
				return
			}
			defer c.Close()
			sent := time.Now()
			if _, err := fmt.Fprintf(c, "GET /hang/%d HTTP/1.1\r\nHost: gateway\r\n\r\n", i); err != nil {
				res[i] = mResult{err: mErr(err)}
				return
			}
			st, rerr := mReadStatus(c, start.Add(wait))
			res[i] = mResult{status: st, err: mErr(rerr), elapsed: time.Since(sent), wrote: true}
		}()
	}
	at := func(d time.Duration) (int, float64, int64) {
		time.Sleep(time.Until(start.Add(d)))
		rss, _ := mMem(pid)
		return mOpenConns(port), rss, up.Accepts()
	}
	open3, rss3, acc3 := at(3 * time.Second)
	open29, _, acc29 := at(29 * time.Second)
	open33, rss33, acc33 := at(33 * time.Second)
	open36, _, acc36 := at(36 * time.Second)
	wg.Wait()
	s.stop()
	peakRSS, peakOpen := s.peak()
	_, hwm := mMem(pid)
	t.Logf("%s hang: upstream open conns over time: %s; upstream accepts %d, requests %d; log classes: %s",
		b.name, strings.Join(s.series, " "), up.Accepts(), up.Requests(), g.classes())
	return []mRow{
		{"3 hang: RSS idle / at 3 s / at 33 s / VmHWM MiB", mf(idle) + " / " + mf(rss3) + " / " + mf(rss33) + " / " + mf(hwm)},
		{"3 hang: upstream conns open at 3 s / 29 s / 33 s / 36 s (peak)", fmt.Sprintf("%d / %d / %d / %d (%d)", open3, open29, open33, open36, peakOpen)},
		{"3 hang: upstream accepts at 3 s / 29 s / 33 s / 36 s", fmt.Sprintf("%d / %d / %d / %d", acc3, acc29, acc33, acc36)},
		{"3 hang: client outcome (by 37 s)", mSummary(res)},
		{"3 hang: logged classes", g.classes()},
		{"3 hang: RSS peak MiB", mf(peakRSS)},
	}
}
