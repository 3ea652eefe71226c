// Package gateway is proxykit's shared vocabulary and the glue to
// net/http/httputil.ReverseProxy.
//
// Every upstream failure is classified into one of 18 [Class] values
// (dns, refused, unreachable, connect_timeout, tls, reset, malformed,
// timeout, upstream_status, open, no_upstream, canceled, client_body,
// stale_connection, overloaded, maintenance, response_rejected, internal;
// see [Classes]) and
// carried as a [*Failure], which wraps the original error, knows the client
// status, the upstream, whether the request was sent, and explains itself
// in plain words for visitors ([Class.Explanation]) and with a hint for
// operators ([Failure.Hint]).
//
// The pieces:
//
//   - [Transport] wraps any http.RoundTripper, measures with httptrace
//     whether each request was sent, tells the client's body errors from
//     the upstream's, stops net/http's own resends on stale keep-alive
//     connections, and returns classified failures; [NewHTTPTransport] is
//     an http.Transport tuned for proxies, with bounded waits and
//     connections by default.
//   - [NewErrorHandler] returns a ReverseProxy ErrorHandler: it hands the Failure to
//     the enclosing layer, writes an honest status without error text, and
//     logs one line; a client that went away is logged as 499, not as a 502.
//   - [Interceptor] holds a response's status back until a [Decider] has
//     seen it, then passes or discards it: the mechanism behind the retry,
//     breaker and errorpage packages. Failures travel outward along the
//     ResponseWriter chain ([RecordFailure]), so layers never parse errors;
//     a [CommitObserver] learns of upgrades.
//   - A [Trail] records the upstreams one request tried, for balancers
//     (package gateway/pool) and for naming the upstream of a failure.
//   - [RequestID] keeps or mints an X-Request-ID and forwards it upstream;
//     [ClientBodyTimeout] ends uploads that stall.
//   - [BufferPool] bounds ReverseProxy's copy buffers.
//
// The upstream pool and balancer live in package gateway/pool, the Monitor
// and status view in package status. Package gatewaytest has
// fault-injecting upstreams for tests.
package gateway
