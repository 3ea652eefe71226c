package errorpage_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
)

// TestBrowser renders the 502, 503 and 504 pages in headless Chromium at
// 1280 and 375 px wide (and checks 320 px for overflow), driving it over the
// DevTools protocol on a pipe: one browser for every load. It asserts no
// console or CSP error, exactly one request per load (no favicon, font or
// image fetch), that the stylesheet applied (its CSP hash is right), and
// that the title, the request ID, the failing hop and the advice are
// rendered visibly (innerText). Screenshots go to t.TempDir(), or to
// ../docs with PROXYKIT_SCREENSHOTS=1.
func TestBrowser(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed; .ci/run installs it")
		}
		t.Skip("chromium not installed")
	}
	shots := t.TempDir()
	if os.Getenv("PROXYKIT_SCREENSHOTS") == "1" {
		shots = filepath.Join("..", "docs")
		require.NoError(t, os.MkdirAll(shots, 0o755))
	}

	h := newHandler(t, errorpage.Options{Brand: demoBrand(), Now: time.Now})
	debug := newHandler(t, errorpage.Options{Brand: demoBrand(), Now: time.Now, Debug: true})
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if p, ok := strings.CutPrefix(r.URL.Path, "/debug"); ok {
			r.URL.Path = p
			debug.Wrap(failing()).ServeHTTP(w, r)
			return
		}
		h.Wrap(failing()).ServeHTTP(w, r)
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b := launch(t, ctx, bin)
	defer b.close()

	type load struct {
		path, file string
		width      int
		dark       bool
		title      string
		failing    string // the marked hop
		advice     string
	}
	loads := []load{
		{"/502", "errorpage-502.png", 1280, false, "502 Bad Gateway · Acme", "Service", "Try again in a minute"},
		{"/502", "errorpage-502-mobile.png", 375, false, "502 Bad Gateway · Acme", "Service", "Try again in a minute"},
		{"/502", "errorpage-502-dark.png", 1280, true, "502 Bad Gateway · Acme", "Service", "Try again in a minute"},
		{"/503", "errorpage-503.png", 1280, false, "503 Service Unavailable · Acme", "Acme", "This page will reload by itself in "},
		{"/503", "", 375, false, "503 Service Unavailable · Acme", "Acme", "This page will reload by itself in "},
		{"/504", "errorpage-504.png", 1280, false, "504 Gateway Timeout · Acme", "Service", "Try again in a minute"},
		{"/504", "", 375, false, "504 Gateway Timeout · Acme", "Service", "Try again in a minute"},
		{"/debug/502", "errorpage-502-debug.png", 1280, false, "502 Bad Gateway · Acme", "Service", "Try again in a minute"},
		{"/502", "", 320, false, "502 Bad Gateway · Acme", "Service", "Try again in a minute"},
		{"/503", "", 320, false, "503 Service Unavailable · Acme", "Acme", "This page will reload by itself"},
	}
	for i, l := range loads {
		name := fmt.Sprintf("%s_%dpx", strings.ReplaceAll(strings.TrimPrefix(l.path, "/"), "/", "_"), l.width)
		if l.dark {
			name += "_dark"
		}
		t.Run(name, func(t *testing.T) {
			id := fmt.Sprintf("01JQ5Z7W3X8K2M9N4P6R0T%04d", i) // looks like a minted ID in the screenshots
			before := requests.Load()
			res := b.load(t, srv.URL+l.path, id, l.width, l.dark)
			assert.Equal(t, int64(1), requests.Load()-before, "exactly one request per load: nothing but the page itself")
			assert.Equal(t, []string{srv.URL + l.path}, res.requests, "the browser fetched nothing else, from anywhere")
			assert.Empty(t, res.console, "console errors")
			assert.Equal(t, l.title, res.DOM.Title)
			assert.Contains(t, res.DOM.Text, id, "request ID visible")
			assert.Contains(t, res.DOM.Text, l.advice, "advice visible")
			assert.Contains(t, res.DOM.Text, "quote the reference below")
			assert.Equal(t, l.failing, res.DOM.Failing, "marked hop")
			assert.Equal(t, "4px", res.DOM.Stripe, "the stylesheet applied (CSP hash matches)")
			assert.False(t, res.DOM.Overflow, "no horizontal scrolling at %d px", l.width)
			if strings.HasPrefix(l.path, "/debug/") {
				assert.Contains(t, res.DOM.Text, "nothing is listening on 10.0.0.5:8080", "operator hint in debug mode")
			} else {
				assert.NotContains(t, res.DOM.Text, "10.0.0.5", "no upstream address for an untrusted visitor")
			}
			require.True(t, bytes.HasPrefix(res.png, []byte("\x89PNG")), "a PNG screenshot")
			if l.file != "" {
				require.NoError(t, os.WriteFile(filepath.Join(shots, l.file), res.png, 0o644))
			}
		})
	}
}

