package retry

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestReplayTotalBoundsStalledUploads: concurrent chunked
// PUTs that stall midway hold at most MaxReplayTotal of replay buffers
// together; the uploads that found no room stream on unkept, and every
// upload, kept or not, reaches the upstream whole and byte-exact once the
// clients go on. Every buffer is given back when its request ends.
func TestReplayTotalBoundsStalledUploads(t *testing.T) {
	const (
		uploads = 5
		first   = 40 << 10 // sent before the stall: the buffer grows to 64 KiB
		size    = 60 << 10 // within MaxReplayBytes: each could be kept whole
		perReq  = 64 << 10
		total   = 2 * perReq
	)
	arrived := make(chan struct{}, uploads)
	up := gatewaytest.NewHealthy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		head := make([]byte, first)
		if _, err := io.ReadFull(r.Body, head); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		arrived <- struct{}{}
		h := hashUpstream()
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(head), r.Body))
		h.ServeHTTP(w, r)
	}))
	closeLater(t, up)
	rt := mustNew(t, Options{MaxReplayBytes: perReq, MaxReplayTotal: total})
	front := serve(t, rt.Wrap(newProxy(t, ordered(t, up))))

	release := make(chan struct{})
	results := make(chan response, uploads)
	for range uploads {
		pr, pw := io.Pipe()
		go func() {
			body := &pattern{n: size}
			if _, err := io.CopyN(pw, body, first); err != nil {
				pw.CloseWithError(err)
				return
			}
			<-release
			_, err := io.Copy(pw, body)
			pw.CloseWithError(err)
		}()
		req := newRequest(t, t.Context(), http.MethodPut, front.URL, pr)
		go func() {
			res, err := front.Client().Do(req)
			if err != nil {
				results <- response{err: err}
				return
			}
			defer res.Body.Close()
			_, err = io.Copy(io.Discard, res.Body)
			results <- response{status: res.StatusCode, header: res.Header, err: err}
		}()
	}
	for range uploads {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			close(release)
			t.Fatal("the uploads did not reach the upstream")
		}
	}

	// Every upload is stalled with 40 KiB read: a kept one holds a 64 KiB
	// buffer, and at most two fit.
	s := rt.Stats()
	assert.LessOrEqual(t, s.ReplayBytes, int64(total))
	assert.GreaterOrEqual(t, s.ReplaySkipped, int64(uploads-2))
	assert.Equal(t, int64(perReq)*(uploads-s.ReplaySkipped), s.ReplayBytes, "kept uploads hold one full buffer each")
	t.Logf("stalled: %d KiB held by %d kept uploads, %d skipped", s.ReplayBytes>>10, uploads-s.ReplaySkipped, s.ReplaySkipped)

	close(release)
	want := sha(size)
	for range uploads {
		res := <-results
		require.NoError(t, res.err)
		assert.Equal(t, http.StatusOK, res.status)
		assert.Equal(t, want, res.header.Get("X-Body-Sha256"), "byte-exact, kept or not")
		assert.Equal(t, strconv.Itoa(size), res.header.Get("X-Body-Len"))
	}
	assert.Eventually(t, func() bool { return rt.Stats().ReplayBytes == 0 }, 10*time.Second, time.Millisecond,
		"every buffer is given back when its request ends")
}

// TestReplayTotalReleasedAfterPanic: a handler that panics after reading
// part of the body gives its replay buffer back on the way up; the panic
// goes on unchanged.
func TestReplayTotalReleasedAfterPanic(t *testing.T) {
	type boom struct{}
	rt := mustNew(t, Options{})
	h := rt.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.CopyN(io.Discard, r.Body, 10<<10)
		require.NoError(t, err)
		require.Positive(t, rt.Stats().ReplayBytes)
		panic(boom{})
	}))
	req := httptest.NewRequest(http.MethodPut, "http://front.test/", &pattern{n: 100 << 10})
	req.ContentLength = -1
	func() {
		defer func() { assert.Equal(t, boom{}, recover()) }()
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	assert.Zero(t, rt.Stats().ReplayBytes)
}

// TestReplayTotalReleasedWithReaderOut: a request that ends while its body
// reader is still out (a transport's write loop blocked in the client's
// Read after RoundTrip returned) gives its replay buffer back when it ends,
// not when that read returns.
func TestReplayTotalReleasedWithReaderOut(t *testing.T) {
	rt := mustNew(t, Options{})
	src := newSource(3000, 1000).gated()
	late := make(chan error, 1)
	h := rt.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := r.Body
		go func() {
			_, err := body.Read(make([]byte, 1000))
			assert.NoError(t, err)
			_, err = body.Read(make([]byte, 1000))
			late <- err
		}()
		<-src.entered
		src.gate <- struct{}{} // the first read completes
		<-src.entered          // the second is in flight
		assert.Positive(t, rt.Stats().ReplayBytes)
		_, _ = io.WriteString(w, "answered without the rest of the body")
	}))
	req := httptest.NewRequest(http.MethodPut, "http://front.test/", nil)
	req.Body, req.ContentLength = src, -1
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Zero(t, rt.Stats().ReplayBytes, "given back while the read is still out")
	close(src.gate)
	assert.ErrorIs(t, <-late, errDetached)
	assert.Zero(t, rt.Stats().ReplayBytes)
}
