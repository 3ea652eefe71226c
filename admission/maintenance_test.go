package admission_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/admission"
	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/pool"
)

// maintRig is errorpage around a Maintenance around a counting handler.
type maintRig struct {
	m       *admission.Maintenance
	reached atomic.Int64
	h       http.Handler
}

func newMaintRig(t *testing.T) *maintRig {
	r := &maintRig{m: &admission.Maintenance{
		Allow:  func(req *http.Request) bool { return req.URL.Path == "/healthz" },
		Logger: discard,
	}}
	pages, err := errorpage.New(errorpage.Options{Brand: errorpage.Brand{Name: "Acme"}, Logger: discard})
	require.NoError(t, err)
	r.h = pages.Wrap(r.m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		r.reached.Add(1)
		_, _ = io.WriteString(w, "served\n")
	})))
	return r
}

func (r *maintRig) get(path, accept string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Header.Set("Accept", accept)
	w := httptest.NewRecorder()
	r.h.ServeHTTP(w, req)
	return w
}

// TestMaintenance: while on, every request is answered 503 with
// Retry-After and a page that says the maintenance is planned and until
// when, without reaching what it wraps; requests Allow approves pass; off
// again, everything passes.
func TestMaintenance(t *testing.T) {
	r := newMaintRig(t)
	assert.Equal(t, 200, r.get("/", "text/html").Code, "off by default")

	until := time.Now().Add(90 * time.Minute)
	require.NoError(t, r.m.Start(until))
	st := r.m.State()
	assert.True(t, st.On)
	assert.Equal(t, until.UTC().Truncate(time.Minute).Add(time.Minute), st.Until, "the end, rounded up to the minute")

	before := r.reached.Load()
	w := r.get("/orders", "text/html")
	assert.Equal(t, 503, w.Code)
	ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
	require.NoError(t, err)
	assert.InDelta(t, time.Until(st.Until).Seconds(), ra, 2, "Retry-After: until the announced end")
	body := w.Body.String()
	assert.Contains(t, body, "planned maintenance")
	shown := until.UTC().Truncate(time.Minute).Add(time.Minute).Format("2006-01-02 15:04 UTC")
	assert.Contains(t, body, "expected to end at <strong><time datetime=")
	assert.Contains(t, body, shown)

	w = r.get("/orders", "application/json")
	assert.Equal(t, 503, w.Code)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &doc))
	assert.Equal(t, "maintenance", doc["class"])
	assert.NotEmpty(t, doc["until"])
	assert.Equal(t, before, r.reached.Load(), "nothing reached the service")

	w = r.get("/healthz", "text/html")
	assert.Equal(t, 200, w.Code, "Allow lets health checks through")
	assert.Equal(t, before+1, r.reached.Load())

	// No announced end: Retry-After is the default, the page names no time.
	require.NoError(t, r.m.Start(time.Time{}))
	w = r.get("/", "text/html")
	assert.Equal(t, 503, w.Code)
	assert.Equal(t, "60", w.Header().Get("Retry-After"))
	assert.Contains(t, w.Body.String(), "This is planned maintenance. Nothing is wrong with your request.")

	assert.Error(t, r.m.Start(time.Now().Add(-time.Minute)), "an end in the past is refused")
	assert.True(t, r.m.State().On, "and changes nothing")

	r.m.Stop()
	assert.False(t, r.m.State().On)
	assert.Equal(t, 200, r.get("/", "text/html").Code)
}

// TestMaintenanceAlone: without a layer outside, the answer is the
// gateway's plain 503, and the failure is logged once.
func TestMaintenanceAlone(t *testing.T) {
	var m admission.Maintenance
	m.Logger = discard
	require.NoError(t, m.Start(time.Now().Add(time.Hour)))
	w := httptest.NewRecorder()
	m.Wrap(http.NotFoundHandler()).ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	assert.Equal(t, 503, w.Code)
	assert.NotEmpty(t, w.Header().Get("Retry-After"))
	assert.Contains(t, w.Body.String(), gateway.ClassMaintenance.Explanation())
}

// adminRig serves NewAdmin on loopback.
type adminRig struct {
	srv *httptest.Server
	lim *admission.Limiter
	m   *admission.Maintenance
}

const token = "s3cret-token-for-tests"