// demoBrand is the brand of the screenshots and examples.
func demoBrand() errorpage.Brand {
	return errorpage.Brand{
		Name:          "Acme",
		LogoSVG:       `<svg viewBox="0 0 32 32" width="32" height="32" role="img" aria-label="Acme"><rect width="32" height="32" rx="8" fill="#0969da"/><path d="M9 23l7-14 7 14M11.8 18h8.4" fill="none" stroke="#fff" stroke-width="2.6" stroke-linecap="round" stroke-linejoin="round"/></svg>`,
		StatusPageURL: "https://status.acme.example",
		SupportEmail:  "support@acme.example",
	}
}

// failing is an inner handler that fails by path, as the gateway's
// ErrorHandler would: 502 refused, 503 no upstream (30 s), 504 timeout.
func failing() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var f *gateway.Failure
		switch r.URL.Path {
		case "/503":
			f = gateway.NewFailure(gateway.ClassNoUpstream, "10.0.0.5:8080", nil)
			f.RetryAfter = 30 * time.Second
		case "/504":
			f = gateway.NewFailure(gateway.ClassTimeout, "10.0.0.5:8080", errors.New("timeout awaiting response headers"))
			f.Sent = true
		default:
			f = gateway.NewFailure(gateway.ClassRefused, "10.0.0.5:8080", errors.New("dial tcp 10.0.0.5:8080: connect: connection refused"))
		}
		gateway.RecordFailure(w, f)
		gateway.WriteFailure(w, r, f)
	})
}

// browser is a headless Chromium driven over --remote-debugging-pipe.
type browser struct {
	t      *testing.T
	cmd    *exec.Cmd
	in     *os.File // we write commands
	stderr bytes.Buffer
	done   chan struct{} // closed when the reader ends

	mu      sync.Mutex
	nextID  int
	waiting map[int]chan cdpMessage
	events  chan cdpMessage
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

func launch(t *testing.T, ctx context.Context, bin string) *browser {
	t.Helper()
	cmdR, cmdW, err := os.Pipe() // commands: we write, Chromium reads fd 3
	require.NoError(t, err)
	resR, resW, err := os.Pipe() // replies: Chromium writes fd 4, we read
	require.NoError(t, err)
	b := &browser{t: t, in: cmdW, done: make(chan struct{}), waiting: map[int]chan cdpMessage{},
		events: make(chan cdpMessage, 1024)}
	b.cmd = exec.CommandContext(ctx, bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-quic", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
		"--remote-debugging-pipe", "--user-data-dir="+t.TempDir(), "about:blank")
	b.cmd.ExtraFiles = []*os.File{cmdR, resW}
	b.cmd.Stderr = &b.stderr
	b.cmd.WaitDelay = 5 * time.Second
	require.NoError(t, b.cmd.Start())
	cmdR.Close() // the child's ends: keep no copy, so EOF arrives when it exits
	resW.Close()
	go b.read(resR)
	return b
}

func (b *browser) read(r *os.File) {
	defer close(b.done)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		raw, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.waiting[m.ID]
			delete(b.waiting, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m
			}
			continue
		}
		select {
		case b.events <- m:
		default: // nobody cares about a flood of events
		}
	}
}

// call sends a command and waits for its reply.
func (b *browser) call(session, method string, params any, result any) error {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.waiting[id] = ch
	b.mu.Unlock()
	msg, err := json.Marshal(map[string]any{"id": id, "method": method, "params": params, "sessionId": session})
	if err != nil {
		return err
	}
	if _, err := b.in.Write(append(msg, 0)); err != nil {
		return fmt.Errorf("%s: %w (stderr: %s)", method, err, b.stderr.String())
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return fmt.Errorf("%s: %s", method, m.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(m.Result, result)
		}
		return nil
	case <-b.done:
		return fmt.Errorf("%s: chromium exited (stderr: %s)", method, b.stderr.String())
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no reply in 30s", method)
	}
}

type loadResult struct {
	console  []string
	requests []string // every URL the page asked for, data: included
	png      []byte
	DOM      struct {
		Title    string `json:"title"`
		Text     string `json:"text"`
		Failing  string `json:"failing"`
		Stripe   string `json:"stripe"`
		Overflow bool   `json:"overflow"`
		Height   int    `json:"height"`
	}
}

const inspect = `JSON.stringify({
	title: document.title,
	text: document.body.innerText,
	failing: (document.querySelector('[aria-current=step] .name') || {}).innerText || '',
	stripe: getComputedStyle(document.querySelector('main')).borderTopWidth,
	overflow: document.documentElement.scrollWidth > document.documentElement.clientWidth,
	height: Math.ceil(document.documentElement.getBoundingClientRect().height)
})`

