package gatewaytest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// CheckResponseController checks that a ResponseWriter wrapper keeps
// http.ResponseController working: wrap is applied to a handler that, over
// a real loopback server,
//
//   - sets read and write deadlines and flushes a first line, which the
//     client must receive while the handler still waits;
//   - sets a write deadline in the past, after which its writes must fail
//     (and the wrapper must not run the handler again: a failed write is
//     not something to retry);
//   - hijacks the connection and echoes a line back.
//
// Each request must reach the handler exactly once. Failures are reported
// on t.
func CheckResponseController(t testing.TB, wrap func(http.Handler) http.Handler) {
	t.Helper()
	var calls atomic.Int64
	release := make(chan struct{})
	deadlineErr := make(chan error, 1)
	errs := make(chan error, 8)
	front := httptest.NewServer(wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		rc := http.NewResponseController(w)
		switch r.URL.Path {
		case "/flush":
			errs <- rc.SetReadDeadline(time.Now().Add(time.Minute))
			errs <- rc.SetWriteDeadline(time.Now().Add(time.Minute))
			_, _ = io.WriteString(w, "first\n")
			errs <- rc.Flush()
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
			_, _ = io.WriteString(w, "second\n")
		case "/deadline":
			if err := rc.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
				deadlineErr <- err
				return
			}
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(make([]byte, 64<<10))
			if err := rc.Flush(); err == nil {
				deadlineErr <- errors.New("a write past the deadline succeeded")
				return
			}
			deadlineErr <- nil
		case "/hijack":
			c, brw, err := rc.Hijack()
			errs <- err
			if err != nil {
				return
			}
			defer c.Close()
			line, _ := brw.ReadString('\n')
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "+
				strconv.Itoa(len(line))+"\r\n\r\n"+line)
		}
	})))
	defer front.Close()

	// Flush and deadlines.
	res, err := front.Client().Get(front.URL + "/flush")
	if err != nil {
		t.Fatalf("flush request: %v", err)
	}
	br := bufio.NewReader(res.Body)
	first := make(chan string, 1)
	go func() { l, _ := br.ReadString('\n'); first <- l }()
	select {
	case l := <-first:
		if l != "first\n" {
			t.Errorf("flushed line = %q, want %q", l, "first\n")
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the flushed line did not arrive while the handler waited")
	}
	close(release)
	rest, err := io.ReadAll(br)
	res.Body.Close()
	if err != nil || string(rest) != "second\n" {
		t.Errorf("rest of the stream = %q, %v; want %q", rest, err, "second\n")
	}
	for _, what := range []string{"SetReadDeadline", "SetWriteDeadline", "Flush"} {
		if err := <-errs; err != nil {
			t.Errorf("%s through the wrapper: %v", what, err)
		}
	}

	// A write deadline in the past. A fresh connection: net/http's client
	// itself resends a GET that failed on a reused one.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if res, err := client.Get(front.URL + "/deadline"); err == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	select {
	case err := <-deadlineErr:
		if err != nil {
			t.Errorf("SetWriteDeadline through the wrapper: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the deadline handler did not finish")
	}

	// Hijack, both ways over the wire.
	c, err := net.DialTimeout("tcp", front.Listener.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\nhello over the wire\n")
	hres, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("hijacked response: %v", err)
	}
	body, err := io.ReadAll(hres.Body)
	if err != nil || string(body) != "hello over the wire\n" {
		t.Errorf("hijacked echo = %q, %v", body, err)
	}
	if err := <-errs; err != nil {
		t.Errorf("Hijack through the wrapper: %v", err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("the handler ran %d times for 3 requests", n)
	}
}
