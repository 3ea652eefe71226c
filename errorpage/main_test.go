package errorpage_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var discardLogger = slog.New(slog.DiscardHandler)

// The upstream address and error text of synthetic failures: neither may
// reach an untrusted client.
const (
	secretUpstream = "10.0.0.5:8080"
	secretError    = "dial tcp 10.0.0.5:8080: connect: connection refused (secret)"
)

var fixedNow = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

func clock() time.Time { return fixedNow }

// logs captures slog output as JSON lines, safely across goroutines.
type logs struct {
	gatewaytest.SafeBuffer
}

func (l *logs) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lines returns the captured lines at the given level ("" for all).
func (l *logs) lines(t *testing.T, level string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range l.Lines() {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		if level == "" || m["level"] == level {
			out = append(out, m)
		}
	}
	return out
}

// fail returns an inner handler that fails with f the way the gateway's
// ErrorHandler does: RecordFailure, then the minimal response.
func fail(f *gateway.Failure) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gateway.RecordFailure(w, f)
		if f.Class != gateway.ClassCanceled {
			gateway.WriteFailure(w, r, f)
		}
	})
}

func failure(c gateway.Class) *gateway.Failure {
	return gateway.NewFailure(c, secretUpstream, errors.New(secretError))
}

func newHandler(t testing.TB, o errorpage.Options) *errorpage.Handler {
	t.Helper()
	if o.Logger == nil {
		o.Logger = discardLogger
	}
	if o.Now == nil {
		o.Now = clock
	}
	h, err := errorpage.New(o)
	require.NoError(t, err)
	return h
}

// serve runs one request through handler in process.
func serve(handler http.Handler, method, target, accept string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	if accept != "" {
		r.Header.Set("Accept", accept)
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	handler.ServeHTTP(w, r)
	return w
}

// problemDoc is a decoded problem+json body.
type problemDoc struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Status     int    `json:"status"`
	Detail     string `json:"detail"`
	Instance   string `json:"instance"`
	RequestID  string `json:"request_id"`
	Class      string `json:"class"`
	RetryAfter int    `json:"retry_after"`
	Time       string `json:"time"`
	Hint       string `json:"hint"`
	Upstream   string `json:"upstream"`
	Attempts   int    `json:"attempts"`
	Error      string `json:"error"`
}

func decodeProblem(t *testing.T, body []byte) problemDoc {
	t.Helper()
	var p problemDoc
	dec := json.NewDecoder(bytes.NewReader(body))
	require.NoError(t, dec.Decode(&p), "body: %s", body)
	return p
}

// requestIDs matches the request IDs a page shows (26 characters of
// base32, as gateway.RequestID mints them).
var requestIDs = regexp.MustCompile(`\b[A-Z2-7]{26}\b`)

// assertNoLeak checks that a client-facing body carries neither the
// upstream's address nor error text nor the operator hint. The page's
// request ID is left out of the check: it is random, and may spell
// "EOF".
func assertNoLeak(t *testing.T, body string, f *gateway.Failure) {
	t.Helper()
	body = requestIDs.ReplaceAllString(body, "")
	host, port, _ := strings.Cut(f.Upstream, ":")
	if host != "" {
		assert.NotContains(t, body, host, "upstream host")
	}
	if port != "" {
		assert.NotContains(t, body, ":"+port, "upstream port")
	}
	if f.Err != nil {
		assert.NotContains(t, body, f.Err.Error())
	}
	for _, s := range []string{"dial ", "tcp ", "127.0.0.1", "x509", "tls:", "connection refused",
		"reset by peer", "EOF", "i/o timeout", "lookup ", "secret", "timeout awaiting", "malformed HTTP"} {
		assert.NotContains(t, body, s)
	}
	assert.NotContains(t, body, f.Hint())
}

// proxyTo returns a real ReverseProxy with the instrumented transport and
// the gateway's ErrorHandler, aimed at target.
func proxyTo(t *testing.T, target string, logger *slog.Logger, mod func(*http.Transport)) *httputil.ReverseProxy {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	base := gateway.NewHTTPTransport()
	if mod != nil {
		mod(base)
	}
	t.Cleanup(base.CloseIdleConnections)
	return &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:    &gateway.Transport{Base: base},
		ErrorHandler: gateway.NewErrorHandler(logger),
	}
}

// front serves h on a loopback server and returns a GET helper.
func front(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func get(t *testing.T, s *httptest.Server, method, path, accept string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, nil)
	require.NoError(t, err)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	res, err := s.Client().Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, body
}
