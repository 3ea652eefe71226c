package proxykit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// The conformance suite runs each behaviour net/http documents for
// httputil.ReverseProxy twice: with the user's proxy served bare, and with
// the same proxy given to New. Each case asserts the documented result, so
// the bare run checks the expectation and the wrapped run checks that the
// stack keeps it. The user's proxy routes to its backend by itself, as it
// would without proxykit; the stack's pool has that backend as its one
// upstream.

// proxyMode serves a user's ReverseProxy, whose own routing reaches
// backend.
type proxyMode struct {
	name    string
	handler func(t *testing.T, p *httputil.ReverseProxy, backend string) http.Handler
}

// serve starts the public server of m for p.
func (m proxyMode) serve(t *testing.T, p *httputil.ReverseProxy, backend string) *httptest.Server {
	t.Helper()
	return startFront(t, m.handler(t, p, backend))
}

// stackMode serves the proxy through a stack that build makes from a
// Config with the proxy and the backend as the one upstream.
func stackMode(name string, build func(Config) (*Stack, error)) proxyMode {
	return proxyMode{name, func(t *testing.T, p *httputil.ReverseProxy, backend string) http.Handler {
		st, err := build(Config{Proxy: p, Upstreams: []*url.URL{mustParse(backend)}, Logger: quiet})
		require.NoError(t, err)
		t.Cleanup(st.Close)
		return st
	}}
}

var proxyModes = []proxyMode{
	{"bare", func(_ *testing.T, p *httputil.ReverseProxy, _ string) http.Handler { return p }},
	stackMode("proxykit", New),
}

func startFront(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	front := httptest.NewServer(h)
	t.Cleanup(func() {
		front.Client().CloseIdleConnections()
		front.Close()
	})
	return front
}

// conformanceCase is one behaviour, run in every mode.
type conformanceCase struct {
	name string
	run  func(t *testing.T, m proxyMode)
}

func TestConformance(t *testing.T) { runConformance(t, proxyModes...) }

// runConformance runs every case in each of modes.
func runConformance(t *testing.T, modes ...proxyMode) {
	var cases []conformanceCase
	for _, group := range [][]conformanceCase{
		hostCases(), forwardedCases(), queryCases(), hopByHopCases(), userAgentCases(), responseCases(), trailerCases(),
		informationalCases(), flushCases(), upgradeCases(), bodyCases(), lifecycleCases(),
	} {
		cases = append(cases, group...)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, m := range modes {
				t.Run(m.name, func(t *testing.T) { c.run(t, m) })
			}
		})
	}
}

// seen is what a backend received.
type seen struct {
	host          string
	path, query   string
	header        http.Header
	contentLength int64
	chunked       bool
	body          string
}

// recordingBackend answers 200 "ok" and sends each request it receives.
func recordingBackend(t *testing.T) (*httptest.Server, <-chan seen) {
	t.Helper()
	got := make(chan seen, 16)
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- seen{
			host: r.Host, path: r.URL.Path, query: r.URL.RawQuery, header: r.Header.Clone(),
			contentLength: r.ContentLength, chunked: len(r.TransferEncoding) > 0 && r.TransferEncoding[0] == "chunked",
			body: string(body),
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(b.Close)
	return b, got
}

// directorTo returns a Director that routes to backend, then runs also.
func directorTo(backend string, also func(*http.Request)) func(*http.Request) {
	u := mustParse(backend)
	return func(r *http.Request) {
		r.URL.Scheme, r.URL.Host = u.Scheme, u.Host
		if also != nil {
			also(r)
		}
	}
}

// rewriteTo returns a Rewrite that routes to target with SetURL, then runs also.
func rewriteTo(target string, also func(*httputil.ProxyRequest)) func(*httputil.ProxyRequest) {
	u := mustParse(target)
	return func(pr *httputil.ProxyRequest) {
		pr.SetURL(u)
		if also != nil {
			also(pr)
		}
	}
}

// roundTrip sends req through front and returns the response, its body read.
func roundTrip(t *testing.T, front *httptest.Server, req *http.Request) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	res, err := front.Client().Do(req.WithContext(ctx))
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, string(body)
}

