package gateway

import (
	"fmt"
	"net/http"
)

// Class is the kind of an upstream failure. Every failure a proxy can see
// maps to exactly one Class; the zero value is [ClassInternal].
//
// A Class decides the status the client gets, whether a circuit breaker
// counts it, and (together with whether the request was sent) whether a
// retry is safe. The set is closed: code switching on Class may treat an
// unknown value as [ClassInternal].
type Class uint8

// The failure classes, in the order of the README's taxonomy table.
const (
	// ClassInternal is anything unrecognised. 502.
	ClassInternal Class = iota
	// ClassDNS: the upstream's name did not resolve (*net.DNSError). 502.
	ClassDNS
	// ClassRefused: nothing listens on the upstream port (ECONNREFUSED). 502.
	ClassRefused
	// ClassUnreachable: no route to the upstream (EHOSTUNREACH, ENETUNREACH). 502.
	ClassUnreachable
	// ClassConnectTimeout: the TCP or TLS handshake did not finish in time. 504.
	ClassConnectTimeout
	// ClassTLS: the TLS handshake failed: untrusted or mismatched
	// certificate, plain HTTP on a TLS port, protocol alert. 502.
	ClassTLS
	// ClassReset: the connection was reset or closed before a full response
	// header arrived. 502.
	ClassReset
	// ClassMalformed: the upstream answered something that is not valid HTTP. 502.
	ClassMalformed
	// ClassTimeout: the request was sent but no response header arrived in
	// time (response-header timeout or per-try deadline). 504.
	ClassTimeout
	// ClassUpstreamStatus: the upstream itself answered 502, 503 or 504.
	// The status is the upstream's own.
	ClassUpstreamStatus
	// ClassOpen: the circuit breaker for the upstream is open; the upstream
	// was not contacted. 503 with Retry-After.
	ClassOpen
	// ClassNoUpstream: every upstream is unavailable (all tried by this
	// request, resting, or behind an open breaker). 503 with Retry-After.
	ClassNoUpstream
	// ClassCanceled: the client went away. Logged as 499; nothing is written.
	ClassCanceled
	// ClassClientBody: the client's request body could not be read (a
	// malformed chunked encoding, a body that stalled past its read
	// deadline, a body over a size limit), or the request's deadline passed
	// while its body was still arriving. The client's fault, never the
	// upstream's: 400 (408 when the body timed out), not counted by breakers
	// or health, never retried.
	ClassClientBody
	// ClassStaleConn: a reused keep-alive connection was closed by the
	// upstream before it answered (the keep-alive race). It says nothing
	// about the host's health; the request is retried at once when the
	// retry policy allows (always if nothing was sent). 502 if it reaches
	// the client.
	ClassStaleConn
	// ClassOverloaded: the upstream host is at its concurrency limit and
	// the request was shed before reaching it, to keep the host's latency
	// and goodput; or the request waited for a free connection to the host
	// (the transport's MaxConnsPerHost) until its deadline. A limit of the
	// gateway's own: 503 with Retry-After; not a failure of the host;
	// another host may take a retry.
	ClassOverloaded
	// ClassMaintenance: the service is in planned maintenance; the request
	// was not sent. 503 with Retry-After (until the maintenance ends, when
	// known); not a failure; never retried.
	ClassMaintenance
	// ClassResponseRejected: the upstream answered, and the proxy's own
	// ModifyResponse hook rejected the answer (see [WrapModifyResponse]).
	// A decision of the gateway's code, not a fault of the upstream: 502,
	// not counted by breakers, health or limits, never retried or hedged.
	ClassResponseRejected

	numClasses = iota
)

// statusClientClosedRequest is the status logged for a client that went away
// before the response was ready (nginx's 499). It is never written to the
// wire: there is nobody left to read it.
const statusClientClosedRequest = 499

// classInfo is the static knowledge about one Class. The table is immutable.
type classInfo struct {
	name    string
	status  int
	breaker bool // counts as a failure for a circuit breaker
	explain string
	hint    string // operator hint; %s is the upstream host:port
}

