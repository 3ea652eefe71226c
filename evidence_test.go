package proxykit

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/pool"
	"github.com/proxykit/proxykit/retry"
)

// bodyCounter answers every request, after reading its body whole, with
// the number of bytes read.
var bodyCounter = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
})

// failures records the classes of the failures the stack reported.
type failures struct {
	mu      sync.Mutex
	classes []gateway.Class
	status  []int
}

func (f *failures) hook(_ *http.Request, fl *gateway.Failure, _ time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.classes = append(f.classes, fl.Class)
	f.status = append(f.status, fl.StatusCode())
}

func (f *failures) get() ([]gateway.Class, []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]gateway.Class(nil), f.classes...), append([]int(nil), f.status...)
}

// beside sends GETs to url every 20 ms until stop is closed, and watches
// the host's state in the health model meanwhile; it returns the GETs
// sent and served, and every state other than serving that it saw.
func beside(st *Stack, front, host string, stop <-chan struct{}) (done func() (sent, ok int, states []string)) {
	var sent, ok atomic.Int64
	var mu sync.Mutex
	var seen []string
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	wg.Add(2)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			sent.Add(1)
			res, err := client.Get(front + "/get")
			if err != nil {
				continue
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				ok.Add(1)
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if s := string(st.Hosts.HostState(host)); s != string(pool.StateServing) {
				mu.Lock()
				if len(seen) == 0 || seen[len(seen)-1] != s {
					seen = append(seen, s) // each change once
				}
				mu.Unlock()
			}
		}
	}()
	return func() (int, int, []string) {
		wg.Wait()
		client.CloseIdleConnections()
		return int(sent.Load()), int(ok.Load()), seen
	}
}

// TestSlowUploadIsTheClients: four uploads that keep moving (a byte every
// 300 ms for 3 s) beside healthy GETs, on a single upstream. With a 1 s
// per-try timeout they are served (the timer measures the upstream, not
// the client's pace); with a 2 s request timeout they end as the
// client's (client_body, 408), never as the upstream's timeout. Either
// way the host is never charged: it stays serving, and every GET beside
// them is served.
func TestSlowUploadIsTheClients(t *testing.T) {
	cases := []struct {
		name   string
		cfg    Config
		status int
		class  gateway.Class // of the uploads' failures, when they fail
	}{
		{"try_timeout", Config{Retry: retry.Options{PerTryTimeout: time.Second}}, http.StatusOK, 0},
		{"request_timeout", Config{RequestTimeout: 2 * time.Second}, http.StatusRequestTimeout, gateway.ClassClientBody},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := gatewaytest.NewHealthy(bodyCounter)
			defer up.Close()
			var fails failures
			cfg := c.cfg
			cfg.Upstreams, cfg.Logger, cfg.OnFailure = []*url.URL{mustParse(up.URL)}, quiet, fails.hook
			st, err := New(cfg)
			require.NoError(t, err)
			defer st.Close()
			front := httptest.NewServer(st)
			defer front.Close()

			stop := make(chan struct{})
			done := beside(st, front.URL, up.Addr, stop)
			var wg sync.WaitGroup
			statuses := make([]int, 4)
			for i := range statuses {
				wg.Add(1)
				go func() {
					defer wg.Done()
					req, err := http.NewRequest("POST", front.URL+"/upload", gatewaytest.SlowBody(10, 300*time.Millisecond))
					if !assert.NoError(t, err) {
						return
					}
					req.ContentLength = 10
					client := &http.Client{Timeout: 30 * time.Second}
					res, err := client.Do(req)
					if err != nil {
						statuses[i] = -1 // the gateway may end the exchange mid-upload
						return
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					statuses[i] = res.StatusCode
				}()
			}
			wg.Wait()
			time.Sleep(200 * time.Millisecond) // GETs after the uploads too
			close(stop)
			sent, ok, states := done()

			classes, codes := fails.get()
			t.Logf("uploads %v; failures %v %v; GETs %d/%d; states %v", statuses, classes, codes, ok, sent, states)
			for i, s := range statuses {
				if c.status == http.StatusOK || s != -1 {
					assert.Equal(t, c.status, s, "upload %d", i)
				}
			}
			for i, cl := range classes {
				assert.Equal(t, c.class, cl, "failure %d: the client's, never the upstream's", i)
				assert.Equal(t, c.status, codes[i], "failure %d", i)
			}
			if c.status != http.StatusOK {
				assert.Len(t, classes, len(statuses), "every upload ended as the client's")
			}
			assert.Positive(t, sent)
			assert.Equal(t, sent, ok, "every GET beside the uploads served")
			assert.Empty(t, states, "the host never left serving")
		})
	}
}

// TestConnectionSlotWaitIsLocal: with MaxConnsPerHost reached by long
// streams, requests that wait for a connection slot past their per-try
// timeout end as local saturation (overloaded, 503), never as the host's
// connect_timeout: the host stays serving, and is served from as soon as a
// stream ends.
func TestConnectionSlotWaitIsLocal(t *testing.T) {
	release := make(chan struct{})
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	base := gateway.NewHTTPTransport()
	base.MaxConnsPerHost = 2
	var fails failures
	st, err := New(Config{Upstreams: []*url.URL{mustParse(up.URL)}, Logger: quiet, Transport: base,
		OnFailure: fails.hook, Retry: retry.Options{PerTryTimeout: 300 * time.Millisecond}})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()

	var streams []*http.Response
	for range 2 {
		res, err := client.Get(front.URL + "/stream")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode)
		streams = append(streams, res)
	}
	var wg sync.WaitGroup
	codes := make([]int, 8)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := client.Get(front.URL + "/ok")
			if !assert.NoError(t, err) {
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			codes[i] = res.StatusCode
		}()
	}
	wg.Wait()
	classes, _ := fails.get()
	t.Logf("statuses %v; failures %v; host %s", codes, classes, st.Hosts.HostState(up.Addr))
	for i, c := range codes {
		assert.Equal(t, http.StatusServiceUnavailable, c, "request %d: the slot wait answered as local saturation", i)
	}
	require.NotEmpty(t, classes)
	for i, c := range classes {
		assert.Equal(t, gateway.ClassOverloaded, c, "failure %d: never the host's connect_timeout", i)
	}
	assert.Equal(t, pool.StateServing, st.Hosts.HostState(up.Addr), "the host is not charged for a local limit")

	close(release)
	for _, s := range streams {
		_, _ = io.Copy(io.Discard, s.Body)
		s.Body.Close()
	}
	res, err := client.Get(front.URL + "/ok")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode, "served at once once a slot is free")
}