func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	return req
}

func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received in 10 s")
		var zero T
		return zero
	}
}

// get proxies one GET of path with the given header through a proxy built
// by mk around a recording backend, and returns what the backend saw.
func proxiedGET(t *testing.T, m proxyMode, mk func(backend string) *httputil.ReverseProxy, path string, h http.Header) (seen, *httptest.Server) {
	t.Helper()
	b, got := recordingBackend(t)
	front := m.serve(t, mk(b.URL), b.URL)
	req := newRequest(t, http.MethodGet, front.URL+path, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	res, body := roundTrip(t, front, req)
	require.Equal(t, http.StatusOK, res.StatusCode, body)
	return receive(t, got), front
}

// hostCases: the outbound Host is what the Director or Rewrite left; the
// pool only chooses where to connect.
func hostCases() []conformanceCase {
	return []conformanceCase{
		{"host/director_keeps_inbound", func(t *testing.T, m proxyMode) {
			s, front := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, nil)}
			}, "/", nil)
			assert.Equal(t, front.Listener.Addr().String(), s.host, "a Director that leaves Host forwards the inbound one")
		}},
		{"host/director_sets_host", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, func(r *http.Request) { r.Host = "vhost.example" })}
			}, "/", nil)
			assert.Equal(t, "vhost.example", s.host)
		}},
		{"host/rewrite_seturl", func(t *testing.T, m proxyMode) {
			var backend string
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				backend = b
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b, nil)}
			}, "/", nil)
			assert.Equal(t, mustParse(backend).Host, s.host, "SetURL sends the target's host")
		}},
		{"host/rewrite_keeps_inbound", func(t *testing.T, m proxyMode) {
			s, front := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b, func(pr *httputil.ProxyRequest) { pr.Out.Host = pr.In.Host })}
			}, "/", nil)
			assert.Equal(t, front.Listener.Addr().String(), s.host)
		}},
		{"host/rewrite_sets_host", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b, func(pr *httputil.ProxyRequest) { pr.Out.Host = "vhost.example" })}
			}, "/", nil)
			assert.Equal(t, "vhost.example", s.host)
		}},
		{"url/rewrite_path_prefix", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b+"/base", nil)}
			}, "/orders", nil)
			assert.Equal(t, "/base/orders", s.path)
		}},
		{"url/director_path", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, func(r *http.Request) { r.URL.Path = "/v2" + r.URL.Path })}
			}, "/orders", nil)
			assert.Equal(t, "/v2/orders", s.path)
		}},
	}
}

