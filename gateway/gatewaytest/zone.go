package gatewaytest

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// UnresolvableHost is a name under the reserved .invalid TLD (RFC 6761).
// With the resolver of a Zone that does not hold it (an empty one), it
// fails with NXDOMAIN at once, offline.
const UnresolvableHost = "upstream.proxykit.invalid"

// SRV is one SRV record of a [Zone].
type SRV struct {
	Target           string // a name the Zone answers A/AAAA for
	Port             uint16
	Priority, Weight uint16
}

// Zone is a DNS server on 127.0.0.1 (UDP) that answers A, AAAA and SRV
// queries from records set at run time, for service-discovery tests: a
// name it holds is answered (with TTL 1 s; an empty NOERROR answer for a
// type it has no record of), any other name NXDOMAIN; so an empty Zone
// makes name-resolution failures deterministic and offline. SetDown makes
// it stop answering, as a DNS server that went away. It is safe for
// concurrent use.
type Zone struct {
	// Addr is "127.0.0.1:PORT": a resolver address (pool.DNSOptions).
	Addr string

	conn    *net.UDPConn
	mu      sync.Mutex
	addrs   map[string][]netip.Addr
	srvs    map[string][]SRV
	failing map[string]bool
	down    atomic.Bool
	queries atomic.Int64
	wg      sync.WaitGroup
}

// NewZone starts an empty Zone.
func NewZone() *Zone {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		panic("gatewaytest: cannot listen on loopback UDP: " + err.Error())
	}
	z := &Zone{Addr: c.LocalAddr().String(), conn: c, addrs: map[string][]netip.Addr{}, srvs: map[string][]SRV{}, failing: map[string]bool{}}
	z.wg.Add(1)
	go z.serve()
	return z
}

// fqdn is name in the Zone's key form: lower case, with the final dot.
func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// SetAddrs sets name's A and AAAA records to addrs (none: the name stays
// known, with no address).
func (z *Zone) SetAddrs(name string, addrs ...netip.Addr) {
	z.mu.Lock()
	z.addrs[fqdn(name)] = append([]netip.Addr(nil), addrs...)
	z.mu.Unlock()
}

// SetSRV sets name's SRV records.
func (z *Zone) SetSRV(name string, recs ...SRV) {
	z.mu.Lock()
	z.srvs[fqdn(name)] = append([]SRV(nil), recs...)
	z.mu.Unlock()
}

// SetFailing makes the Zone answer queries for name with SERVFAIL (a
// server failure, which a resolver reports as temporary), or answer them
// again.
func (z *Zone) SetFailing(name string, failing bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.failing[fqdn(name)] = failing
}

// SetDown makes the Zone drop every query (down) or answer again.
func (z *Zone) SetDown(down bool) { z.down.Store(down) }

// Queries returns how many queries the Zone answered.
func (z *Zone) Queries() int64 { return z.queries.Load() }

// Resolver returns a pure-Go resolver that sends every query to z.
func (z *Zone) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "udp", z.Addr)
		},
	}
}

// DialContext dials like a net.Dialer (5 s timeout) that resolves names
// with z. Use it as an http.Transport's DialContext.
func (z *Zone) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: 5 * time.Second, Resolver: z.Resolver()}
	return nd.DialContext(ctx, network, addr)
}

// Close stops the Zone.
func (z *Zone) Close() {
	_ = z.conn.Close()
	z.wg.Wait()
}

func (z *Zone) serve() {
	defer z.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := z.conn.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		if z.down.Load() {
			continue
		}
		if resp := z.answer(buf[:n]); resp != nil {
			z.queries.Add(1)
			_, _ = z.conn.WriteToUDP(resp, from)
		}
	}
}

// answer builds the answer to the query q, or nil for what is not one.
func (z *Zone) answer(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	question, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(question.Name.String())
	z.mu.Lock()
	addrs, hasAddrs := z.addrs[name]
	srvs, hasSRV := z.srvs[name]
	failing := z.failing[name]
	z.mu.Unlock()
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	switch {
	case failing:
		rh.RCode = dnsmessage.RCodeServerFailure
		addrs, srvs = nil, nil
	case !hasAddrs && !hasSRV:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(question) != nil || b.StartAnswers() != nil {
		return nil
	}
	res := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 1}
	switch question.Type {
	case dnsmessage.TypeA:
		for _, a := range addrs {
			if a.Is4() {
				_ = b.AResource(res, dnsmessage.AResource{A: a.As4()})
			}
		}
	case dnsmessage.TypeAAAA:
		for _, a := range addrs {
			if a.Is6() && !a.Is4In6() {
				_ = b.AAAAResource(res, dnsmessage.AAAAResource{AAAA: a.As16()})
			}
		}
	case dnsmessage.TypeSRV:
		for _, s := range srvs {
			target, err := dnsmessage.NewName(fqdn(s.Target))
			if err != nil {
				continue
			}
			_ = b.SRVResource(res, dnsmessage.SRVResource{Priority: s.Priority, Weight: s.Weight, Port: s.Port, Target: target})
		}
	}
	msg, err := b.Finish()
	if err != nil {
		return nil
	}
	return msg
}
