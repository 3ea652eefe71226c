package status_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/proxykit/proxykit/status"
)

// TestReadOnly: the admin guard serves GET and HEAD for the listener's own
// names only, so a DNS-rebound page cannot read it and nothing can write.
func TestReadOnly(t *testing.T) {
	view := &status.View{}
	h := status.ReadOnly(view, "admin.internal:8081")
	for _, c := range []struct {
		method, host string
		want         int
	}{
		{"GET", "127.0.0.1:8081", 200},
		{"HEAD", "localhost:8081", 200},
		{"GET", "[::1]:8081", 200},
		{"GET", "admin.internal:9999", 200},
		{"GET", "ADMIN.internal", 200},
		{"GET", "attacker.example:8081", http.StatusMisdirectedRequest},
		{"GET", "", http.StatusMisdirectedRequest},
		{"POST", "127.0.0.1:8081", http.StatusMethodNotAllowed},
		{"DELETE", "localhost", http.StatusMethodNotAllowed},
	} {
		req := httptest.NewRequest(c.method, "/", nil)
		req.Host = c.host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		assert.Equal(t, c.want, rec.Code, "%s Host %q", c.method, c.host)
		if c.want == http.StatusMethodNotAllowed {
			assert.Equal(t, "GET, HEAD", rec.Header().Get("Allow"))
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8081": true, "localhost:80": true, "[::1]:8081": true, "127.9.9.9": true,
		":8081": false, "0.0.0.0:8081": false, "[::]:80": false, "10.0.0.5:8081": false, "example.com:80": false,
	} {
		assert.Equal(t, want, status.IsLoopback(addr), addr)
	}
}
