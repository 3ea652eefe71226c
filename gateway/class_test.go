package gateway_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

func TestClassTable(t *testing.T) {
	names := map[string]bool{}
	for _, c := range gateway.Classes() {
		name := c.String()
		assert.False(t, names[name], "duplicate name %s", name)
		names[name] = true
		var back gateway.Class
		require.NoError(t, back.UnmarshalText([]byte(name)))
		assert.Equal(t, c, back)
		assert.NotEmpty(t, c.Explanation())
		f := gateway.NewFailure(c, "10.0.0.5:8080", nil)
		assert.Contains(t, f.Hint(), "10.0.0.5:8080", "hint names the upstream for %s", name)
		assert.NotContains(t, f.Class.Explanation(), "10.0.0.5")
		assert.GreaterOrEqual(t, c.Status(), 400)
	}
	assert.Len(t, names, 18, "the taxonomy has 18 classes")
	want := map[gateway.Class]int{
		gateway.ClassDNS: 502, gateway.ClassRefused: 502, gateway.ClassUnreachable: 502,
		gateway.ClassConnectTimeout: 504, gateway.ClassTLS: 502, gateway.ClassReset: 502,
		gateway.ClassMalformed: 502, gateway.ClassTimeout: 504, gateway.ClassOpen: 503,
		gateway.ClassNoUpstream: 503, gateway.ClassCanceled: 499, gateway.ClassInternal: 502,
		gateway.ClassResponseRejected: 502,
	}
	for c, s := range want {
		assert.Equal(t, s, c.Status(), c.String())
	}
	for _, c := range []gateway.Class{gateway.ClassOpen, gateway.ClassNoUpstream, gateway.ClassCanceled, gateway.ClassResponseRejected} {
		assert.False(t, c.CountsAsFailure(), c.String())
	}
	assert.True(t, gateway.ClassReset.CountsAsFailure())
	assert.Equal(t, "internal", gateway.Class(200).String(), "unknown values read as internal")
	var c gateway.Class
	assert.Error(t, c.UnmarshalText([]byte("nope")))
	b, err := json.Marshal(map[string]gateway.Class{"class": gateway.ClassConnectTimeout})
	require.NoError(t, err)
	assert.JSONEq(t, `{"class":"connect_timeout"}`, string(b))
}

func TestFailureWrapsCause(t *testing.T) {
	cause := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	f := gateway.ClassifyError(cause, "10.0.0.5:8080", true)
	assert.Equal(t, gateway.ClassRefused, f.Class)
	assert.False(t, f.Sent, "a refused dial cannot have sent anything")
	assert.ErrorIs(t, f, syscall.ECONNREFUSED)
	var op *net.OpError
	assert.ErrorAs(t, f, &op)
	wrapped := fmt.Errorf("outer: %w", f)
	assert.Same(t, f, gateway.ClassifyError(wrapped, "", true), "an existing Failure is kept")
	assert.Contains(t, f.Error(), "refused")
	assert.Contains(t, f.Error(), "10.0.0.5:8080")
}

// TestClassifySynthetic covers what loopback cannot produce (unreachable
// networks) and the rules that don't need a socket.
func TestClassifySynthetic(t *testing.T) {
	dial := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	cases := []struct {
		err  error
		want gateway.Class
	}{
		{dial(syscall.EHOSTUNREACH), gateway.ClassUnreachable},
		{dial(syscall.ENETUNREACH), gateway.ClassUnreachable},
		{dial(syscall.ECONNREFUSED), gateway.ClassRefused},
		{dial(syscall.ETIMEDOUT), gateway.ClassConnectTimeout},
		{&net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, gateway.ClassDNS},
		{fmt.Errorf("x: %w", context.Canceled), gateway.ClassCanceled},
		{context.DeadlineExceeded, gateway.ClassTimeout},
		{io.ErrUnexpectedEOF, gateway.ClassReset},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, gateway.ClassReset},
		{x509.UnknownAuthorityError{}, gateway.ClassTLS},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, gateway.ClassTLS},
		{errors.New("something new"), gateway.ClassInternal},
		{nil, gateway.ClassInternal},
		{errors.Join(errors.New("a"), dial(syscall.ECONNREFUSED)), gateway.ClassRefused},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, gateway.ClassifyError(c.err, "", true).Class, "%v", c.err)
	}
}

