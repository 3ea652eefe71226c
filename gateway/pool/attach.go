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
// in, and the pool changes only where the request goes:
//
//   - A Rewrite of its own runs first; the pool then points the outbound
//     URL at the host it picked (scheme and host replaced, the target's
//     path prefix joined with the path, the target's query merged, as
//     [httputil.ProxyRequest.SetURL] does) and leaves the outbound Host
//     header as the Rewrite left it: empty after the Rewrite's own SetURL
//     (the picked target's host is sent), or whatever the Rewrite set.
//   - A Director stays a Director: it runs first, then the pool points the
//     URL at the picked host as above, leaving req.Host alone (the inbound
//     Host, unless the Director set one). ReverseProxy's Director-mode
//     handling is untouched: X-Forwarded-For appended (or omitted when the
//     Director set it to nil), the client's X-Forwarded-Host and
//     -Proto passed, the query forwarded as sent unless the Director
//     parsed the form.
//   - With neither, the pool's [Pool.Rewrite] is the Rewrite: the target's
//     host is sent as Host, and no X-Forwarded-* header is set.
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
			p.route(pr.In, pr.Out)
		}
	case director != nil:
		proxy.Director = func(r *http.Request) {
			director(r)
			p.route(r, r)
		}
	default:
		proxy.Rewrite = p.Rewrite
	}
	proxy.Transport = p.Transport(proxy.Transport)
	return nil
}

// route points out's URL at the host the pool picks for in, as
// [Pool.Rewrite] does, and keeps out.Host: the user's routing decided the
// Host header, the pool only where to connect.
func (p *Pool) route(in, out *http.Request) {
	host := out.Host
	p.Rewrite(&httputil.ProxyRequest{In: in, Out: out})
	if out.URL.Scheme != noUpstreamScheme {
		out.Host = host
	}
}
