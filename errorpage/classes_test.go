package errorpage_test

import (
	"bufio"
	"errors"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// hopRE matches one hop of the built-in page's chain: state, name, note.
var hopRE = regexp.MustCompile(`(?s)<li class="hop (\w+)"[^>]*>.*?<span class="name">([^<]*)</span>\s*<span class="note">([^<]*)</span>`)

func chain(body string) [][3]string {
	var out [][3]string
	for _, m := range hopRE.FindAllStringSubmatch(body, -1) {
		out = append(out, [3]string{m[1], html.UnescapeString(m[2]), m[3]})
	}
	return out
}

// TestClientBody: a client whose body could not be read gets a page that
// puts the fault on the browser → gateway link, not on the service, with
// the Failure's own status (400 malformed, 408 stalled, 413 too large) in
// every format, and advice that fits; the connection is closed after the
// response.
func TestClientBody(t *testing.T) {
	h := newHandler(t, errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}})
	cases := []struct {
		status      int
		title, note string
		where, todo string
	}{
		{400, "We couldn&#39;t read your request", "Unreadable request",
			"your request could not be read completely.", "Check your connection, then send the request again."},
		{408, "Your request didn&#39;t arrive completely", "Incomplete request",
			"your request did not arrive completely in time.", "Check your connection, then send the request again."},
		{413, "Your request is too large", "Too large",
			"your request is larger than Acme accepts.", "Send a smaller request: this one is larger than the site accepts."},
	}
	for _, c := range cases {
		t.Run(strconv.Itoa(c.status), func(t *testing.T) {
			f := gateway.NewFailure(gateway.ClassClientBody, secretUpstream, errors.New(secretError))
			f.Status = c.status

			w := serve(h.Wrap(fail(f)), "POST", "/upload", acceptAxios)
			assert.Equal(t, c.status, w.Code)
			assert.Equal(t, "close", w.Header().Get("Connection"))
			p := decodeProblem(t, w.Body.Bytes())
			assert.Equal(t, c.status, p.Status, "problem+json carries the Failure's own status")
			assert.Equal(t, http.StatusText(c.status), p.Title)
			assert.Equal(t, "client_body", p.Class)
			assertNoLeak(t, w.Body.String(), f)

			w = serve(h.Wrap(fail(f)), "PUT", "/upload", acceptChrome)
			body := w.Body.String()
			assert.Equal(t, c.status, w.Code)
			assert.Contains(t, body, "<title>"+strconv.Itoa(c.status)+" "+http.StatusText(c.status)+" · Acme</title>")
			assert.Contains(t, body, "<h1>"+c.title+"</h1>")
			assert.Equal(t, [][3]string{
				{"ok", "Your browser", "Working"},
				{"failed", "Acme", c.note},
				{"idle", "Service", "Not at fault"},
			}, chain(body), "the browser → gateway link failed; the service is not at fault")
			assert.Contains(t, body, "The problem is between your browser and Acme: "+c.where+
				" Nothing points to a problem with the service.")
			assert.Contains(t, body, "<li>"+c.todo)
			for _, down := range []string{"can&#39;t reach the service", "service is", "recovering", "unavailable",
				"needs a fix on our side", "usually clear up", "between Acme and the service"} {
				assert.NotContains(t, body, down, "nothing suggests the service is down")
			}
			assertNoLeak(t, body, f)

			text := serve(h.Wrap(fail(f)), "POST", "/upload", "text/plain").Body.String()
			assert.True(t, strings.HasPrefix(text, strconv.Itoa(c.status)+" "+http.StatusText(c.status)+"\n"), text)
			assert.Contains(t, text, "\n"+c.todo+"\n")
			assert.NotContains(t, text, "usually clear up")
		})
	}

	// HTTP/2 has no Connection header: a stream's failure is the stream's.
	r := httptest.NewRequest("POST", "/upload", nil)
	r.ProtoMajor, r.ProtoMinor = 2, 0
	w := httptest.NewRecorder()
	h.Wrap(fail(failure(gateway.ClassClientBody))).ServeHTTP(w, r)
	assert.Equal(t, 400, w.Code)
	assert.Empty(t, w.Header().Values("Connection"))
}

