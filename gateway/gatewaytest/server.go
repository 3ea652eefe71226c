// Package gatewaytest provides upstreams that fail on purpose, on loopback,
// for testing proxies: like net/http/httptest, but for the ways an upstream
// breaks. Every fault is real: a closed port refuses at the TCP level, a
// reset is a TCP RST, a TLS fault is a real handshake with a bad
// certificate, and an unresolvable name is answered NXDOMAIN by a DNS
// responder on loopback.
//
// A Server's fault can be changed while it runs (SetFault), so one address
// can go down and come back. It counts the connections it accepted and the
// requests it read.
package gatewaytest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is how a Server misbehaves.
type Fault int

const (
	// Healthy serves requests with the Server's Handler.
	Healthy Fault = iota
	// Refused: nothing listens on the port; connections are refused
	// (ECONNREFUSED). The port stays reserved, so no other socket takes it.
	Refused
	// ResetOnAccept accepts each connection and resets it (TCP RST) at once,
	// before reading anything.
	ResetOnAccept
	// ResetAfterRequest reads each request, body included, then resets the
	// connection without answering. The request counts as received.
	ResetAfterRequest
	// Hang reads each request and never answers, until Close.
	Hang
	// SlowHeaders waits Delay before serving with the Handler.
	SlowHeaders
	// Garbage reads each request and answers bytes that are not HTTP.
	Garbage
	// CloseMidBody answers 200 with a Content-Length of 1 MiB, sends part of
	// the body, then resets the connection.
	CloseMidBody
	// Status answers every request with StatusCode (default 503) and, if
	// RetryAfter is set, a Retry-After header with that value.
	Status
	// Silent accepts each connection and never reads or writes: a TLS
	// handshake or an HTTP request on it waits until the client gives up.
	Silent
	// CloseAfterRequest reads each request, body included, then closes the
	// connection (a FIN, not a reset) without answering: what a client
	// meets when an upstream's keep-alive timeout closes a connection just
	// as a request goes out on it. On a reused connection, net/http's
	// Transport resends such a request by itself when it deems it
	// replayable. The request counts as received.
	CloseAfterRequest
)

var faultNames = [...]string{"healthy", "refused", "reset_on_accept", "reset_after_request",
	"hang", "slow_headers", "garbage", "close_mid_body", "status", "silent", "close_after_request"}

func (f Fault) String() string {
	if f >= 0 && int(f) < len(faultNames) {
		return faultNames[f]
	}
	return "fault(" + strconv.Itoa(int(f)) + ")"
}

// Server is an upstream on 127.0.0.1 with a switchable fault. Create it with
// NewServer, NewTLSServer or a NewXxx shorthand; call Close when done.
type Server struct {
	// URL is the base URL, "http://127.0.0.1:PORT" or "https://…".
	URL string
	// Addr is "127.0.0.1:PORT".
	Addr string

	// Handler serves Healthy and SlowHeaders requests. Nil means a handler
	// that reads the body and answers 200 "ok" with an X-Upstream header
	// naming the server's address. Set it before the first request.
	Handler http.Handler
	// Delay is how long SlowHeaders waits. Default 1 s.
	Delay time.Duration
	// StatusCode is the status of the Status fault. Default 503.
	StatusCode int
	// RetryAfter is the Retry-After value of the Status fault; "" for none.
	RetryAfter string
	// OnRequest, if set, is called for every request the server reads,
	// whatever its fault, before the fault applies; the body is not read
	// yet. Set it before the first request. It must be safe for concurrent
	// use. Load tests use it to find requests delivered twice.
	OnRequest func(r *http.Request)

	tlsConfig *tls.Config // nil: plain HTTP
	port      int

	mu         sync.Mutex
	fault      Fault
	flaky      Fault        // applied to a share of Healthy traffic
	flakyRatio float64      // that share, 0..1
	ln         net.Listener // nil while Refused
	blocker    *reservation // holds the port while Refused
	silent     []net.Conn   // connections held by Silent
	srv        *http.Server
	closed     bool
	done       chan struct{}
	wg         sync.WaitGroup // handler and serve goroutines

	accepts  atomic.Int64
	requests atomic.Int64
}

// NewServer starts a plain-HTTP Server with the given fault.
func NewServer(f Fault) *Server { return start(f, nil) }

