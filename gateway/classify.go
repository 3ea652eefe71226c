package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// progress is how far an attempt got, as measured by httptrace. The zero
// value means "unknown": classification then relies on the error alone.
type progress struct {
	known     bool // the fields below were measured
	connected bool // a connection (TCP, and TLS if any) was obtained
	sent      bool // request headers were written (they may have reached the upstream)
	responded bool // at least one response byte arrived
}

// ClassifyError returns a Failure for err, an error returned by an
// http.RoundTripper or recorded by a proxy, with the given upstream
// (host:port) and sent flag, which the caller should set to true when it
// does not know (the safe assumption). It never panics; a nil or
// unrecognised error is [ClassInternal]. [Transport] classifies more
// precisely, because it also knows how far the request got. Errors that can only happen before a connection
// exists (a failed dial or name lookup, a rejected TLS handshake) are never
// marked sent. If err already is or wraps a *Failure, that Failure is
// returned unchanged.
func ClassifyError(err error, upstream string, sent bool) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	return newFailure(err, upstream, progress{sent: sent})
}

// newFailure classifies err. When p was measured, p.sent is the truth:
// an error from an established connection can fall into a "connection"
// class too (EHOSTUNREACH on a live connection, a TLS alert after the
// handshake), so the class alone must not clear a measured sent flag.
func newFailure(err error, upstream string, p progress) *Failure {
	c := classify(err, p)
	sent := p.sent
	if !p.known && beforeConnection(err) {
		sent = false
	}
	return &Failure{Class: c, Status: c.Status(), Upstream: upstream, Sent: sent, Err: err}
}

// beforeConnection reports errors that only happen before a request can be
// written: a failed dial or lookup, or a TLS handshake the client rejected.
func beforeConnection(err error) bool {
	var (
		op  *net.OpError
		dns *net.DNSError
		rh  tls.RecordHeaderError
		cv  *tls.CertificateVerificationError
	)
	return (errors.As(err, &op) && op.Op == "dial") || errors.As(err, &dns) ||
		errors.As(err, &rh) || errors.As(err, &cv)
}

func classify(err error, p progress) Class {
	if err == nil {
		return ClassInternal
	}
	var f *Failure
	if errors.As(err, &f) {
		return f.Class
	}
	if errors.Is(err, context.Canceled) {
		return ClassCanceled
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return ClassDNS
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return ClassRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN), errors.Is(err, syscall.ENETDOWN):
		return ClassUnreachable
	}
	var op *net.OpError
	dialErr := errors.As(err, &op) && op.Op == "dial"
	if isTimeout(err) {
		// A timeout before a connection existed (dial, TLS handshake, waiting
		// for a pooled connection) is a connect timeout: nothing was sent.
		// Transport tells a wait for a free connection, with no dial of
		// its own, apart as ClassOverloaded when its Base reports dials.
		if dialErr || (p.known && !p.connected) {
			return ClassConnectTimeout
		}
		return ClassTimeout
	}
	if isTLSError(err) {
		return ClassTLS
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return ClassReset
	}
	var proto *textproto.ProtocolError
	if errors.As(err, &proto) {
		return ClassMalformed
	}
	// The upstream sent bytes, and the failure was neither a reset nor a
	// timeout: what it sent was not an HTTP response the transport accepts.
	if p.responded {
		return ClassMalformed
	}
	if dialErr {
		return ClassUnreachable
	}
	return ClassInternal
}

// isTimeout reports a deadline or an I/O timeout anywhere in the chain.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) {
		return true
	}
	// net.Error's Timeout, and http's unexported timeout errors (response
	// header timeout, TLS handshake timeout) all implement Timeout() bool.
	for e := err; e != nil; e = errors.Unwrap(e) {
		if t, ok := e.(interface{ Timeout() bool }); ok && t.Timeout() {
			return true
		}
	}
	return false
}

func isTLSError(err error) bool {
	// crypto/tls reports alerts it sends or receives as *net.OpError with
	// these operations.
	var op *net.OpError
	if errors.As(err, &op) && (op.Op == "local error" || op.Op == "remote error") {
		return true
	}
	var (
		rh   tls.RecordHeaderError
		al   tls.AlertError
		cv   *tls.CertificateVerificationError
		ua   x509.UnknownAuthorityError
		he   x509.HostnameError
		ci   x509.CertificateInvalidError
		ech  *tls.ECHRejectionError
		sysr x509.SystemRootsError
	)
	return errors.As(err, &rh) || errors.As(err, &al) || errors.As(err, &cv) ||
		errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) ||
		errors.As(err, &ech) || errors.As(err, &sysr)
}