// forwardedCases: X-Forwarded-* in each mode, nil convention included.
func forwardedCases() []conformanceCase {
	client := http.Header{
		"X-Forwarded-For":   {"203.0.113.9"},
		"X-Forwarded-Host":  {"public.example"},
		"X-Forwarded-Proto": {"https"},
		"Forwarded":         {"for=203.0.113.9"},
	}
	return []conformanceCase{
		{"forwarded/director_appends", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, nil)}
			}, "/", client)
			assert.Equal(t, "203.0.113.9, 127.0.0.1", s.header.Get("X-Forwarded-For"))
			assert.Equal(t, "public.example", s.header.Get("X-Forwarded-Host"), "a Director passes the client's X-Forwarded-Host")
			assert.Equal(t, "https", s.header.Get("X-Forwarded-Proto"))
			assert.Equal(t, "for=203.0.113.9", s.header.Get("Forwarded"))
		}},
		{"forwarded/director_folds_prior", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, nil)}
			}, "/", http.Header{"X-Forwarded-For": {"203.0.113.9", "198.51.100.7"}})
			assert.Equal(t, []string{"203.0.113.9, 198.51.100.7, 127.0.0.1"}, s.header.Values("X-Forwarded-For"))
		}},
		{"forwarded/director_nil_omits", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, func(r *http.Request) { r.Header["X-Forwarded-For"] = nil })}
			}, "/", client)
			_, present := s.header["X-Forwarded-For"]
			assert.False(t, present, "a nil X-Forwarded-For set by the Director means: omit it")
		}},
		{"forwarded/director_no_client_header", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, nil)}
			}, "/", nil)
			assert.Equal(t, "127.0.0.1", s.header.Get("X-Forwarded-For"))
			assert.Empty(t, s.header.Get("X-Forwarded-Host"))
		}},
		{"forwarded/rewrite_strips", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b, nil)}
			}, "/", client)
			for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
				assert.Empty(t, s.header.Values(k), "Rewrite mode strips the client's %s", k)
			}
		}},
		{"forwarded/rewrite_set_xforwarded", func(t *testing.T, m proxyMode) {
			s, front := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b, func(pr *httputil.ProxyRequest) { pr.SetXForwarded() })}
			}, "/", client)
			assert.Equal(t, "127.0.0.1", s.header.Get("X-Forwarded-For"))
			assert.Equal(t, front.Listener.Addr().String(), s.header.Get("X-Forwarded-Host"))
			assert.Equal(t, "http", s.header.Get("X-Forwarded-Proto"))
		}},
	}
}

// queryCases: unparsable query parameters are dropped in Rewrite mode,
// and in Director mode only when the Director parsed the form.
func queryCases() []conformanceCase {
	check := func(t *testing.T, m proxyMode, mk func(string) *httputil.ReverseProxy, want map[string]string) {
		b, got := recordingBackend(t)
		front := m.serve(t, mk(b.URL), b.URL)
		for raw, expect := range want {
			req := newRequest(t, http.MethodGet, front.URL+"/q", nil)
			req.URL.RawQuery = raw
			res, _ := roundTrip(t, front, req)
			require.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, expect, receive(t, got).query, "query %q", raw)
		}
	}
	return []conformanceCase{
		{"query/director_as_sent", func(t *testing.T, m proxyMode) {
			check(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, nil)}
			}, map[string]string{"a=1&a=2;b=3": "a=1&a=2;b=3", "a=%zz": "a=%zz", "b=2&a=1": "b=2&a=1"})
		}},
		{"query/director_parsed_form", func(t *testing.T, m proxyMode) {
			check(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, func(r *http.Request) { _ = r.ParseForm() })}
			}, map[string]string{"a=1&a=2;b=3": "a=1", "a=%zz": "", "b=2&a=1": "b=2&a=1"})
		}},
		{"query/rewrite_sanitised", func(t *testing.T, m proxyMode) {
			check(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b, nil)}
			}, map[string]string{"a=1&a=2;b=3": "a=1", "a=%zz": "", "b=2&a=1": "b=2&a=1"})
		}},
	}
}

// hopByHopCases: hop-by-hop headers go no further in either direction;
// "Te: trailers" is kept.
func hopByHopCases() []conformanceCase {
	return []conformanceCase{
		{"hop_by_hop", func(t *testing.T, m proxyMode) {
			got := make(chan http.Header, 1)
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got <- r.Header.Clone()
				w.Header().Set("Connection", "X-Resp-Hop")
				w.Header().Set("X-Resp-Hop", "1")
				w.Header().Set("Keep-Alive", "timeout=5")
				w.Header().Set("X-Resp-End", "1")
				_, _ = io.WriteString(w, "ok")
			}))
			defer b.Close()
			front := m.serve(t, &httputil.ReverseProxy{Director: directorTo(b.URL, nil)}, b.URL)
			req := newRequest(t, http.MethodGet, front.URL, nil)
			req.Header.Set("Connection", "X-Hop, keep-alive")
			req.Header.Set("X-Hop", "1")
			req.Header.Set("Keep-Alive", "timeout=5")
			req.Header.Set("Proxy-Connection", "keep-alive")
			req.Header.Set("Upgrade", "h2c")
			req.Header.Set("Te", "trailers, deflate")
			req.Header.Set("X-End", "1")
			res, _ := roundTrip(t, front, req)
			require.Equal(t, http.StatusOK, res.StatusCode)
			h := receive(t, got)
			for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Connection", "Upgrade"} {
				assert.Empty(t, h.Values(k), "request header %s", k)
			}
			assert.Equal(t, []string{"trailers"}, h.Values("Te"))
			assert.Equal(t, "1", h.Get("X-End"))
			assert.Empty(t, res.Header.Values("X-Resp-Hop"))
			assert.Empty(t, res.Header.Values("Keep-Alive"))
			assert.Equal(t, "1", res.Header.Get("X-Resp-End"))
		}},
	}
}

