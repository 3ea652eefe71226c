package gatewaytest

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
)

// InMemory is an http.RoundTripper that answers every request itself, with
// no network, while behaving as a transport that reached a healthy upstream
// over a reused connection: it fires the ClientTrace hooks a real transport
// fires (GetConn, GotConn, WroteHeaders, WroteRequest, GotFirstResponseByte), reads
// and closes the request body, and returns a 200 with Body. It keeps the
// network out of benchmarks, so that a proxy's own cost dominates.
type InMemory struct {
	// Body is the response body.
	Body string
}

// RoundTrip implements http.RoundTripper.
func (m InMemory) RoundTrip(req *http.Request) (*http.Response, error) {
	tr := httptrace.ContextClientTrace(req.Context())
	if tr != nil && tr.GetConn != nil {
		tr.GetConn(req.URL.Host)
	}
	if tr != nil && tr.GotConn != nil {
		tr.GotConn(httptrace.GotConnInfo{Reused: true})
	}
	if tr != nil && tr.WroteHeaders != nil {
		tr.WroteHeaders()
	}
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	if tr != nil && tr.WroteRequest != nil {
		tr.WroteRequest(httptrace.WroteRequestInfo{})
	}
	if tr != nil && tr.GotFirstResponseByte != nil {
		tr.GotFirstResponseByte()
	}
	return &http.Response{
		Status:        "200 OK",
		StatusCode:    http.StatusOK,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "Content-Length": {strconv.Itoa(len(m.Body))}},
		Body:          io.NopCloser(strings.NewReader(m.Body)),
		ContentLength: int64(len(m.Body)),
		Request:       req,
	}, nil
}
