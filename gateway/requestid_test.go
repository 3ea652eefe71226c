package gateway_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

func TestValidRequestID(t *testing.T) {
	for _, id := range []string{"a", "550e8400-e29b-41d4-a716-446655440000", "01ARZ3NDEKTSV4RRFFQ69G5FAV",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "abc+/=", "svc:req.1_2@x", strings.Repeat("x", 128)} {
		assert.True(t, gateway.ValidRequestID(id), id)
	}
	for _, id := range []string{"", strings.Repeat("x", 129), "a b", "<script>", "a\nb", "é", "a\"b", "a;b", "a,b", "\x00"} {
		assert.False(t, gateway.ValidRequestID(id), "%q", id)
	}
}

func TestNewRequestIDUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := gateway.NewRequestID()
		require.True(t, gateway.ValidRequestID(id), id)
		require.False(t, seen[id])
		seen[id] = true
	}
}

// TestRequestIDMiddleware: a valid inbound ID is kept, an invalid or
// missing one replaced; the ID goes upstream and back to the client.
func TestRequestIDMiddleware(t *testing.T) {
	var upstreamID string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamID = r.Header.Get("X-Request-ID")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	var seenByLayer string
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		seenByLayer = gateway.RequestIDOf(pr.In)
		pr.SetURL(u)
	}}
	front := httptest.NewServer(gateway.RequestID(proxy))
	defer front.Close()

	cases := []struct {
		name, inbound string
		keep          bool
	}{
		{"kept", "req-123", true},
		{"missing", "", false},
		{"too long", strings.Repeat("a", 500), false},
		{"xss", `<script>alert(1)</script>`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", front.URL, nil)
			if c.inbound != "" {
				req.Header.Set("X-Request-ID", c.inbound)
			}
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			res.Body.Close()
			got := res.Header.Get("X-Request-ID")
			require.True(t, gateway.ValidRequestID(got), got)
			if c.keep {
				assert.Equal(t, c.inbound, got)
			} else {
				assert.NotEqual(t, c.inbound, got)
			}
			assert.Equal(t, got, upstreamID, "forwarded upstream")
			assert.Equal(t, got, seenByLayer, "visible to other layers")
		})
	}
	// Two IDs: ambiguous, replaced.
	req, _ := http.NewRequest("GET", front.URL, nil)
	req.Header.Add("X-Request-ID", "a")
	req.Header.Add("X-Request-ID", "b")
	res, err := front.Client().Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.NotContains(t, []string{"a", "b"}, res.Header.Get("X-Request-ID"))
}

func TestRequestIDKeptWithoutAllocation(t *testing.T) {
	h := gateway.RequestID(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Request-ID", "abc-123")
	w := &discardWriter{h: http.Header{}}
	allocs := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, req) })
	assert.Zero(t, allocs)
}

// TestRequestIDSurvivesConnectionHeader: a client that
// lists X-Request-ID in its Connection header would have ReverseProxy drop
// the ID as hop-by-hop; the middleware removes that token, so the upstream
// gets the ID the client sees, and the other tokens stay.
func TestRequestIDSurvivesConnectionHeader(t *testing.T) {
	var upstreamID string
	var sawConnection []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamID = r.Header.Get("X-Request-ID")
		sawConnection = r.Header.Values("Connection")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	var inboundConnection []string
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		inboundConnection = pr.In.Header.Values("Connection")
		pr.SetURL(u)
	}}
	front := httptest.NewServer(gateway.RequestID(proxy))
	defer front.Close()
	for _, conn := range []string{"close, X-Request-ID", "x-request-id", "X-Request-Id,keep-alive, Foo"} {
		t.Run(conn, func(t *testing.T) {
			for _, inbound := range []string{"", "client-id-1"} {
				req, _ := http.NewRequest("GET", front.URL, nil)
				req.Header.Set("Connection", conn)
				if inbound != "" {
					req.Header.Set("X-Request-ID", inbound)
				}
				res, err := front.Client().Do(req)
				require.NoError(t, err)
				res.Body.Close()
				got := res.Header.Get("X-Request-ID")
				require.True(t, gateway.ValidRequestID(got))
				if inbound != "" {
					assert.Equal(t, inbound, got)
				}
				assert.Equal(t, got, upstreamID, "the upstream must get the ID")
				assert.Empty(t, sawConnection, "hop-by-hop: never forwarded")
				for _, v := range inboundConnection {
					assert.NotContains(t, strings.ToLower(v), "x-request-id")
				}
			}
		})
	}
	assert.Equal(t, []string{"keep-alive, Foo"}, inboundConnection, "other tokens are kept")
}

func TestRequestIDConnectionHeaderWithoutAllocation(t *testing.T) {
	h := gateway.RequestID(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Request-ID", "abc-123")
	req.Header.Set("Connection", "keep-alive, Upgrade")
	w := &discardWriter{h: http.Header{}}
	allocs := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, req) })
	assert.Zero(t, allocs, "a Connection header without the token costs nothing")
}

// TestRequestIDNilHeader: a request built in code may have a nil Header,
// which ReverseProxy accepts; so does RequestID.
func TestRequestIDNilHeader(t *testing.T) {
	var id string
	h := gateway.RequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { id = gateway.RequestIDOf(r) }))
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header = nil
	rec := httptest.NewRecorder()
	require.NotPanics(t, func() { h.ServeHTTP(rec, r) })
	assert.NotEmpty(t, id)
	assert.Equal(t, id, rec.Header().Get(gateway.RequestIDHeader))
}
