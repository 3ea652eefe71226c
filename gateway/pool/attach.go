package pool

import (
	"errors"
	"net"
	"net/http/httputil"
)

// Attach makes proxy route through p: it sets proxy.Rewrite to pick a host
// and proxy.Transport to p.Transport(proxy.Transport), in one call, so the
// two halves of a pool cannot be wired apart (without the Transport, an
// empty pool would surface as an internal error instead of no_upstream).
//
// What proxy already does keeps running. A Rewrite of its own runs first,
// on the outbound request, and the pool then routes what it produced (the
// target's scheme and host, the target's path prefix joined with the
// request's path). A Director, which ReverseProxy does not allow beside a
// Rewrite, is run the same way, and the client's address is then appended
// to X-Forwarded-For as ReverseProxy does for a Director. ModifyResponse,
// ErrorHandler and the rest are left alone. A nil proxy.Transport means
// http.DefaultTransport.
//
// Attach fails on a nil proxy, and on one already attached to a pool.
func (p *Pool) Attach(proxy *httputil.ReverseProxy) error {
	if proxy == nil {
		return errors.New("pool: Attach: nil ReverseProxy")
	}
	if _, ok := proxy.Transport.(*poolTransport); ok {
		return errors.New("pool: Attach: the ReverseProxy is already attached to a pool")
	}
	switch rewrite, director := proxy.Rewrite, proxy.Director; {
	case rewrite != nil:
		proxy.Rewrite = func(pr *httputil.ProxyRequest) {
			rewrite(pr)
			p.Rewrite(pr)
		}
	case director != nil:
		proxy.Director = nil
		proxy.Rewrite = func(pr *httputil.ProxyRequest) {
			director(pr.Out)
			p.Rewrite(pr)
			appendForwardedFor(pr)
		}
	default:
		proxy.Rewrite = p.Rewrite
	}
	proxy.Transport = p.Transport(proxy.Transport)
	return nil
}

// appendForwardedFor adds the client's IP to X-Forwarded-For, as
// ReverseProxy does after a Director.
func appendForwardedFor(pr *httputil.ProxyRequest) {
	ip, _, err := net.SplitHostPort(pr.In.RemoteAddr)
	if err != nil {
		return
	}
	h := pr.Out.Header
	prior, ok := pr.In.Header["X-Forwarded-For"]
	if ok && prior == nil {
		return // nil means: do not set it (ReverseProxy's convention)
	}
	if len(prior) > 0 {
		ip = joinComma(prior) + ", " + ip
	}
	h.Set("X-Forwarded-For", ip)
}

func joinComma(v []string) string {
	s := v[0]
	for _, x := range v[1:] {
		s += ", " + x
	}
	return s
}