var classTable = [numClasses]classInfo{
	ClassInternal: {"internal", http.StatusBadGateway, true,
		"The gateway could not get a response from the service, for a reason it did not recognise.",
		"unclassified error talking to %s; the wrapped error in the gateway log has the detail"},
	ClassDNS: {"dns", http.StatusBadGateway, true,
		"The gateway could not find the service's address: its name did not resolve.",
		"the upstream name for %s does not resolve; check the DNS record, the resolver the gateway uses, and the spelling in the configuration"},
	ClassRefused: {"refused", http.StatusBadGateway, true,
		"The service refused the connection: nothing is accepting requests at its address right now.",
		"nothing is listening on %s; is the application running, on that port, and does the firewall allow the gateway?"},
	ClassUnreachable: {"unreachable", http.StatusBadGateway, true,
		"The gateway has no network route to the service.",
		"no route to %s; check that the host is up, the address is right, and routing or security groups allow the gateway"},
	ClassConnectTimeout: {"connect_timeout", http.StatusGatewayTimeout, true,
		"The service did not accept a connection in time.",
		"connecting to %s timed out; the host may be down or overloaded (full accept queue), or a firewall drops packets silently"},
	ClassTLS: {"tls", http.StatusBadGateway, true,
		"The gateway could not establish a secure connection to the service.",
		"the TLS handshake with %s failed; check the certificate (trusted issuer, name matching the upstream host, not expired) and that the port speaks TLS, not plain HTTP"},
	ClassReset: {"reset", http.StatusBadGateway, true,
		"The service closed the connection before it finished answering.",
		"%s closed or reset the connection before a full response header; look for a crash or restart, an exhausted worker pool, or a keep-alive timeout shorter than the gateway's idle timeout"},
	ClassMalformed: {"malformed", http.StatusBadGateway, true,
		"The service sent an answer the gateway could not understand.",
		"%s answered with something that is not valid HTTP; is it the right port and protocol (HTTP/1.1 vs gRPC, TLS vs plain), and are its response headers within limits?"},
	ClassTimeout: {"timeout", http.StatusGatewayTimeout, true,
		"The service took too long to answer.",
		"%s accepted the request but sent no response header in time; check its latency and saturation, or raise the per-try timeout if the endpoint is legitimately slow"},
	ClassUpstreamStatus: {"upstream_status", http.StatusBadGateway, true,
		"The service reported that it cannot handle the request right now.",
		"%s answered with a 5xx gateway status itself; check the service's own logs and its dependencies"},
	ClassOpen: {"open", http.StatusServiceUnavailable, false,
		"The service failed repeatedly, so the gateway is giving it a short rest before trying again.",
		"the circuit breaker for %s is open after repeated failures; requests resume with probes when the open period ends"},
	ClassNoUpstream: {"no_upstream", http.StatusServiceUnavailable, false,
		"No instance of the service is available right now.",
		"every upstream was tried by this request, is resting, or is behind an open breaker (last: %s); check the pool's health"},
	ClassCanceled: {"canceled", statusClientClosedRequest, false,
		"The request was canceled before the service answered.",
		"the client went away while %s was handling the request; not an upstream fault"},
	ClassClientBody: {"client_body", http.StatusBadRequest, false,
		"The request could not be read completely from the client.",
		"reading the client's request body for %s failed (malformed chunked encoding, a stalled upload, or a size limit); a client fault, not an upstream one"},
	ClassStaleConn: {"stale_connection", http.StatusBadGateway, false,
		"The connection to the service was closed before it answered.",
		"%s closed a reused keep-alive connection before answering; if this is frequent, make the gateway's idle timeout shorter than the upstream's keep-alive timeout"},
	ClassOverloaded: {"overloaded", http.StatusServiceUnavailable, false,
		"The service is busier than it can handle right now, so the gateway turned this request away to keep it responsive.",
		"the request to %s was turned away at a limit of the gateway's own: the host's adaptive concurrency limit, or every connection the transport may open to it (MaxConnsPerHost) busy (the error says which); add capacity, raise the limit, or look for what holds the connections"},
	ClassMaintenance: {"maintenance", http.StatusServiceUnavailable, false,
		"The service is down for planned maintenance.",
		"the gateway is in maintenance mode (last upstream: %s); requests are answered without reaching an upstream until it is switched off"},
	ClassResponseRejected: {"response_rejected", http.StatusBadGateway, false,
		"The gateway declined to pass on the service's answer.",
		"the proxy's ModifyResponse hook rejected the answer of %s; a decision of the gateway's own code, not an upstream fault: the hook's error is in the gateway log"},
}

func (c Class) info() *classInfo {
	if c >= numClasses {
		c = ClassInternal
	}
	return &classTable[c]
}

// String returns the class's name as it appears in logs, problem documents
// and metrics: "dns", "refused", "connect_timeout", and so on.
func (c Class) String() string { return c.info().name }

// MarshalText implements encoding.TextMarshaler, so a Class encodes as its name.
func (c Class) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for class names.
func (c *Class) UnmarshalText(b []byte) error {
	for i := range classTable {
		if classTable[i].name == string(b) {
			*c = Class(i)
			return nil
		}
	}
	return fmt.Errorf("gateway: unknown failure class %q", b)
}

// Status returns the HTTP status a client gets for the class. For
// [ClassUpstreamStatus] it is 502; a Failure of that class carries the
// upstream's own status instead. For [ClassCanceled] it is 499, which is
// logged but never written.
func (c Class) Status() int { return c.info().status }

// CountsAsFailure reports whether a circuit breaker should count the class as
// a failure of the upstream. Open circuits, an empty pool and client
// cancellations are not the upstream's fault and do not count.
func (c Class) CountsAsFailure() bool { return c.info().breaker }

// Explanation returns one plain-language sentence for a visitor: what
// happened, without addresses or error text.
func (c Class) Explanation() string { return c.info().explain }

// Classes returns every Class, in taxonomy order. The slice is new on each call.
func Classes() []Class {
	cs := make([]Class, numClasses)
	for i := range cs {
		cs[i] = Class(i)
	}
	return cs
}