// TestClientBodyStalledClosesConnection: on a real socket, a client that
// declared 100 bytes and stalled after 10 gets its 408 at once, and the
// connection is not reused. Without Connection: close, net/http would first
// try to drain the rest of the body, and the response would wait for the
// stalled client (when no read deadline on the connection ends the wait).
func TestClientBodyStalledClosesConnection(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadFull(r.Body, make([]byte, 10)) // then, say, the body's read deadline fires
		f := gateway.NewFailure(gateway.ClassClientBody, "", errors.New("body stalled"))
		f.Status = http.StatusRequestTimeout
		gateway.RecordFailure(w, f)
		gateway.WriteFailure(w, r, f)
	})
	s := front(t, h.Wrap(inner))
	conn, err := net.Dial("tcp", s.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second))) // a guard, not a wait
	_, err = io.WriteString(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nAccept: application/json\r\n\r\n0123456789")
	require.NoError(t, err)

	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err, "the response came before the stalled body")
	_, err = io.Copy(io.Discard, res.Body)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusRequestTimeout, res.StatusCode)
	assert.True(t, res.Close, "Connection: close")
	// net/http still reads what remains of the body (up to 256 KiB) before
	// it closes; the client sends it late, then sees the close.
	_, err = io.WriteString(conn, "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890")
	require.NoError(t, err)
	_, err = br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the server closed the connection instead of reading a next request")
}

// TestStaleConn: a stale keep-alive connection that reaches the client is
// a 502 whose page blames the gateway → service link as transient.
func TestStaleConn(t *testing.T) {
	h := newHandler(t, errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}})
	f := failure(gateway.ClassStaleConn)
	w := serve(h.Wrap(fail(f)), "GET", "/", acceptChrome)
	body := w.Body.String()
	assert.Equal(t, 502, w.Code)
	assert.Empty(t, w.Header().Values("Connection"))
	assert.Contains(t, body, "<h1>The connection to the service was interrupted</h1>")
	assert.Equal(t, [][3]string{
		{"ok", "Your browser", "Working"},
		{"ok", "Acme", "Working"},
		{"failed", "Service", "Interrupted"},
	}, chain(body))
	assert.Contains(t, body, "Try again in a minute")
	assertNoLeak(t, body, f)

	p := decodeProblem(t, serve(h.Wrap(fail(f)), "GET", "/", acceptAxios).Body.Bytes())
	assert.Equal(t, 502, p.Status)
	assert.Equal(t, "stale_connection", p.Class)
}

// TestEveryClassHasCopy: every class has its own visitor copy, so a class
// added to gateway cannot silently fall back to internal's.
func TestEveryClassHasCopy(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	internal := chain(serve(h.Wrap(fail(failure(gateway.ClassInternal))), "GET", "/", acceptChrome).Body.String())
	for _, c := range gateway.Classes() {
		if c == gateway.ClassInternal || c == gateway.ClassCanceled {
			continue
		}
		body := serve(h.Wrap(fail(failure(c))), "GET", "/", acceptChrome).Body.String()
		assert.NotEqual(t, internal, chain(body), "%s has the internal class's copy", c)
	}
}

// TestRealClientBody: on real sockets, a malformed chunked body sent
// through the gateway's Transport to a healthy upstream is the client's
// failure: errorpage answers 400 client_body and closes the connection.
func TestRealClientBody(t *testing.T) {
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(up.Close)
	var lg logs
	h := newHandler(t, errorpage.Options{Logger: lg.logger()})
	s := front(t, h.Wrap(proxyTo(t, up.URL, lg.logger(), nil)))

	conn, err := net.Dial("tcp", s.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second))) // a guard, not a wait
	_, err = io.WriteString(conn, "POST /ok HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusBadRequest, res.StatusCode)
	assert.True(t, res.Close, "Connection: close")
	p := decodeProblem(t, body)
	assert.Equal(t, "client_body", p.Class)
	assert.Equal(t, 400, p.Status)
	assert.NotContains(t, string(body), up.Addr)
	_, err = br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the connection is not reused")
	assert.Empty(t, lg.lines(t, "WARN"), "the client's fault is no warning about the upstream")
	info := lg.lines(t, "INFO")
	if assert.Len(t, info, 1, "logged once") {
		assert.Equal(t, "client_body", info[0]["class"])
	}
}
