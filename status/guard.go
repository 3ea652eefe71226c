package status

import (
	"net"
	"net/http"
	"strings"
)

// ReadOnly guards an operator's read-only handler (a [View]) for an admin
// listener:
//
//   - only GET and HEAD are served; other methods get 405 with Allow;
//   - the Host header must name the listener itself, as [SameHost] checks.
//
// ReadOnly does not authenticate: bind the admin listener to loopback or a
// private interface.
func ReadOnly(h http.Handler, hosts ...string) http.Handler {
	return SameHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed: the status view is read-only", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	}), hosts...)
}

// SameHost serves h only for requests whose Host header names the
// listener itself: a loopback name ("localhost", 127.0.0.0/8, [::1]) or
// one of hosts (host or host:port, compared without the port, ignoring
// case). Anything else gets 421 Misdirected Request. This defeats DNS
// rebinding, where a web page the operator visits points its own name at
// the admin address and reads or drives what is served there. hosts are
// typically the admin listener's configured address.
func SameHost(h http.Handler, hosts ...string) http.Handler {
	allowed := make(map[string]bool, len(hosts))
	for _, a := range hosts {
		allowed[strings.ToLower(stripPort(a))] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := strings.ToLower(stripPort(r.Host))
		if !allowed[host] && !loopbackName(host) {
			http.Error(w, "misdirected request: unknown Host for the admin listener", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// stripPort returns hostport without its port and IPv6 brackets.
func stripPort(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// loopbackName reports "localhost" or a loopback IP address.
func loopbackName(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsLoopback reports whether addr (host:port or host, as given to a
// listener) binds only to the loopback interface. An empty host or an
// unspecified address (":8080", "0.0.0.0") binds every interface and is
// not loopback.
func IsLoopback(addr string) bool {
	host := stripPort(addr)
	return host != "" && loopbackName(strings.ToLower(host))
}