func TestClassifyStatus(t *testing.T) {
	for status, want := range map[int]bool{502: true, 503: true, 504: true, 500: false, 501: false, 429: false, 200: false} {
		assert.Equal(t, want, gateway.IsFailureStatus(status), "%d", status)
	}
	now := time.Now()
	assert.Nil(t, gateway.ClassifyStatus(500, nil, "", now), "500 is the application's own error")
	assert.Nil(t, gateway.ClassifyStatus(404, nil, "", now))
	assert.Nil(t, gateway.ClassifyStatus(429, nil, "", now))
	f := gateway.ClassifyStatus(503, map[string][]string{"Retry-After": {"30"}}, "h:1", now)
	require.NotNil(t, f)
	assert.Equal(t, gateway.ClassUpstreamStatus, f.Class)
	assert.Equal(t, 503, f.StatusCode())
	assert.Equal(t, 30*time.Second, f.RetryAfter)
	assert.True(t, f.Sent)
}

// FuzzClassify builds arbitrary error chains and checks that
// classification never panics and always yields a valid class and status,
// and that failures before a connection are never marked sent.
func FuzzClassify(f *testing.F) {
	f.Add([]byte{0, 1, 2}, true)
	f.Add([]byte{5, 9, 3, 14}, false)
	f.Add([]byte{}, true)
	leaves := []error{
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EHOSTUNREACH, syscall.ETIMEDOUT, syscall.EPIPE,
		io.EOF, io.ErrUnexpectedEOF, context.Canceled, context.DeadlineExceeded, net.ErrClosed,
		&net.DNSError{Err: "no such host", IsNotFound: true}, x509.UnknownAuthorityError{}, errors.New("opaque"),
		nil,
	}
	f.Fuzz(func(t *testing.T, chain []byte, sent bool) {
		if len(chain) > 32 {
			chain = chain[:32]
		}
		var err error
		for _, b := range chain {
			switch b % 6 {
			case 0:
				err = leaves[int(b/6)%len(leaves)]
			case 1:
				err = fmt.Errorf("wrap: %w", err)
			case 2:
				if err != nil { // a nil Err makes net.OpError.Error panic
					err = &net.OpError{Op: []string{"dial", "read", "write", "remote error"}[b/6%4], Err: err}
				}
			case 3:
				if err != nil {
					err = os.NewSyscallError("connect", err)
				}
			case 4:
				err = errors.Join(err, leaves[int(b/6)%len(leaves)])
			case 5:
				if err != nil {
					err = gateway.ClassifyError(err, "h:1", sent)
				}
			}
		}
		c := gateway.ClassifyError(err, "", true).Class
		if c.String() == "" || c.Status() < 400 || c.Status() > 599 {
			t.Fatalf("class %d for %v", c, err)
		}
		if err == nil {
			return
		}
		var existing *gateway.Failure
		fresh := !errors.As(err, &existing)
		fl := gateway.ClassifyError(err, "h:1", sent)
		if fl.StatusCode() < 400 || fl.StatusCode() > 599 {
			t.Fatalf("status %d", fl.StatusCode())
		}
		// Unmeasured, the caller's sent flag is kept, except that a failed
		// dial can never have sent anything.
		if fresh && !sent && fl.Sent {
			t.Fatalf("the caller's sent=false was lost: %v", err)
		}
		var op *net.OpError
		if fresh && errors.As(err, &op) && op.Op == "dial" && fl.Sent {
			t.Fatalf("a failed dial was marked sent: %v", err)
		}
		_ = fl.Error()
		_ = fl.Hint()
	})
}

// TestMeasuredSentIsKept: an error from an established connection can fall
// into a "connection" class (EHOSTUNREACH on a live connection, a TLS alert
// after the handshake); when the request was measured as sent, it stays
// sent, so a POST is not retried. Unmeasured, only dial-phase errors clear
// the caller's sent flag.
func TestMeasuredSentIsKept(t *testing.T) {
	live := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.EHOSTUNREACH)}
	f := gateway.ClassifyError(live, "h:1", true)
	assert.Equal(t, gateway.ClassUnreachable, f.Class)
	assert.True(t, f.Sent, "unreachable on a live connection may follow a sent request")
	alert := &net.OpError{Op: "remote error", Err: errors.New("tls: internal error")}
	assert.True(t, gateway.ClassifyError(alert, "h:1", true).Sent)

	dial := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}
	assert.False(t, gateway.ClassifyError(dial, "h:1", true).Sent, "a failed dial sent nothing")
	assert.False(t, gateway.ClassifyError(errors.New("x"), "h:1", false).Sent, "the caller's false is kept")
}

// TestTransportKeepsInnerFailure: a Base that returns a classified Failure
// (a breaker, a pool) keeps its class, status and Retry-After.
func TestTransportKeepsInnerFailure(t *testing.T) {
	inner := gateway.NewFailure(gateway.ClassOpen, "h:1", nil)
	inner.RetryAfter = 7 * time.Second
	tr := &gateway.Transport{Base: roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, inner })}
	req, _ := http.NewRequest("GET", "http://h:1/", nil)
	_, err := tr.RoundTrip(req)
	assert.Same(t, inner, err)
}
