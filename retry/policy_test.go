package retry

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/proxykit/proxykit/gateway"
)

// TestDecisionTable checks eligible against the README's taxonomy, row by
// row: "retry: any method" and "retry: idempotent", with the sent flag each
// class has in practice (reset, internal and stale_connection both ways:
// they are measured). An open breaker is retried only when it names an
// upstream (a per-host breaker: another host may be picked); the route
// breaker's open names none, and the next attempt would meet it again.
func TestDecisionTable(t *testing.T) {
	type row struct {
		class      gateway.Class
		upstream   string
		sent       bool
		anyMethod  bool // a POST may be retried
		idempotent bool // a GET may be retried
	}
	const up = "10.0.0.5:8080"
	rows := []row{
		{gateway.ClassDNS, up, false, true, true},
		{gateway.ClassRefused, up, false, true, true},
		{gateway.ClassUnreachable, up, false, true, true},
		{gateway.ClassConnectTimeout, up, false, true, true},
		{gateway.ClassTLS, up, false, true, true},
		{gateway.ClassReset, up, false, true, true},
		{gateway.ClassReset, up, true, false, true},
		{gateway.ClassMalformed, up, true, false, true},
		{gateway.ClassTimeout, up, true, false, true},
		{gateway.ClassUpstreamStatus, up, true, false, true},
		{gateway.ClassOpen, up, false, true, true},
		{gateway.ClassOpen, "", false, false, false},
		{gateway.ClassNoUpstream, "", false, false, false},
		{gateway.ClassNoUpstream, up, false, false, false},
		{gateway.ClassCanceled, up, false, false, false},
		{gateway.ClassCanceled, up, true, false, false},
		{gateway.ClassInternal, up, false, true, true},
		{gateway.ClassInternal, up, true, false, true},
		{gateway.ClassClientBody, up, false, false, false},
		{gateway.ClassClientBody, up, true, false, false},
		{gateway.ClassClientBody, "", false, false, false},
		{gateway.ClassStaleConn, up, false, true, true},
		{gateway.ClassStaleConn, up, true, false, true},
		{gateway.ClassOverloaded, up, false, true, true},
		{gateway.ClassOverloaded, "", false, false, false},
		{gateway.ClassMaintenance, "", false, false, false},
		{gateway.ClassMaintenance, up, false, false, false},
	}
	for _, r := range rows {
		f := &gateway.Failure{Class: r.class, Upstream: r.upstream, Sent: r.sent}
		assert.Equal(t, r.anyMethod, eligible(f, false), "%s upstream=%q sent=%t, POST", r.class, r.upstream, r.sent)
		assert.Equal(t, r.idempotent, eligible(f, true), "%s upstream=%q sent=%t, GET", r.class, r.upstream, r.sent)
	}
}

// TestRetryDelayByClass: a stale keep-alive connection and a request shed
// as overloaded are retried at once, whatever the attempt; every other
// class waits the jittered backoff.
func TestRetryDelayByClass(t *testing.T) {
	rt := mustNew(t, Options{BaseDelay: 10 * time.Millisecond, MaxDelay: 40 * time.Millisecond})
	// The largest delay the jitter can draw: a source that always returns
	// n-1, so that a zero can only come from the policy.
	rt.backoff.int64n = func(n int64) int64 { return n - 1 }
	for _, c := range gateway.Classes() {
		for n := range 4 {
			d := rt.retryDelay(&gateway.Failure{Class: c, Upstream: "u:1", Sent: true}, n)
			if c == gateway.ClassStaleConn || c == gateway.ClassOverloaded {
				assert.Zero(t, d, "%s, retry %d", c, n)
				continue
			}
			assert.Equal(t, rt.backoff.ceiling(n)-1, d, "%s, retry %d", c, n)
		}
	}
}

// TestIdempotentMethods: RFC 9110 §9.2.2, case-sensitive.
func TestIdempotentMethods(t *testing.T) {
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} {
		assert.True(t, idempotentMethod(m), m)
	}
	for _, m := range []string{"POST", "PATCH", "CONNECT", "LOCK", "PROPFIND", "get", ""} {
		assert.False(t, idempotentMethod(m), m)
	}
	post, _ := http.NewRequest(http.MethodPost, "http://x/", nil)
	assert.False(t, repeatable(post, true))
	post.Header.Set("Idempotency-Key", "abc")
	assert.False(t, repeatable(post, false), "the key counts only when trusted")
	assert.True(t, repeatable(post, true))
}

// FuzzEligible: whatever the method, class, sent flag, key and upstream, a
// request that may have been applied is retried only if it is repeatable; a
// client that went away, an empty pool, a broken client body, maintenance
// or a response the proxy's ModifyResponse rejected is never retried; an open breaker is retried only when it names an upstream.
func FuzzEligible(f *testing.F) {
	f.Add("POST", uint8(gateway.ClassReset), true, false, false, true)
	f.Add("GET", uint8(gateway.ClassTimeout), true, false, false, true)
	f.Add("PATCH", uint8(gateway.ClassRefused), false, true, true, true)
	f.Add("DELETE", uint8(gateway.ClassCanceled), false, false, false, true)
	f.Add("GET", uint8(gateway.ClassOpen), false, false, false, false)
	f.Add("PUT", uint8(gateway.ClassClientBody), false, false, false, true)
	f.Add("POST", uint8(gateway.ClassStaleConn), true, true, false, true)
	f.Add("GET", uint8(gateway.ClassResponseRejected), true, false, false, true)
	f.Add("GET", uint8(gateway.ClassResponseRejected), false, false, false, true)
	f.Fuzz(func(t *testing.T, method string, class uint8, sent, key, trust, hostBreaker bool) {
		r, err := http.NewRequest(http.MethodGet, "http://x/", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Method = method
		if key {
			r.Header.Set(IdempotencyKeyHeader, "k")
		}
		fl := &gateway.Failure{Class: gateway.Class(class), Sent: sent}
		if hostBreaker {
			fl.Upstream = "10.0.0.5:8080"
		}
		rep := repeatable(r, trust)
		got := eligible(fl, rep)
		c := fl.Class
		if c >= gateway.Class(len(gateway.Classes())) {
			c = gateway.ClassInternal // unknown classes behave as internal
		}
		switch {
		case c == gateway.ClassCanceled || c == gateway.ClassNoUpstream || c == gateway.ClassClientBody ||
			c == gateway.ClassResponseRejected || c == gateway.ClassMaintenance:
			if got {
				t.Fatalf("retried %s", c)
			}
		case c == gateway.ClassOpen:
			if got != (fl.Upstream != "") {
				t.Fatalf("open with upstream %q: retried=%t", fl.Upstream, got)
			}
		case sent && c != gateway.ClassOpen && got && !idempotentMethod(method) && !(key && trust):
			t.Fatalf("retried a sent %q (%s) without an idempotency guarantee", method, c)
		case !sent && !got:
			t.Fatalf("did not retry an unsent %q (%s)", method, c)
		}
	})
}