// NewHealthy starts a healthy plain-HTTP Server serving h (nil: the default
// handler).
func NewHealthy(h http.Handler) *Server {
	s := start(Healthy, nil)
	s.Handler = h
	return s
}

// NewStatus starts a Server answering every request with code and, if
// retryAfter is not "", a Retry-After header.
func NewStatus(code int, retryAfter string) *Server {
	s := start(Status, nil)
	s.StatusCode, s.RetryAfter = code, retryAfter
	return s
}

// NewTLSServer starts a Server that speaks TLS with cfg (which must hold a
// certificate) and has the given fault.
func NewTLSServer(f Fault, cfg *tls.Config) *Server { return start(f, cfg) }

func start(f Fault, cfg *tls.Config) *Server {
	s := &Server{fault: f, tlsConfig: cfg, done: make(chan struct{}), Delay: time.Second, StatusCode: 503}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // faults are expected
	}
	s.srv.SetKeepAlivesEnabled(true)
	var err error
	if f == Refused {
		s.blocker, err = reserve(0)
		if err == nil {
			s.port = s.blocker.port
		}
	} else {
		var ln net.Listener
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			s.port = ln.Addr().(*net.TCPAddr).Port
			s.serve(ln)
		}
	}
	if err != nil {
		panic(fmt.Sprintf("gatewaytest: cannot listen on loopback: %v", err))
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	scheme := "http"
	if cfg != nil {
		scheme = "https"
	}
	s.URL = scheme + "://" + s.Addr
	return s
}

// serve starts serving on ln; s.mu must be held or s not yet shared.
func (s *Server) serve(ln net.Listener) {
	var l net.Listener = &faultListener{Listener: ln, s: s}
	if s.tlsConfig != nil {
		l = tls.NewListener(l, s.tlsConfig)
	}
	s.ln = ln
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.srv.Serve(l)
	}()
}

// SetFault changes the fault. It takes effect for the next connection
// (ResetOnAccept, Refused) or request (the others); connections already
// open stay open, except when switching to Refused, which closes the
// listener and every idle connection.
func (s *Server) SetFault(f Fault) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("gatewaytest: server closed")
	}
	if f == s.fault {
		return nil
	}
	switch {
	case f == Refused:
		_ = s.ln.Close()
		s.ln = nil
		s.srv.SetKeepAlivesEnabled(false) // closes idle connections too
		b, err := reserve(s.port)
		if err != nil {
			return fmt.Errorf("gatewaytest: reserving port %d: %w", s.port, err)
		}
		s.blocker = b
	case s.fault == Refused:
		ln, err := s.blocker.listen()
		if err != nil {
			return fmt.Errorf("gatewaytest: listening on port %d: %w", s.port, err)
		}
		s.blocker = nil
		s.srv.SetKeepAlivesEnabled(true)
		s.serve(ln)
	}
	s.fault = f
	return nil
}

// SetFlaky makes a Healthy server apply fault f to a random share ratio
// (0 to 1) of requests, or of connections for ResetOnAccept and Silent;
// the rest are served normally. SetFlaky(Healthy, 0) turns it off. Refused
// cannot be applied to a share: the kernel refuses, not the server.
func (s *Server) SetFlaky(f Fault, ratio float64) error {
	if f == Refused || ratio < 0 || ratio > 1 {
		return fmt.Errorf("gatewaytest: SetFlaky(%v, %v): want a fault other than refused and a ratio in [0, 1]", f, ratio)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flaky, s.flakyRatio = f, ratio
	return nil
}

// Fault returns the current fault.
func (s *Server) Fault() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fault
}

// effective returns the fault to apply now: the current one, or for a
// flaky healthy server, the flaky fault with its probability.
func (s *Server) effective() Fault {
	s.mu.Lock()
	f, flaky, ratio := s.fault, s.flaky, s.flakyRatio
	s.mu.Unlock()
	if f == Healthy && ratio > 0 && rand.Float64() < ratio {
		return flaky
	}
	return f
}

// Requests returns how many requests the server read (headers complete),
// whatever it did with them.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Accepts returns how many connections the server accepted.
func (s *Server) Accepts() int64 { return s.accepts.Load() }

// Close shuts the server down, ends hanging and slow requests, and waits
// for its goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	if s.blocker != nil {
		s.blocker.close()
	}
	for _, c := range s.silent {
		_ = c.Close()
	}
	s.silent = nil
	s.mu.Unlock()
	// Close connections first, then release hanging handlers: a handler
	// released while its connection is open would answer an implicit 200.
	_ = s.srv.Close()
	close(s.done)
	s.wg.Wait()
}

