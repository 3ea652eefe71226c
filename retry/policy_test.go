package retry

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/proxykit/proxykit/gateway"
)

// TestDecisionTable checks eligible against DESIGN.md's taxonomy, row by
// row: "retry: any method" and "retry: idempotent", with the sent flag each
// class has in practice (reset and internal both ways: they are measured).
func TestDecisionTable(t *testing.T) {
	type row struct {
		class      gateway.Class
		sent       bool
		anyMethod  bool // a POST may be retried
		idempotent bool // a GET may be retried
	}
	rows := []row{
		{gateway.ClassDNS, false, true, true},
		{gateway.ClassRefused, false, true, true},
		{gateway.ClassUnreachable, false, true, true},
		{gateway.ClassConnectTimeout, false, true, true},
		{gateway.ClassTLS, false, true, true},
		{gateway.ClassReset, false, true, true},
		{gateway.ClassReset, true, false, true},
		{gateway.ClassMalformed, true, false, true},
		{gateway.ClassTimeout, true, false, true},
		{gateway.ClassUpstreamStatus, true, false, true},
		{gateway.ClassOpen, false, true, true},
		{gateway.ClassNoUpstream, false, false, false},
		{gateway.ClassCanceled, false, false, false},
		{gateway.ClassCanceled, true, false, false},
		{gateway.ClassInternal, false, true, true},
		{gateway.ClassInternal, true, false, true},
	}
	for _, r := range rows {
		f := &gateway.Failure{Class: r.class, Sent: r.sent}
		assert.Equal(t, r.anyMethod, eligible(f, false), "%s sent=%t, POST", r.class, r.sent)
		assert.Equal(t, r.idempotent, eligible(f, true), "%s sent=%t, GET", r.class, r.sent)
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

// FuzzEligible: whatever the method, class, sent flag and key, a request
// that may have been applied is retried only if it is repeatable, and a
// client that went away or an empty pool is never retried.
func FuzzEligible(f *testing.F) {
	f.Add("POST", uint8(gateway.ClassReset), true, false, false)
	f.Add("GET", uint8(gateway.ClassTimeout), true, false, false)
	f.Add("PATCH", uint8(gateway.ClassRefused), false, true, true)
	f.Add("DELETE", uint8(gateway.ClassCanceled), false, false, false)
	f.Fuzz(func(t *testing.T, method string, class uint8, sent, key, trust bool) {
		r, err := http.NewRequest(http.MethodGet, "http://x/", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Method = method
		if key {
			r.Header.Set(IdempotencyKeyHeader, "k")
		}
		fl := &gateway.Failure{Class: gateway.Class(class), Sent: sent}
		rep := repeatable(r, trust)
		got := eligible(fl, rep)
		c := fl.Class
		if c >= gateway.Class(len(gateway.Classes())) {
			c = gateway.ClassInternal // unknown classes behave as internal
		}
		switch {
		case c == gateway.ClassCanceled || c == gateway.ClassNoUpstream:
			if got {
				t.Fatalf("retried %s", c)
			}
		case sent && c != gateway.ClassOpen && got && !idempotentMethod(method) && !(key && trust):
			t.Fatalf("retried a sent %q (%s) without an idempotency guarantee", method, c)
		case !sent && !got:
			t.Fatalf("did not retry an unsent %q (%s)", method, c)
		}
	})
}
