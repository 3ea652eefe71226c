package pool

import (
	"errors"
	"net/http"
	"net/http/httputil"
)

// Attach makes proxy route through p: it sets proxy's Rewrite or Director
// to pick a host and proxy.Transport to p.Transport(proxy.Transport), in
// one call, so the two halves of a pool cannot be wired apart (without the
// Transport, an empty pool would surface as an internal error instead of
// no_upstream).
//
// What proxy already does keeps running, in the mode ReverseProxy runs it
// in, and the pool changes only where the request goes: after the proxy's
// own Rewrite or Director, it points the outbound URL at the host it
// picked (scheme and host replaced, the target's path prefix joined with
// the path, the target's query merged, as [httputil.ProxyRequest.SetURL]
// does to the URL).
//
// The Host header is the hook's. After a hook that routes (sets the URL's
// host, as SetURL does) it stays as the hook left it: with a Rewrite, empty
// after SetURL (the picked target's host is sent), the inbound Host if the
// Rewrite kept it (pr.Out.Host = pr.In.Host), or its own; with a Director,
// the inbound Host unless the Director set one. A Host the hook set is kept
// in any case. Only after a hook that leaves both routing and Host to the
// pool is the picked target's host sent, as with the pool alone.
//
//   - A Director stays a Director, so ReverseProxy's Director-mode
//     handling is untouched: X-Forwarded-For appended (or omitted when the
//     Director set it to nil), the client's X-Forwarded-Host and -Proto
//     passed, the query forwarded as sent unless the Director parsed the
//     form.
//   - With neither hook, the pool's [Pool.Rewrite] is the Rewrite: the
//     target's host is sent as Host, and no X-Forwarded-* header is set.
//
// ModifyResponse, ErrorHandler and the rest are left alone. A nil
// proxy.Transport means http.DefaultTransport.
//
// Attach fails on a nil proxy, on one with both a Rewrite and a Director
// (which ReverseProxy refuses at every request), and on one already
// attached to a pool.
func (p *Pool) Attach(proxy *httputil.ReverseProxy) error {
	if proxy == nil {
		return errors.New("pool: Attach: nil ReverseProxy")
	}
	if _, ok := proxy.Transport.(*poolTransport); ok {
		return errors.New("pool: Attach: the ReverseProxy is already attached to a pool")
	}
	switch rewrite, director := proxy.Rewrite, proxy.Director; {
	case rewrite != nil && director != nil:
		return errors.New("pool: Attach: the ReverseProxy has both a Rewrite and a Director, which ReverseProxy refuses; keep one")
	case rewrite != nil:
		proxy.Rewrite = func(pr *httputil.ProxyRequest) {
			rewrite(pr)
			p.route(pr.In, pr.Out, pr.In.Host, pr.In.URL.Host)
		}
	case director != nil:
		proxy.Director = func(r *http.Request) {
			host, urlHost := r.Host, r.URL.Host
			director(r)
			p.route(r, r, host, urlHost)
		}
	default:
		proxy.Rewrite = p.Rewrite
	}
	proxy.Transport = p.Transport(proxy.Transport)
	return nil
}

// route points out's URL at the host the pool picks for in, as
// [Pool.Rewrite] does. The Host header is the user's hook's: kept as the
// hook left it when the hook routed (set the URL's host, as SetURL does)
// or set a Host of its own; only after a hook that left routing to the
// pool and the Host untouched is it the picked target's, as with the pool
// alone. inHost and inURLHost are out's Host and URL host before the hook.
func (p *Pool) route(in, out *http.Request, inHost, inURLHost string) {
	host := out.Host
	keep := out.URL.Host != inURLHost || host != inHost
	p.Rewrite(&httputil.ProxyRequest{In: in, Out: out})
	if keep && out.URL.Scheme != noUpstreamScheme {
		out.Host = host
	}
}