// userAgentCases: no User-Agent from the client means none upstream, not
// Go's default.
func userAgentCases() []conformanceCase {
	return []conformanceCase{
		{"user_agent/absent", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Rewrite: rewriteTo(b, nil)}
			}, "/", http.Header{"User-Agent": {""}})
			assert.Empty(t, s.header.Values("User-Agent"))
		}},
		{"user_agent/kept", func(t *testing.T, m proxyMode) {
			s, _ := proxiedGET(t, m, func(b string) *httputil.ReverseProxy {
				return &httputil.ReverseProxy{Director: directorTo(b, nil)}
			}, "/", http.Header{"User-Agent": {"client/1.0"}})
			assert.Equal(t, "client/1.0", s.header.Get("User-Agent"))
		}},
	}
}

// responseCases: the upstream's status, Content-Length and HEAD answers
// pass as they are.
func responseCases() []conformanceCase {
	return []conformanceCase{
		{"response/status_and_length", func(t *testing.T, m proxyMode) {
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "5")
				w.Header().Set("X-App", "1")
				w.WriteHeader(http.StatusCreated)
				if r.Method != http.MethodHead {
					_, _ = io.WriteString(w, "made!")
				}
			}))
			defer b.Close()
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				res, body := roundTrip(t, front, newRequest(t, method, front.URL, nil))
				assert.Equal(t, http.StatusCreated, res.StatusCode, method)
				assert.Equal(t, int64(5), res.ContentLength, method)
				assert.Equal(t, "1", res.Header.Get("X-App"), method)
				if method == http.MethodGet {
					assert.Equal(t, "made!", body)
				} else {
					assert.Empty(t, body)
				}
			}
		}},
		{"response/upstream_error_status", func(t *testing.T, m proxyMode) {
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "app error", http.StatusInternalServerError)
			}))
			defer b.Close()
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			res, body := roundTrip(t, front, newRequest(t, http.MethodGet, front.URL, nil))
			assert.Equal(t, http.StatusInternalServerError, res.StatusCode, "an application's 500 is its answer, passed as it is")
			assert.Equal(t, "app error\n", body)
		}},
	}
}

// trailerCases: announced trailers and TrailerPrefix ones reach the client.
func trailerCases() []conformanceCase {
	return []conformanceCase{
		{"trailers", func(t *testing.T, m proxyMode) {
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Announced")
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, "body")
				w.Header().Set("X-Announced", "a")
				w.Header().Set(http.TrailerPrefix+"X-Unannounced", "u")
			}))
			defer b.Close()
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			res, body := roundTrip(t, front, newRequest(t, http.MethodGet, front.URL, nil))
			assert.Equal(t, "body", body)
			assert.Equal(t, "a", res.Trailer.Get("X-Announced"))
			assert.Equal(t, "u", res.Trailer.Get("X-Unannounced"))
		}},
	}
}

// rawConn dials front and returns the connection with a reader.
func rawConn(t *testing.T, front *httptest.Server) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", front.Listener.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	return c, bufio.NewReader(c)
}

