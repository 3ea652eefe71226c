package gateway_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

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