func newAdminRig(t *testing.T, configure ...func(*http.Server)) *adminRig {
	lim, err := admission.New(admission.Settings{Logger: discard})
	require.NoError(t, err)
	u, _ := url.Parse("http://10.0.0.5:8080")
	lim.Watch(u)
	m := &admission.Maintenance{Logger: discard}
	h, err := admission.NewAdmin(admission.AdminOptions{Token: token, Limiter: lim, Maintenance: m, Logger: discard})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/admin/", h)
	srv := httptest.NewUnstartedServer(mux)
	for _, c := range configure {
		c(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return &adminRig{srv: srv, lim: lim, m: m}
}

func (r *adminRig) do(t *testing.T, method, path, auth string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, r.srv.URL+path, nil)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func (r *adminRig) draining() bool {
	for _, s := range r.lim.Status() {
		if s.State == pool.StateDraining || s.State == pool.StateDrained {
			return true
		}
	}
	return false
}

// TestAdminAuth: every admin request needs the token; without it, or with
// a wrong one, the answer is 401 and nothing changes.
func TestAdminAuth(t *testing.T) {
	r := newAdminRig(t)
	for _, auth := range []string{"", "Bearer wrong", "Bearer " + token + "x", "Basic " + token, token, "Bearer"} {
		status, _ := r.do(t, "POST", "/admin/drain?upstream=10.0.0.5:8080", auth)
		assert.Equal(t, 401, status, "%q", auth)
		status, _ = r.do(t, "POST", "/admin/maintenance?for=1h", auth)
		assert.Equal(t, 401, status, "%q", auth)
		status, _ = r.do(t, "GET", "/admin/upstreams", auth)
		assert.Equal(t, 401, status, "%q", auth)
	}
	assert.False(t, r.draining())
	assert.False(t, r.m.State().On)

	_, err := admission.NewAdmin(admission.AdminOptions{})
	assert.ErrorContains(t, err, "needs a Token")
	_, err = admission.NewAdmin(admission.AdminOptions{Token: "has space"})
	assert.Error(t, err)
}

// TestAdminOperations: drain and resume an upstream, maintenance on and
// off; malformed requests get 400 and change nothing; an unknown upstream
// 404; a wrong method 405.
func TestAdminOperations(t *testing.T) {
	r := newAdminRig(t)
	auth := "Bearer " + token

	for _, path := range []string{"/admin/drain", "/admin/drain?upstream=", "/admin/drain?upstream=nohost",
		"/admin/drain?upstream=10.0.0.5:8080&x=1", "/admin/drain?upstream=10.0.0.5:8080&upstream=10.0.0.5:8080",
		"/admin/drain?upstream=10.0.0.5:8080&wait=soon", "/admin/drain?upstream=10.0.0.5:8080&wait=1h"} {
		status, body := r.do(t, "POST", path, auth)
		assert.Equal(t, 400, status, "%s: %s", path, body)
	}
	assert.False(t, r.draining(), "malformed requests changed nothing")
	status, _ := r.do(t, "POST", "/admin/drain?upstream=10.9.9.9:1", auth)
	assert.Equal(t, 404, status)
	status, _ = r.do(t, "GET", "/admin/drain?upstream=10.0.0.5:8080", auth)
	assert.Equal(t, 405, status)

	status, body := r.do(t, "POST", "/admin/drain?upstream=http://10.0.0.5:8080&wait=1s", auth)
	assert.Equal(t, 200, status, body)
	assert.Contains(t, body, `"state": "drained"`)
	status, body = r.do(t, "GET", "/admin/upstreams", auth)
	assert.Equal(t, 200, status)
	assert.Contains(t, body, `"upstream": "10.0.0.5:8080"`)
	status, body = r.do(t, "POST", "/admin/resume?upstream=10.0.0.5:8080", auth)
	assert.Equal(t, 200, status)
	assert.Contains(t, body, `"state": "serving"`)

	for _, path := range []string{"/admin/maintenance?for=soon", "/admin/maintenance?until=tomorrow",
		"/admin/maintenance?for=1h&until=2030-01-01T00:00:00Z", "/admin/maintenance?until=2001-01-01T00:00:00Z",
		"/admin/maintenance?for=-1h", "/admin/maintenance?reason=x"} {
		status, body := r.do(t, "POST", path, auth)
		assert.Equal(t, 400, status, "%s: %s", path, body)
	}
	assert.False(t, r.m.State().On, "malformed requests changed nothing")
	status, body = r.do(t, "POST", "/admin/maintenance?for=45m", auth)
	assert.Equal(t, 200, status, body)
	assert.True(t, r.m.State().On)
	assert.WithinDuration(t, time.Now().Add(45*time.Minute), r.m.State().Until, time.Minute)
	status, body = r.do(t, "GET", "/admin/maintenance", auth)
	assert.Equal(t, 200, status)
	assert.True(t, strings.Contains(body, `"on": true`), body)
	status, _ = r.do(t, "PUT", "/admin/maintenance", auth)
	assert.Equal(t, 405, status)
	status, _ = r.do(t, "DELETE", "/admin/maintenance", auth)
	assert.Equal(t, 200, status)
	assert.False(t, r.m.State().On)
	status, _ = r.do(t, "GET", "/admin/nothing", auth)
	assert.Equal(t, 404, status)
}

// TestAdminSaysWhatIsMissing: a drain or resume without its upstream is
// told the parameter is missing, not that an empty name is malformed.
func TestAdminSaysWhatIsMissing(t *testing.T) {
	r := newAdminRig(t)
	for _, path := range []string{"/admin/drain", "/admin/drain?upstream=", "/admin/resume", "/admin/drain?wait=1s"} {
		status, body := r.do(t, "POST", path, "Bearer "+token)
		assert.Equal(t, 400, status, path)
		assert.Contains(t, body, "missing parameter upstream", path)
		assert.NotContains(t, body, `upstream \"\"`, path)
	}
	assert.False(t, r.draining())
}

// TestAdminAnySpelling: drain and resume find the upstream under any
// spelling of its host and port.
func TestAdminAnySpelling(t *testing.T) {
	r := newAdminRig(t)
	u, _ := url.Parse("http://localhost:19001")
	r.lim.Watch(u)
	for _, spelling := range []string{"LOCALHOST:19001", "localhost.:019001", "http://LocalHost:19001/"} {
		status, body := r.do(t, "POST", "/admin/drain?upstream="+url.QueryEscape(spelling), "Bearer "+token)
		assert.Equal(t, 200, status, "%s: %s", spelling, body)
		assert.Contains(t, body, `"upstream": "localhost:19001"`, spelling)
		status, body = r.do(t, "POST", "/admin/resume?upstream="+url.QueryEscape(spelling), "Bearer "+token)
		assert.Equal(t, 200, status, "%s: %s", spelling, body)
	}
	status, body := r.do(t, "POST", "/admin/drain?upstream="+url.QueryEscape("[::ffff:10.0.0.5]:8080"), "Bearer "+token)
	assert.Equal(t, 200, status, body)
	assert.Contains(t, body, `"upstream": "10.0.0.5:8080"`)
}

// TestMaintenanceOneEndTime: a maintenance started for a duration has one
// end time on the admin API, in the problem document and on the page
// (whose precision is the minute), and Retry-After counts down to it.
func TestMaintenanceOneEndTime(t *testing.T) {
	r := newAdminRig(t)
	pages, err := errorpage.New(errorpage.Options{Logger: discard})
	require.NoError(t, err)
	site := pages.Wrap(r.m.Wrap(http.NotFoundHandler()))

	status, body := r.do(t, "POST", "/admin/maintenance?for=30m", "Bearer "+token)
	require.Equal(t, 200, status, body)
	var st struct{ Until time.Time }
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	assert.Zero(t, st.Until.Second(), "a whole minute: what pages can show")
	assert.WithinDuration(t, time.Now().Add(30*time.Minute), st.Until, time.Minute)
	assert.False(t, st.Until.Before(time.Now().Add(30*time.Minute)), "never earlier than asked")

	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Accept", "application/json")
	w := httptest.NewRecorder()
	site.ServeHTTP(w, req)
	var doc struct{ Until string }
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &doc))
	assert.Equal(t, st.Until.Format(time.RFC3339), doc.Until, "the problem document's end is the admin's")
	ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
	require.NoError(t, err)
	assert.InDelta(t, time.Until(st.Until).Seconds(), ra, 2)

	req.Header.Set("Accept", "text/html")
	w = httptest.NewRecorder()
	site.ServeHTTP(w, req)
	assert.Contains(t, w.Body.String(), st.Until.Format("2006-01-02 15:04 UTC"), "the page's end is the admin's")
	assert.Contains(t, w.Body.String(), `datetime="`+st.Until.Format(time.RFC3339)+`"`)
}

// TestAdminDrainWaitOutlivesWriteTimeout: a drain that waits longer than
// the admin server's WriteTimeout still gets its answer (202 when the
// host did not drain in time).
func TestAdminDrainWaitOutlivesWriteTimeout(t *testing.T) {
	r := newAdminRig(t, func(s *http.Server) { s.WriteTimeout = 100 * time.Millisecond })
	release := make(chan struct{})
	held := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		<-release
		return &http.Response{StatusCode: 200, Body: http.NoBody, Request: req}, nil
	})
	rt := r.lim.Transport(held)
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest(http.MethodGet, "http://10.0.0.5:8080/", nil)
		if res, err := rt.RoundTrip(req); err == nil {
			res.Body.Close()
		}
	}()
	defer func() { close(release); <-done }()
	require.Eventually(t, func() bool {
		for _, s := range r.lim.Status() {
			if s.Active == 1 {
				return true
			}
		}
		return false
	}, 5*time.Second, time.Millisecond, "a request in flight to the host")

	status, body := r.do(t, "POST", "/admin/drain?upstream=10.0.0.5:8080&wait=600ms", "Bearer "+token)
	assert.Equal(t, http.StatusAccepted, status, body)
	assert.Contains(t, body, `"active": 1`)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