// refusedURL is the URL of a loopback port nothing listens on.
func refusedURL(t *testing.T) string {
	t.Helper()
	s := gatewaytest.NewServer(gatewaytest.Refused)
	t.Cleanup(s.Close)
	return s.URL
}

// informationalCases: 1xx responses and Expect: 100-continue.
func informationalCases() []conformanceCase {
	return []conformanceCase{
		{"1xx/early_hints", func(t *testing.T, m proxyMode) {
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Link", "</style.css>; rel=preload; as=style")
				w.WriteHeader(http.StatusEarlyHints)
				_, _ = io.WriteString(w, "ok")
			}))
			defer b.Close()
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			var codes []int
			var links []string
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				codes = append(codes, code)
				links = append(links, h.Get("Link"))
				return nil
			}}
			req := newRequest(t, http.MethodGet, front.URL, nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
			res, body := roundTrip(t, front, req)
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, "ok", body)
			assert.Equal(t, []int{http.StatusEarlyHints}, codes)
			assert.Equal(t, []string{"</style.css>; rel=preload; as=style"}, links)
		}},
		{"expect_continue/ok", func(t *testing.T, m proxyMode) {
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				_, _ = w.Write(body)
			}))
			defer b.Close()
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			c, br := rawConn(t, front)
			_, err := io.WriteString(c, "PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
			require.NoError(t, err)
			res, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusContinue, res.StatusCode, "the client is asked for its body")
			_, err = io.WriteString(c, "hello")
			require.NoError(t, err)
			// The upstream's own 100 Continue is forwarded too, and may
			// race net/http's automatic one (bare as wrapped, a few runs
			// in a hundred): clients accept several 1xx (RFC 9110 §15.2).
			for res.StatusCode == http.StatusContinue {
				res, err = http.ReadResponse(br, nil)
				require.NoError(t, err)
			}
			body, _ := io.ReadAll(res.Body)
			assert.Equal(t, http.StatusOK, res.StatusCode)
			assert.Equal(t, "hello", string(body))
		}},
		{"expect_continue/failing_upstream", func(t *testing.T, m proxyMode) {
			down := refusedURL(t)
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(down, nil), ErrorLog: log.New(io.Discard, "", 0)}, down)
			c, br := rawConn(t, front)
			start := time.Now()
			_, err := io.WriteString(c, "PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
			require.NoError(t, err)
			res, err := http.ReadResponse(br, nil)
			took := time.Since(start)
			require.NoError(t, err)
			t.Logf("answered in %v", took)
			assert.Equal(t, http.StatusBadGateway, res.StatusCode, "a failure before the body is read is answered, without 100 Continue")
			assert.Less(t, took, 2*time.Second, "answered at once, not after the client body's idle timeout")
		}},
	}
}

// flushCases: streamed responses reach the client as they are written.
func flushCases() []conformanceCase {
	stream := func(t *testing.T, m proxyMode, flushInterval time.Duration, contentType string) {
		release := make(chan struct{})
		b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if contentType != "" {
				w.Header().Set("Content-Type", contentType)
			}
			_, _ = io.WriteString(w, "first\n")
			_ = http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			_, _ = io.WriteString(w, "second\n")
		}))
		defer b.Close()
		defer close(release)
		p := &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil), FlushInterval: flushInterval}
		front := m.serve(t, p, b.URL)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := front.Client().Do(newRequest(t, http.MethodGet, front.URL, nil).WithContext(ctx))
		require.NoError(t, err)
		defer res.Body.Close()
		line, err := bufio.NewReader(res.Body).ReadString('\n')
		require.NoError(t, err, "the first write arrives while the backend still holds the response open")
		assert.Equal(t, "first\n", line)
	}
	return []conformanceCase{
		{"flush/immediate", func(t *testing.T, m proxyMode) { stream(t, m, -1, "") }},
		{"flush/interval", func(t *testing.T, m proxyMode) { stream(t, m, 20*time.Millisecond, "") }},
		{"flush/event_stream", func(t *testing.T, m proxyMode) { stream(t, m, 0, "text/event-stream") }},
	}
}

