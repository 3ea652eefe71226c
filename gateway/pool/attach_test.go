package pool

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestAttach: one call routes a ReverseProxy through the pool, keeping what
// the proxy already did — a Rewrite runs first, a Director is converted and
// still gets X-Forwarded-For — and a second attach is refused.
func TestAttach(t *testing.T) {
	seen := make(chan *http.Request, 1)
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()

	for name, proxy := range map[string]*httputil.ReverseProxy{
		"rewrite": {Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Path = "/v2" + pr.Out.URL.Path
			pr.Out.Header.Set("X-Mine", "rewrite")
		}},
		"director": {Director: func(r *http.Request) {
			r.URL.Path = "/v2" + r.URL.Path
			r.Header.Set("X-Mine", "director")
		}},
		"none": {},
	} {
		t.Run(name, func(t *testing.T) {
			p := newTestPool(t, up)
			proxy.ErrorHandler = gateway.NewErrorHandler(quietLogger)
			require.NoError(t, p.Attach(proxy))
			assert.Error(t, p.Attach(proxy), "attaching twice is refused")
			front := httptest.NewServer(proxy)
			defer front.Close()
			res, body := get(t, front.Client(), front.URL+"/orders")
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, "ok", body)
			r := <-seen
			if name == "none" {
				assert.Equal(t, "/orders", r.URL.Path)
				return
			}
			assert.Equal(t, "/v2/orders", r.URL.Path, "the proxy's own routing ran before the pool's")
			assert.Equal(t, name, r.Header.Get("X-Mine"))
			if name == "director" {
				assert.Equal(t, "127.0.0.1", r.Header.Get("X-Forwarded-For"), "a Director's proxy keeps X-Forwarded-For")
			}
		})
	}
	assert.Error(t, (&Pool{}).Attach(nil))
}

// TestAttachKeepsHost: the pool chooses where to connect; the Host header
// is what the proxy's own Rewrite or Director left, and a Director stays a
// Director (its X-Forwarded-For nil convention holds).
func TestAttachKeepsHost(t *testing.T) {
	seen := make(chan *http.Request, 1)
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r
	}))
	defer up.Close()
	for name, tc := range map[string]struct {
		proxy *httputil.ReverseProxy
		host  func(front string) string
		xff   bool
	}{
		"director_host": {&httputil.ReverseProxy{Director: func(r *http.Request) {
			r.Host = "vhost.example"
			r.Header["X-Forwarded-For"] = nil
		}}, func(string) string { return "vhost.example" }, false},
		"director_routes": {&httputil.ReverseProxy{Director: func(r *http.Request) {
			r.URL.Scheme, r.URL.Host = "http", up.Addr
		}}, func(front string) string { return front }, true},
		"director_leaves_routing": {&httputil.ReverseProxy{Director: func(*http.Request) {}},
			func(string) string { return up.Addr }, true},
		"rewrite_routes_inbound": {&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: up.Addr})
			pr.Out.Host = pr.In.Host
		}}, func(front string) string { return front }, false},
		"rewrite_sets_host": {&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.Out.Host = "vhost.example" }},
			func(string) string { return "vhost.example" }, false},
		"rewrite_leaves_routing": {&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.Out.Header.Set("X-Mine", "1") }},
			func(string) string { return up.Addr }, false},
		"none": {&httputil.ReverseProxy{}, func(string) string { return up.Addr }, false},
	} {
		t.Run(name, func(t *testing.T) {
			p := newTestPool(t, up)
			tc.proxy.ErrorHandler = gateway.NewErrorHandler(quietLogger)
			require.NoError(t, p.Attach(tc.proxy))
			front := httptest.NewServer(tc.proxy)
			defer front.Close()
			res, _ := get(t, front.Client(), front.URL+"/")
			assert.Equal(t, http.StatusOK, res.StatusCode)
			r := <-seen
			assert.Equal(t, tc.host(front.Listener.Addr().String()), r.Host)
			_, xff := r.Header["X-Forwarded-For"]
			assert.Equal(t, tc.xff, xff)
		})
	}
	both := &httputil.ReverseProxy{Director: func(*http.Request) {}, Rewrite: func(*httputil.ProxyRequest) {}}
	assert.ErrorContains(t, newTestPool(t, up).Attach(both), "both a Rewrite and a Director")
}