// load opens url in a fresh tab of the given width with X-Request-ID set to
// id, waits for the load event, and returns what the page shows.
func (b *browser) load(t *testing.T, url, id string, width int, dark bool) loadResult {
	t.Helper()
	var res loadResult
	var target struct {
		TargetID string `json:"targetId"`
	}
	require.NoError(t, b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target))
	defer func() { _ = b.call("", "Target.closeTarget", map[string]any{"targetId": target.TargetID}, nil) }()
	var att struct {
		SessionID string `json:"sessionId"`
	}
	require.NoError(t, b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att))
	s := att.SessionID
	scheme := "light"
	if dark {
		scheme = "dark"
	}
	for _, c := range []struct {
		method string
		params any
	}{
		{"Page.enable", nil},
		{"Runtime.enable", nil},
		{"Log.enable", nil},
		{"Network.enable", nil},
		{"Network.setExtraHTTPHeaders", map[string]any{"headers": map[string]string{"X-Request-ID": id}}},
		{"Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 500}},
		{"Emulation.setEmulatedMedia", map[string]any{"features": []map[string]string{{"name": "prefers-color-scheme", "value": scheme}}}},
	} {
		require.NoError(t, b.call(s, c.method, c.params, nil))
	}
	b.drain()
	require.NoError(t, b.call(s, "Page.navigate", map[string]any{"url": url}, nil))
	deadline := time.After(30 * time.Second)
wait:
	for {
		select {
		case m := <-b.events:
			if m.SessionID != s {
				continue
			}
			if m.Method == "Page.loadEventFired" {
				break wait
			}
			res.console = append(res.console, consoleError(m, url)...)
			res.requests = append(res.requests, requestURL(m)...)
		case <-deadline:
			t.Fatalf("no load event for %s; stderr: %s", url, b.stderr.String())
		}
	}
	var ev struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
	}
	require.NoError(t, b.call(s, "Runtime.evaluate", map[string]any{"expression": inspect, "returnByValue": true}, &ev))
	require.NoError(t, json.Unmarshal([]byte(ev.Result.Value), &res.DOM))

	// Full-page screenshot: grow the viewport to the page's height.
	require.NoError(t, b.call(s, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": max(res.DOM.Height, 600), "deviceScaleFactor": 1, "mobile": width < 500}, nil))
	var shot struct {
		Data string `json:"data"`
	}
	require.NoError(t, b.call(s, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot))
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	require.NoError(t, err)
	res.png = png

	// Late console messages (none expected) arrive before the reply above.
	for {
		select {
		case m := <-b.events:
			if m.SessionID == s {
				res.console = append(res.console, consoleError(m, url)...)
				res.requests = append(res.requests, requestURL(m)...)
			}
			continue
		default:
		}
		break
	}
	return res
}

// requestURL returns the URL of a request the browser is about to send.
func requestURL(m cdpMessage) []string {
	if m.Method != "Network.requestWillBeSent" {
		return nil
	}
	var p struct {
		Request struct{ URL string } `json:"request"`
	}
	if json.Unmarshal(m.Params, &p) != nil {
		return []string{"?"}
	}
	return []string{p.Request.URL}
}

func (b *browser) drain() {
	for {
		select {
		case <-b.events:
		default:
			return
		}
	}
}

// consoleError returns the text of an error-level console message, log
// entry (a CSP violation, a failed load) or uncaught exception. Chromium's
// network note that the page itself came with an error status is expected.
func consoleError(m cdpMessage, page string) []string {
	switch m.Method {
	case "Log.entryAdded":
		var p struct {
			Entry struct {
				Source, Level, Text, URL string
			} `json:"entry"`
		}
		if json.Unmarshal(m.Params, &p) != nil || p.Entry.Source == "network" && p.Entry.URL == page {
			return nil
		}
		if p.Entry.Level == "error" || p.Entry.Level == "warning" {
			return []string{p.Entry.Level + ": " + p.Entry.Text + " " + p.Entry.URL}
		}
	case "Runtime.consoleAPICalled":
		var p struct{ Type string }
		if json.Unmarshal(m.Params, &p) == nil && (p.Type == "error" || p.Type == "warning" || p.Type == "assert") {
			return []string{"console." + p.Type + ": " + string(m.Params)}
		}
	case "Runtime.exceptionThrown":
		return []string{"exception: " + string(m.Params)}
	}
	return nil
}

func (b *browser) close() {
	_ = b.call("", "Browser.close", nil, nil)
	b.in.Close()
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
	_ = b.cmd.Wait()
}
