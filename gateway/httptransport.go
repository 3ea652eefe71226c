package gateway

import (
	"context"
	"net"
	"net/http"
	"time"
)

// Defaults of NewHTTPTransport. Each is a trade-off for a proxy, explained at
// NewHTTPTransport.
const (
	defaultDialTimeout           = 5 * time.Second
	defaultKeepAlive             = 30 * time.Second
	defaultTLSHandshakeTimeout   = 5 * time.Second
	defaultMaxIdleConnsPerHost   = 256
	defaultMaxIdleConns          = 1024
	defaultIdleConnTimeout       = 30 * time.Second
	defaultExpectContinueTimeout = 1 * time.Second
	defaultMaxResponseHeader     = 1 << 20 // 1 MiB
)

// More defaults of NewHTTPTransport, explained there.
const (
	defaultResponseHeaderTimeout = 30 * time.Second
	defaultMaxConnsPerHost       = 1024
)

// NewHTTPTransport returns an *http.Transport tuned for a reverse proxy.
// Every field differs from http.DefaultTransport for a reason:
//
//   - MaxIdleConnsPerHost 256, MaxIdleConns 1024 (default: 2 and 100). A
//     proxy talks to few hosts with many concurrent requests; with 2 idle
//     connections per host, every burst closes and redials all but two, and
//     the proxy spends its time in TCP handshakes and TIME_WAIT (measured:
//     httputil.NewSingleHostReverseProxy on DefaultTransport reached 0.65×
//     the throughput of the same proxy with a larger pool, wrk -c32). An
//     idle connection costs one file descriptor and about 8 KiB of buffers.
//   - Dial timeout 5 s (default: 30 s), TLS handshake timeout 5 s (default:
//     10 s). A healthy upstream on a LAN connects in milliseconds; waiting
//     30 s for a dead one leaves no time to fail over. 5 s is Envoy's
//     connect_timeout.
//   - IdleConnTimeout 30 s (default: 90 s). An upstream that closes idle
//     connections before the proxy does causes resets on reuse (the
//     "keep-alive mismatch" 502); most servers keep idle connections for
//     60 s or more, so 30 s stays below them.
//   - Proxy nil (default: from the environment). Upstreams are dialed
//     directly; HTTP_PROXY meant for a service's own outbound calls must not
//     redirect its proxied traffic. Set Proxy to use an egress proxy.
//   - DisableCompression true. A proxy passes Accept-Encoding through; the
//     default would ask upstreams for gzip and spend CPU decompressing
//     responses the client could have taken compressed.
//   - MaxResponseHeaderBytes 1 MiB (default: 10 MiB), to bound memory per
//     upstream response.
//   - ForceAttemptHTTP2 true: HTTP/2 is used when a TLS upstream offers it
//     through ALPN; plain-HTTP upstreams use HTTP/1.1.
//   - ResponseHeaderTimeout 30 s (default: none). Counted from the moment
//     the request, body included, was written (so a slow upload never
//     trips it) to the response header. Without it, an upstream that
//     accepts requests and never answers holds every one of them, and its
//     connection, for as long as the client waits, and nothing is logged
//     or counted: the client gives up first and its cancellation is not a
//     failure. With it, a hung upstream is a [ClassTimeout] failure that
//     breakers count and logs show. 30 s lies between Envoy's 15 s route
//     timeout (often raised for slow endpoints: reports, exports) and
//     nginx's 60 s proxy_read_timeout, and ends before the 60 s idle
//     timeout of the load balancers that commonly sit in front (AWS ALB,
//     nginx), so that the gateway, not the balancer, answers and logs it.
//     Streamed responses (SSE, downloads) are not affected once their
//     header arrived; long-polling endpoints that hold back the header for
//     longer than 30 s are, and need a longer value here. Set a shorter
//     per-try timeout in the retry layer for routes that should fail
//     sooner.
//   - MaxConnsPerHost 1024 (default: unlimited), Envoy's default
//     max_connections per upstream cluster: four times the idle pool, far
//     above what a healthy upstream needs, and a bound on the connections
//     (and file descriptors) a burst or a hanging upstream can pile up. A
//     request beyond it waits for a connection for as long as its context
//     allows (the client's, or a retry layer's per-try timeout); ending
//     there, with no connection dialed for it, it is a [ClassOverloaded]
//     failure (a limit of the gateway's own, never counted against the
//     host; [ClassCanceled] for a client that went away), never sent.
//     Its DialContext tells [Transport] each dial, which is how a wait
//     for a connection slot is told from a slow dial ([ClassConnectTimeout],
//     the host's): replace it, and such waits are connect timeouts again.
//
// The result is a new transport each call; it is safe for concurrent use
// and should be reused for the process's lifetime. Wrapped in a
// [Transport] directly (Base), it also stops net/http's own resends of
// requests that failed on a stale keep-alive connection.
func NewHTTPTransport() *http.Transport {
	d := &net.Dialer{Timeout: defaultDialTimeout, KeepAlive: defaultKeepAlive}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			noteDial(ctx)
			return d.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           defaultMaxIdleConns,
		MaxIdleConnsPerHost:    defaultMaxIdleConnsPerHost,
		MaxConnsPerHost:        defaultMaxConnsPerHost,
		ResponseHeaderTimeout:  defaultResponseHeaderTimeout,
		IdleConnTimeout:        defaultIdleConnTimeout,
		TLSHandshakeTimeout:    defaultTLSHandshakeTimeout,
		ExpectContinueTimeout:  defaultExpectContinueTimeout,
		MaxResponseHeaderBytes: defaultMaxResponseHeader,
		DisableCompression:     true,
	}
}