// ClassifyStatus returns a Failure for an upstream response with the given
// status and header, or nil if the status is not a gateway failure. Only
// 502, 503 and 504 count: other 5xx are the application's own errors and
// pass through. Retry-After (seconds or HTTP-date, relative to now) is
// parsed into the Failure.
func ClassifyStatus(status int, h http.Header, upstream string, now time.Time) *Failure {
	if !IsFailureStatus(status) {
		return nil
	}
	f := &Failure{Class: ClassUpstreamStatus, Status: status, Upstream: upstream, Sent: true}
	if d, ok := ParseRetryAfter(h.Get("Retry-After"), now); ok {
		f.RetryAfter = d
	}
	return f
}

// IsFailureStatus reports whether an upstream's status is a gateway
// failure of its own: 502, 503 or 504 (class upstream_status). Other 5xx
// are the application's answers to one request.
func IsFailureStatus(status int) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable ||
		status == http.StatusGatewayTimeout
}

// UpstreamName returns the canonical name of the upstream that u addresses:
// host:port, so that one server has one name however its URL spells it.
// The host is lower-cased and loses a trailing dot ("LOCALHOST." is
// "localhost"); an IP address is written as net/netip writes it, an
// IPv4-mapped IPv6 address as IPv4 ("[::ffff:127.0.0.1]" is
// "127.0.0.1"); the port is a decimal number ("019001" is "19001"), the
// scheme's default when u has none ("svc" with http is "svc:80", with
// https "svc:443"). Every layer names an upstream this way, in failures,
// logs, breakers, limits, pools and the status view. It is an identity
// only: the outbound URL and Host header are left as the target gives
// them. A nil u or an empty host gives "". A name that is already
// canonical is returned without allocating.
func UpstreamName(u *url.URL) string {
	if u == nil {
		return ""
	}
	return hostPort(u.Scheme, u.Host)
}

// hostPort returns the canonical name of host (as in a URL) for scheme.
func hostPort(scheme, host string) string {
	if host == "" || isCanonical(host) {
		return host // the common case, without allocating
	}
	name, port := splitHostPort(host)
	switch n, ok := portNumber(port); {
	case ok:
		port = strconv.Itoa(n)
	case port == "":
		port = "80"
		if scheme == "https" || scheme == "wss" {
			port = "443"
		}
	} // else not a port number: kept as given, and the dial fails
	literal := len(name) > 1 && name[0] == '[' && name[len(name)-1] == ']'
	if literal {
		name = name[1 : len(name)-1]
	}
	if literal || strings.Trim(name, ".0123456789") == "" { // an IP address, if it parses
		if a, err := netip.ParseAddr(name); err == nil {
			return net.JoinHostPort(a.Unmap().String(), port)
		}
	}
	if len(name) > 1 {
		name = strings.TrimSuffix(name, ".")
	}
	return net.JoinHostPort(strings.ToLower(name), port)
}

// portNumber returns the value of port, a decimal number from 0 to 65535
// (leading zeros allowed).
func portNumber(port string) (int, bool) {
	if port == "" {
		return 0, false
	}
	n := 0
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return 0, false
		}
		if n = n*10 + int(port[i]-'0'); n > 65535 {
			return 0, false
		}
	}
	return n, true
}

// splitHostPort splits host (as in a URL) at the colon before its port,
// if it has one: after the closing bracket of an IPv6 literal, or the
// only colon of a name or IPv4 address. The port may be empty.
func splitHostPort(host string) (name, port string) {
	i := strings.LastIndexByte(host, ':')
	if i < 0 || (host[0] == '[' && host[i-1] != ']') || (host[0] != '[' && strings.IndexByte(host, ':') != i) {
		return host, ""
	}
	return host[:i], host[i+1:]
}

// isCanonical reports, without allocating, whether host is its own
// canonical name (see [UpstreamName]): a port in decimal without leading
// zeros, and a name in lower-case ASCII without a trailing dot, an IPv4
// address or a bracketed IPv6 address as netip writes it.
func isCanonical(host string) bool {
	name, port := splitHostPort(host)
	if _, ok := portNumber(port); !ok || name == "" || (port[0] == '0' && len(port) > 1) {
		return false
	}
	if name[0] == '[' {
		lit := name[1 : len(name)-1]
		a, err := netip.ParseAddr(lit)
		if err != nil || !a.Is6() || a.Is4In6() {
			return false
		}
		var buf [64]byte
		return string(a.AppendTo(buf[:0])) == lit
	}
	if name[len(name)-1] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' || c >= 0x80 {
			return false
		}
	}
	return true
}