// upgradeCases: a protocol upgrade tunnels both ways, and a half-close in
// either direction is passed on while the other direction keeps flowing.
// Each is run halfCloseRuns times: a torn-down tunnel loses data only on
// some runs.
const halfCloseRuns = 30

// upgradeBackend hijacks an upgrade request, answers 101, and runs serve
// on the connection.
func upgradeBackend(t *testing.T, serve func(c *net.TCPConn, br *bufio.Reader)) *httptest.Server {
	t.Helper()
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
			return
		}
		serve(c.(*net.TCPConn), brw.Reader)
	}))
	t.Cleanup(b.Close)
	return b
}

// upgrade sends an upgrade request through front and reads the 101.
func upgrade(t *testing.T, front *httptest.Server) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, br := rawConn(t, front)
	_, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	return c.(*net.TCPConn), br
}

func upgradeCases() []conformanceCase {
	return []conformanceCase{
		{"upgrade/client_half_closes", func(t *testing.T, m proxyMode) {
			b := upgradeBackend(t, func(c *net.TCPConn, br *bufio.Reader) {
				got, _ := io.ReadAll(br) // to the client's half-close
				_, _ = io.WriteString(c, "got:"+string(got))
			})
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			ok := 0
			for i := range halfCloseRuns {
				c, br := upgrade(t, front)
				_, err := io.WriteString(c, "hello")
				require.NoError(t, err)
				require.NoError(t, c.CloseWrite())
				answer, _ := io.ReadAll(br)
				if assert.Equal(t, "got:hello", string(answer), "run %d: the backend's answer after the client's half-close", i) {
					ok++
				}
				_ = c.Close()
			}
			assert.Equal(t, halfCloseRuns, ok)
		}},
		{"upgrade/backend_half_closes", func(t *testing.T, m proxyMode) {
			replies := make(chan string, halfCloseRuns)
			b := upgradeBackend(t, func(c *net.TCPConn, br *bufio.Reader) {
				_, _ = io.WriteString(c, "hello")
				_ = c.CloseWrite()
				got, _ := io.ReadAll(br)
				replies <- string(got)
			})
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			ok := 0
			for i := range halfCloseRuns {
				c, br := upgrade(t, front)
				got, err := io.ReadAll(br) // to the backend's half-close
				require.NoError(t, err)
				assert.Equal(t, "hello", string(got))
				_, err = io.WriteString(c, "reply")
				require.NoError(t, err)
				require.NoError(t, c.CloseWrite())
				if assert.Equal(t, "reply", receive(t, replies), "run %d: the client's data after the backend's half-close", i) {
					ok++
				}
				_ = c.Close()
			}
			assert.Equal(t, halfCloseRuns, ok)
		}},
	}
}

// bodyCases: request bodies keep their framing.
func bodyCases() []conformanceCase {
	post := func(t *testing.T, m proxyMode, body io.Reader, length int64) seen {
		b, got := recordingBackend(t)
		front := m.serve(t, &httputil.ReverseProxy{Director: directorTo(b.URL, nil)}, b.URL)
		req := newRequest(t, http.MethodPost, front.URL+"/up", body)
		req.ContentLength = length
		res, _ := roundTrip(t, front, req)
		require.Equal(t, http.StatusOK, res.StatusCode)
		return receive(t, got)
	}
	return []conformanceCase{
		{"body/content_length", func(t *testing.T, m proxyMode) {
			s := post(t, m, strings.NewReader("hello world"), 11)
			assert.Equal(t, int64(11), s.contentLength)
			assert.False(t, s.chunked)
			assert.Equal(t, "hello world", s.body)
		}},
		{"body/chunked", func(t *testing.T, m proxyMode) {
			s := post(t, m, io.MultiReader(strings.NewReader("hello "), strings.NewReader("world")), -1)
			assert.Equal(t, int64(-1), s.contentLength)
			assert.True(t, s.chunked)
			assert.Equal(t, "hello world", s.body)
		}},
		{"body/empty", func(t *testing.T, m proxyMode) {
			s := post(t, m, http.NoBody, 0)
			assert.Equal(t, int64(0), s.contentLength)
			assert.Empty(t, s.body)
		}},
		{"body/large", func(t *testing.T, m proxyMode) {
			big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
			s := post(t, m, bytes.NewReader(big), int64(len(big)))
			assert.Equal(t, int64(len(big)), s.contentLength)
			assert.Equal(t, len(big), len(s.body))
		}},
	}
}

