package gatewaytest

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// UnresolvableHost is a name under the reserved .invalid TLD (RFC 6761).
// With a DNSServer's resolver it fails with NXDOMAIN at once, offline.
const UnresolvableHost = "upstream.proxykit.invalid"

// DNSServer is a DNS responder on 127.0.0.1 (UDP) that answers every query
// NXDOMAIN, so that name-resolution failures are deterministic and offline.
type DNSServer struct {
	// Addr is "127.0.0.1:PORT".
	Addr string

	conn    *net.UDPConn
	queries atomic.Int64
	wg      sync.WaitGroup
}

// NewDNSServer starts a DNSServer.
func NewDNSServer() *DNSServer {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		panic("gatewaytest: cannot listen on loopback UDP: " + err.Error())
	}
	d := &DNSServer{Addr: c.LocalAddr().String(), conn: c}
	d.wg.Add(1)
	go d.serve()
	return d
}

func (d *DNSServer) serve() {
	defer d.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := d.conn.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		if resp := nxdomain(buf[:n]); resp != nil {
			d.queries.Add(1)
			_, _ = d.conn.WriteToUDP(resp, from)
		}
	}
}

// nxdomain builds an NXDOMAIN answer to query q: same ID and question, no
// records. It returns nil for anything that is not a one-question query.
func nxdomain(q []byte) []byte {
	if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil
	}
	i := 12
	for i < len(q) && q[i] != 0 { // QNAME labels
		i += int(q[i]) + 1
	}
	i += 1 + 4 // the root label, QTYPE, QCLASS
	if i > len(q) {
		return nil
	}
	resp := make([]byte, i)
	copy(resp, q[:i])
	resp[2] = 0x80 | q[2]&0x79               // QR, opcode and RD from the query
	resp[3] = 0x80 | 3                       // RA, RCODE=NXDOMAIN
	binary.BigEndian.PutUint16(resp[6:], 0)  // ANCOUNT
	binary.BigEndian.PutUint16(resp[8:], 0)  // NSCOUNT
	binary.BigEndian.PutUint16(resp[10:], 0) // ARCOUNT
	return resp
}

// Queries returns how many queries were answered.
func (d *DNSServer) Queries() int64 { return d.queries.Load() }

// Resolver returns a pure-Go resolver that sends every query to d.
func (d *DNSServer) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "udp", d.Addr)
		},
	}
}

// DialContext dials like a net.Dialer (5 s timeout) that resolves names
// with d. Use it as an http.Transport's DialContext.
func (d *DNSServer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: 5 * time.Second, Resolver: d.Resolver()}
	return nd.DialContext(ctx, network, addr)
}

// Close stops the server.
func (d *DNSServer) Close() {
	_ = d.conn.Close()
	d.wg.Wait()
}