// faultListener applies ResetOnAccept and counts connections.
type faultListener struct {
	net.Listener
	s *Server
}

func (l *faultListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.s.accepts.Add(1)
		switch l.s.effectiveConn() {
		case ResetOnAccept:
			reset(c)
			continue
		case Silent:
			if !l.s.hold(c) {
				_ = c.Close()
			}
			continue
		}
		return c, nil
	}
}

// effectiveConn is the fault for a new connection: only connection-level
// faults are drawn here, so that a flaky request-level fault is drawn once,
// per request.
func (s *Server) effectiveConn() Fault {
	s.mu.Lock()
	f, flaky := s.fault, s.flaky
	s.mu.Unlock()
	if f == Healthy && (flaky == ResetOnAccept || flaky == Silent) {
		return s.effective()
	}
	return f
}

// effectiveRequest is the fault for a request read on a connection.
func (s *Server) effectiveRequest() Fault {
	s.mu.Lock()
	f, flaky := s.fault, s.flaky
	s.mu.Unlock()
	if f == Healthy && (flaky == ResetOnAccept || flaky == Silent) {
		return Healthy // drawn per connection instead
	}
	return s.effective()
}

// hold keeps c open, untouched, until Close. It reports false if the
// server is closed already.
func (s *Server) hold(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.silent = append(s.silent, c)
	return true
}

// reset closes c with a TCP RST instead of a FIN.
func reset(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = c.Close()
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	// Register under the lock, and not once Close began: a WaitGroup must
	// not grow from zero while Close waits on it.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	s.requests.Add(1)
	if s.OnRequest != nil {
		s.OnRequest(r)
	}
	switch s.effectiveRequest() {
	case Healthy:
		s.handler().ServeHTTP(w, r)
	case SlowHeaders:
		t := time.NewTimer(s.Delay)
		defer t.Stop()
		select {
		case <-t.C:
			s.handler().ServeHTTP(w, r)
		case <-s.done:
		case <-r.Context().Done():
		}
	case Status:
		_, _ = io.Copy(io.Discard, r.Body)
		if s.RetryAfter != "" {
			w.Header().Set("Retry-After", s.RetryAfter)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(s.StatusCode)
		_, _ = io.WriteString(w, http.StatusText(s.StatusCode)+" from upstream\n")
	case Hang:
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-s.done:
		case <-r.Context().Done():
		}
	case ResetAfterRequest:
		_, _ = io.Copy(io.Discard, r.Body)
		if c := hijack(w); c != nil {
			reset(c)
		}
	case CloseAfterRequest:
		_, _ = io.Copy(io.Discard, r.Body)
		if c := hijack(w); c != nil {
			_ = c.Close()
		}
	case Garbage:
		_, _ = io.Copy(io.Discard, r.Body)
		if c := hijack(w); c != nil {
			_, _ = io.WriteString(c, "SSH-2.0-definitely not HTTP\r\n\x00\x01\x02\r\n\r\n")
			_ = c.Close()
		}
	case CloseMidBody:
		_, _ = io.Copy(io.Discard, r.Body)
		if c := hijack(w); c != nil {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1048576\r\n\r\n")
			_, _ = c.Write(make([]byte, 4096))
			reset(c)
		}
	default: // ResetOnAccept and Refused never get here; be safe anyway
		if c := hijack(w); c != nil {
			reset(c)
		}
	}
}

// hijack takes over the connection, returning the TCP connection beneath
// any TLS so that reset sends an RST.
func hijack(w http.ResponseWriter) net.Conn {
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil
	}
	if tc, ok := c.(*tls.Conn); ok {
		// Garbage and partial bodies must still be readable through TLS.
		return &tlsResetConn{Conn: tc}
	}
	return c
}

// tlsResetConn writes through TLS but resets the underlying TCP connection.
type tlsResetConn struct{ *tls.Conn }

func (c *tlsResetConn) SetLinger(sec int) error {
	if tc, ok := c.NetConn().(*net.TCPConn); ok {
		return tc.SetLinger(sec)
	}
	return nil
}

func (s *Server) handler() http.Handler {
	if s.Handler != nil {
		return s.Handler
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Upstream", s.Addr)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
}
