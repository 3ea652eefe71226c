package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBadFlags(t *testing.T) {
	cases := map[string][]string{
		"at least one -upstream":        {},
		"bad URL":                       {"-upstream", "ftp://x"},
		"bad URL \"://\"":               {"-upstream", "://"},
		"invalid value \"soon\"":        {"-upstream", "http://127.0.0.1:1", "-try-timeout", "soon"},
		"-attempts 0":                   {"-upstream", "http://127.0.0.1:1", "-attempts", "0"},
		"flag provided but not defined": {"-nope"},
		"unexpected argument":           {"-upstream", "http://127.0.0.1:1", "extra"},
		"set -admin too":                {"-upstream", "http://127.0.0.1:1", "-metrics"},
		"-otlp \"ftp://x\"":             {"-upstream", "http://127.0.0.1:1", "-otlp", "ftp://x"},
	}
	for want, args := range cases {
		var out, errs gatewaytest.SafeBuffer
		err := run(context.Background(), args, &out, &errs)
		require.Error(t, err, "%v", args)
		assert.Contains(t, err.Error(), want)
		assert.NotContains(t, err.Error(), "\n", "one line")
		assert.NotContains(t, out.String(), "listening")
	}
}

var listening = regexp.MustCompile(`listening on (http://\S+)`)

// TestServeAndDrain starts the gateway on a free port, proxies requests to
// a pool with one dead upstream, and shuts it down while a request is in
// flight: the request completes, then run returns.
func TestServeAndDrain(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	dead := gatewaytest.NewServer(gatewaytest.Refused)
	defer dead.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errs gatewaytest.SafeBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0", "-upstream", up.URL,
			"-upstream", dead.URL, "-brand", "Acme", "-log-json"}, &out, &errs)
	}()
	var base string
	require.Eventually(t, func() bool {
		m := listening.FindStringSubmatch(out.String())
		if m != nil {
			base = m[1]
		}
		return m != nil
	}, 10*time.Second, 10*time.Millisecond)

	client := &http.Client{Timeout: 10 * time.Second}
	for i := 0; i < 6; i++ {
		res, err := client.Get(base + "/")
		require.NoError(t, err)
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		assert.Equal(t, 200, res.StatusCode, "the dead upstream is routed around")
		assert.Equal(t, "ok", string(body))
		assert.NotEmpty(t, res.Header.Get("X-Request-Id"))
	}

	slow := make(chan *http.Response, 1)
	go func() {
		res, err := client.Get(base + "/slow")
		if err == nil {
			slow <- res
		}
		close(slow)
	}()
	require.Eventually(t, func() bool { return up.Requests() >= 7 }, 5*time.Second, 5*time.Millisecond)
	cancel() // SIGINT
	select {
	case err := <-done:
		t.Fatalf("run returned before the in-flight request finished: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	once.Do(func() { close(release) })
	res := <-slow
	require.NotNil(t, res, "the in-flight request completes")
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, "ok", string(body))
	require.NoError(t, <-done)
	assert.Contains(t, errs.String(), `"msg":"shutting down: draining in-flight requests"`)
	assert.True(t, strings.Contains(out.String(), "status view on http://"))
}

// TestAdminOperations: with a token the admin listener takes drain and
// maintenance under /admin/ (the token required, the listener's own Host
// only) and keeps the views read-only; without one the operations are off.
func TestAdminOperations(t *testing.T) {
	up := gatewaytest.NewHealthy(nil)
	defer up.Close()
	for _, token := range []string{"s3cret", ""} {
		t.Run("token="+token, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out := &gatewaytest.SafeBuffer{}
			done := make(chan error, 1)
			args := []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0", "-upstream", up.URL}
			if token != "" {
				args = append(args, "-admin-token", token)
			}
			go func() { done <- run(ctx, args, out, io.Discard) }()
			var adminURL string
			require.Eventually(t, func() bool {
				for _, l := range strings.Split(out.String(), "\n") {
					if a, ok := strings.CutPrefix(l, "status view on "); ok {
						adminURL = a
					}
				}
				return adminURL != "" && strings.Contains(out.String(), "listening on")
			}, 5*time.Second, 10*time.Millisecond)

			do := func(method, path, tok, host string) int {
				req, err := http.NewRequest(method, adminURL+path, nil)
				require.NoError(t, err)
				if tok != "" {
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				if host != "" {
					req.Host = host
				}
				res, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				res.Body.Close()
				return res.StatusCode
			}
			if token == "" {
				assert.Equal(t, http.StatusMethodNotAllowed, do("POST", "/admin/maintenance", "x", ""), "no token: the admin listener stays read-only")
			} else {
				assert.Equal(t, http.StatusUnauthorized, do("POST", "/admin/maintenance", "", ""))
				assert.Equal(t, http.StatusUnauthorized, do("POST", "/admin/maintenance", "wrong", ""))
				assert.Equal(t, http.StatusMisdirectedRequest, do("POST", "/admin/maintenance", token, "evil.example"))
				assert.Equal(t, http.StatusOK, do("GET", "/admin/upstreams", token, ""))
				assert.Less(t, do("POST", "/admin/maintenance?for=1m", token, ""), 300, "maintenance on")
				assert.Less(t, do("DELETE", "/admin/maintenance", token, ""), 300, "maintenance off")
			}
			assert.Equal(t, http.StatusOK, do("GET", "/", "", ""), "the status view")
			assert.Equal(t, http.StatusMethodNotAllowed, do("POST", "/", token, ""), "the status view is read-only")
			cancel()
			require.NoError(t, <-done)
		})
	}
}
