package proxykit

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
	"github.com/proxykit/proxykit/gateway/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewRequiresUpstreams(t *testing.T) {
	_, err := New(Config{})
	assert.Error(t, err)
}

// TestStack: with one of two upstreams down, every request succeeds; with
// both down the client gets a classified problem document, and the status
// view shows it all.
func TestStack(t *testing.T) {
	ok := gatewaytest.NewHealthy(nil)
	defer ok.Close()
	down := gatewaytest.NewServer(gatewaytest.Refused)
	defer down.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(ok.URL), mustParse(down.URL)}, Logger: quiet, Pages: errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}}})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st.Handler)
	defer front.Close()

	for i := 0; i < 10; i++ {
		res, err := front.Client().Get(front.URL + "/")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.NotEmpty(t, res.Header.Get("X-Request-Id"))
	}

	require.NoError(t, ok.SetFault(gatewaytest.Refused))
	st.Hosts.Allows(ok.Addr)
	res, err := front.Client().Get(front.URL + "/orders")
	require.NoError(t, err)
	var problem map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&problem))
	res.Body.Close()
	assert.Contains(t, []int{502, 503}, res.StatusCode)
	assert.Equal(t, "application/problem+json", res.Header.Get("Content-Type"))
	assert.Contains(t, []any{"refused", "no_upstream"}, problem["class"])
	assert.Equal(t, res.Header.Get("X-Request-Id"), problem["request_id"])

	rec := httptest.NewRecorder()
	st.Status.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	var rep status.Report
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep))
	assert.Len(t, rep.Upstreams, 2)
	require.NotNil(t, rep.Traffic)
	assert.EqualValues(t, 11, rep.Traffic.Requests)
	assert.EqualValues(t, 10, rep.Traffic.ByStatus["2xx"])
}

func mustParse(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestRequestTimeout: a hung upstream under Config.RequestTimeout ends in
// the stack's own branded 504 (class timeout), in about the timeout.
func TestRequestTimeout(t *testing.T) {
	hung := gatewaytest.NewServer(gatewaytest.Hang)
	defer hung.Close()
	st, err := New(Config{Upstreams: []*url.URL{mustParse(hung.URL)}, Logger: quiet, RequestTimeout: 150 * time.Millisecond})
	require.NoError(t, err)
	defer st.Close()
	front := httptest.NewServer(st)
	defer front.Close()
	req, _ := http.NewRequest("GET", front.URL+"/", nil)
	req.Header.Set("Accept", "application/json")
	start := time.Now()
	res, err := front.Client().Do(req)
	require.NoError(t, err)
	var problem map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&problem))
	res.Body.Close()
	assert.Equal(t, http.StatusGatewayTimeout, res.StatusCode)
	assert.Equal(t, "timeout", problem["class"])
	assert.Less(t, time.Since(start), 5*time.Second, "bounded by the request timeout, not the transport's")

	_, err = New(Config{Upstreams: []*url.URL{mustParse(hung.URL)}, RequestTimeout: -1})
	assert.Error(t, err)
}