// lifecycleCases: cancellation, a nil request Header, ModifyResponse
// errors, ErrorLog.
func lifecycleCases() []conformanceCase {
	return []conformanceCase{
		{"cancel/client_leaves", func(t *testing.T, m proxyMode) {
			arrived, ended := make(chan struct{}), make(chan struct{})
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(arrived)
				select {
				case <-r.Context().Done():
					close(ended)
				case <-time.After(20 * time.Second):
				}
			}))
			defer b.Close()
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(b.URL, nil)}, b.URL)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				res, err := front.Client().Do(newRequest(t, http.MethodGet, front.URL, nil).WithContext(ctx))
				if err == nil {
					res.Body.Close()
				}
				done <- err
			}()
			receive(t, arrived)
			cancel()
			receive(t, ended)
			assert.ErrorIs(t, receive(t, done), context.Canceled)
		}},
		{"nil_header", func(t *testing.T, m proxyMode) {
			b, got := recordingBackend(t)
			h := m.handler(t, &httputil.ReverseProxy{Director: directorTo(b.URL, nil)}, b.URL)
			req := httptest.NewRequest(http.MethodGet, "/nil", nil)
			req.Header = nil
			rec := httptest.NewRecorder()
			require.NotPanics(t, func() { h.ServeHTTP(rec, req) })
			assert.Equal(t, http.StatusOK, rec.Code)
			assert.Equal(t, "/nil", receive(t, got).path)
		}},
		{"modify_response/error", func(t *testing.T, m proxyMode) {
			var hits atomic.Int64
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				w.Header().Set("X-Secret", "1")
				_, _ = io.WriteString(w, "secret")
			}))
			defer b.Close()
			p := &httputil.ReverseProxy{
				Rewrite:  rewriteTo(b.URL, nil),
				ErrorLog: log.New(io.Discard, "", 0),
				ModifyResponse: func(res *http.Response) error {
					if res.Header.Get("X-Secret") != "" {
						return errors.New("policy: secret response")
					}
					return nil
				},
			}
			front := m.serve(t, p, b.URL)
			const n = 10
			for i := range n {
				res, body := roundTrip(t, front, newRequest(t, http.MethodGet, front.URL, nil))
				assert.Equal(t, http.StatusBadGateway, res.StatusCode, "request %d", i)
				assert.NotContains(t, body, "secret")
			}
			assert.Equal(t, int64(n), hits.Load(), "each rejected response comes from one upstream request")
		}},
		{"error_log", func(t *testing.T, m proxyMode) {
			var lines gatewaytest.SafeBuffer
			down := refusedURL(t)
			front := m.serve(t, &httputil.ReverseProxy{Rewrite: rewriteTo(down, nil), ErrorLog: log.New(&lines, "", 0)}, down)
			res, _ := roundTrip(t, front, newRequest(t, http.MethodGet, front.URL, nil))
			assert.Equal(t, http.StatusBadGateway, res.StatusCode)
			require.Eventually(t, func() bool { return lines.String() != "" }, 5*time.Second, time.Millisecond)
			assert.Equal(t, 1, strings.Count(lines.String(), "\n"), "one line per failed request: %s", lines.String())
		}},
	}
}
