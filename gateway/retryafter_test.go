package gateway_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{"120", 2 * time.Minute, true},
		{"99999999999999999999999", 24 * time.Hour, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{now.Add(72 * time.Hour).Format(http.TimeFormat), 24 * time.Hour, true},
		{"Sunday, 22-Nov-26 12:00:30 GMT", 30 * time.Second, true}, // RFC 850, still accepted
		{"", 0, false},
		{"-1", 0, false},
		{"1.5", 0, false},
		{" 5", 0, false},
		{"soon", 0, false},
		{"5s", 0, false},
	}
	for _, c := range cases {
		got, ok := gateway.ParseRetryAfter(c.in, now)
		assert.Equal(t, c.ok, ok, "%q", c.in)
		assert.Equal(t, c.want, got, "%q", c.in)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	assert.Equal(t, "1", gateway.RetryAfterSeconds(0))
	assert.Equal(t, "1", gateway.RetryAfterSeconds(time.Millisecond))
	assert.Equal(t, "10", gateway.RetryAfterSeconds(10*time.Second))
	assert.Equal(t, "11", gateway.RetryAfterSeconds(10*time.Second+time.Nanosecond))
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Sun, 06 Nov 1994 08:49:37 GMT", "", "-5", "1e9", "99999999999999999999"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := gateway.ParseRetryAfter(s, now)
		if !ok && d != 0 {
			t.Fatalf("invalid %q gave %v", s, d)
		}
		if d < 0 || d > 24*time.Hour {
			t.Fatalf("%q gave %v, outside [0, 24h]", s, d)
		}
	})
}

// TestSpreadRetryAfter: overloaded, open and no_upstream answers draw their
// wait from [n, max(2n, n+2)] seconds, covering the window; other classes
// get n; no wait advised, none sent. WriteFailure sends the drawn value.
func TestSpreadRetryAfter(t *testing.T) {
	for _, c := range []gateway.Class{gateway.ClassOverloaded, gateway.ClassOpen, gateway.ClassNoUpstream} {
		for _, tc := range []struct {
			d      time.Duration
			lo, hi int
		}{{time.Millisecond, 1, 3}, {time.Second, 1, 3}, {4 * time.Second, 4, 8}, {30 * time.Second, 30, 60}} {
			seen := map[int]bool{}
			for range 2000 {
				n := gateway.SpreadRetryAfter(c, tc.d)
				require.True(t, n >= tc.lo && n <= tc.hi, "%v %v: %d outside [%d, %d]", c, tc.d, n, tc.lo, tc.hi)
				seen[n] = true
			}
			assert.Len(t, seen, tc.hi-tc.lo+1, "%v %v: every second of the window drawn", c, tc.d)
		}
		assert.Zero(t, gateway.SpreadRetryAfter(c, 0))
	}
	for range 100 {
		assert.Equal(t, 2, gateway.SpreadRetryAfter(gateway.ClassUpstreamStatus, 1500*time.Millisecond))
	}

	f := gateway.NewFailure(gateway.ClassOverloaded, "h:1", nil)
	f.RetryAfter = time.Second
	seen := map[string]bool{}
	for range 300 {
		w := httptest.NewRecorder()
		gateway.WriteFailure(w, httptest.NewRequest(http.MethodGet, "/", nil), f)
		seen[w.Header().Get("Retry-After")] = true
	}
	assert.Equal(t, map[string]bool{"1": true, "2": true, "3": true}, seen)
}
