package gateway_test

// Reliability tests: request-ID validation fuzzed against an independent
// oracle. The Monitor's and the pool's live in status and gateway/pool.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"github.com/proxykit/proxykit/gateway"
)

// relIDOracle is the documented request-ID syntax, written independently
// of ValidRequestID.
var relIDOracle = regexp.MustCompile(`^[A-Za-z0-9\-_.:+/=@]{1,128}$`)

// FuzzRequestID: whatever X-Request-ID values a client sends (none, one,
// two; any bytes, any length), the RequestID middleware leaves exactly one
// ID on the request and the response: the client's own when it sent
// exactly one valid ID, else a fresh one; always valid by the documented
// syntax (so nothing that needs escaping in a header, a log line or a
// page), at most 128 bytes, and the one RequestIDOf reports downstream.
// ValidRequestID agrees with an independent regular expression.
// Seeds: testdata/fuzz/FuzzRequestID.
func FuzzRequestID(f *testing.F) {
	f.Add("01JQ5Z7W3X8K2M9N4P6R0T0000", "", 1)
	f.Add("<script>alert(1)</script>", "", 1)
	f.Add("a", "b", 2)
	f.Add("", "", 0)
	h := gateway.RequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen", gateway.RequestIDOf(r))
		w.Header().Set("X-Forwarded-Id-Count", fmt.Sprint(len(r.Header.Values("X-Request-Id"))))
	}))
	f.Fuzz(func(t *testing.T, first, second string, n int) {
		if got, want := gateway.ValidRequestID(first), relIDOracle.MatchString(first); got != want {
			t.Fatalf("ValidRequestID(%q) = %t, the documented syntax says %t", first, got, want)
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		switch n % 3 {
		case 1:
			r.Header["X-Request-Id"] = []string{first}
		case 2:
			r.Header["X-Request-Id"] = []string{first, second}
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		ids := w.Header().Values("X-Request-Id")
		if len(ids) != 1 {
			t.Fatalf("response carries %d IDs: %q", len(ids), ids)
		}
		id := ids[0]
		if !relIDOracle.MatchString(id) {
			t.Fatalf("response ID %q breaks the documented syntax", id)
		}
		if seen := w.Header().Get("X-Seen"); seen != id {
			t.Fatalf("downstream saw %q, the client got %q", seen, id)
		}
		if c := w.Header().Get("X-Forwarded-Id-Count"); c != "1" {
			t.Fatalf("the request carries %s IDs downstream", c)
		}
		keep := n%3 == 1 && relIDOracle.MatchString(first)
		if keep && id != first {
			t.Fatalf("a valid ID %q was replaced by %q", first, id)
		}
		if !keep && n%3 != 0 && (id == first || (n%3 == 2 && id == second)) {
			t.Fatalf("an ID that must be replaced was kept: %q", id)
		}
	})
}
