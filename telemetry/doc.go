// Package telemetry records OpenTelemetry metrics and traces for a proxykit
// stack, following the OpenTelemetry HTTP semantic conventions, with
// proxykit's failure class as error.type.
//
// It is built on the stack's hooks only: the core packages (gateway,
// retry, breaker, errorpage, the root package) import no OpenTelemetry,
// and a program that does not import this package compiles none of it.
//
// One call wires it:
//
//	tel, err := telemetry.New(telemetry.Options{MeterProvider: mp, TracerProvider: tp})
//	st, err := tel.NewStack(proxykit.Config{Upstreams: targets})
//
// which is [Telemetry.Apply] on the Config, proxykit.New, and
// [Telemetry.Instrument] on the Stack.
//
// # Metrics
//
// Durations are in seconds, with the semantic conventions' bucket
// boundaries (5 ms … 10 s). Every attribute value comes from a closed set
// or from the configured upstreams (at most Options.MaxUpstreams, then
// "_OTHER"); no path, query, header or route is ever an attribute, so the
// number of series is bounded whatever the traffic.
//
//	http.server.request.duration   histogram, s: every request the stack answers
//	    http.request.method        GET, POST, … or _OTHER
//	    url.scheme                 http or https
//	    http.response.status_code  the status the client got; 499 for a
//	                               client that went away; absent if aborted mid-body
//	    error.type                 the failure class (refused, timeout, …), or
//	                               for a 5xx that is no gateway failure its code
//	http.client.request.duration   histogram, s: each upstream attempt, to its response header
//	    http.request.method, server.address, server.port (the upstream),
//	    http.response.status_code  absent when no response came
//	    error.type                 the class (open for a breaker fast-fail;
//	                               upstream_status for its own 502/503/504), or
//	                               the code of another 4xx/5xx
//	    proxykit.attempt.role      first, retry or hedge
//	http.client.active_requests    updowncounter (observed): requests in flight per upstream
//	    server.address, server.port
//	proxykit.retries               counter: retries decided
//	    error.type, server.address, server.port: of the attempt that failed
//	proxykit.retry.budget.denials  counter (observed): retries the budget refused
//	proxykit.breaker.transitions   counter: breaker state changes
//	    proxykit.breaker.state, proxykit.breaker.previous_state
//	                               closed, half_open, open
//	    server.address, server.port
//	proxykit.upstream.state        gauge (observed): 1 for each upstream's
//	                               current state, 0 for the others
//	    proxykit.upstream.state    serving, warming, resting, trial, out,
//	                               draining, drained
//	    server.address, server.port
//	    proxykit.upstream.source   where the host came from: static, or the
//	                               discovery source (dns+http://backend:8080)
//	proxykit.upstream.changes      counter: hosts that joined or left the set
//	    proxykit.upstream.source
//	    proxykit.upstream.change   added or removed
//	proxykit.upstream.hosts        gauge (observed): hosts in the set
//	    proxykit.upstream.source
//	proxykit.requests.without_upstream  counter: requests answered without reaching an upstream
//	    error.type                 no_upstream or open
//
// Hedges are counted as attempts with proxykit.attempt.role="hedge"
// (retry.IsHedge marks the hedge's context). The attempt a hedge beat is
// cancelled by the retry layer: its span gets a "hedge lost" event, not an
// error status.
//
// # Traces
//
// Each upstream attempt gets a client span, a child of the span in the
// request's context: the server span of otelhttp.NewHandler when the stack
// runs behind it. Without one, the trace context the client sent is
// linked from a new trace by default, so that a client cannot force its
// requests to be sampled; for clients Options.PublicEndpointFn trusts, the
// attempt continues their trace instead. Its name is
// the method; its attributes are the semantic conventions'
// (http.request.method, server.address, server.port, url.full with query
// values redacted unless Options.URLQueryValues lists them, http.response.status_code,
// http.request.resend_count from the second attempt on, error.type) and
// proxykit.attempt.role; a failed attempt has status Error. An attempt a
// breaker refused carries a "breaker open" event; a request the pool had
// no upstream for gets a "no upstream" event on the request's span. The
// span's trace context goes upstream in the traceparent header (W3C; or
// the configured propagator's format).
//
// # Beside otelhttp
//
// Run otelhttp.NewHandler outside the stack for the server span; the
// attempts' spans become its children, nothing is recorded twice. Both
// record http.server.request.duration: keep this package's, which carries
// error.type, by giving otelhttp a no-op MeterProvider, or keep otelhttp's
// with Options.OmitServerDuration. Do not wrap the stack's base transport
// in otelhttp.NewTransport: its spans would duplicate the attempts' spans.
package telemetry
