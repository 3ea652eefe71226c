package gateway_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

// TestForkRace: forked before its handler reached the header map, an
// attempt races the fork; each writes a map of its own, starting from the
// underlying one; the first to pass wins and only its response reaches the
// client; the loser's Decider is not asked and its writes are swallowed.
func TestForkRace(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("X-Outer", "kept")
	var asked []string
	decider := func(name string) gateway.Decider {
		return deciderFunc(func(s int, h http.Header, f *gateway.Failure) gateway.Decision {
			asked = append(asked, name)
			assert.Equal(t, name, h.Get("X-From"), "each attempt's own headers")
			return gateway.Pass
		})
	}
	first := gateway.NewInterceptor(rec, decider("first"))
	second := first.Fork(decider("second"))
	require.NotNil(t, second)

	second.Header().Set("X-From", "second")
	assert.Equal(t, "kept", second.Header().Get("X-Outer"), "a copy of the underlying map")
	first.Header().Set("X-From", "first")
	first.Header().Del("X-Outer")
	assert.Empty(t, rec.Header().Get("X-From"), "nothing reaches the client while racing")

	second.WriteHeader(http.StatusAccepted)
	_, err := second.Write([]byte("second's"))
	require.NoError(t, err)
	first.WriteHeader(http.StatusOK)
	n, err := first.Write([]byte("first's"))
	require.NoError(t, err)
	assert.Equal(t, 7, n, "a loser's writes are swallowed as if written")

	assert.Equal(t, []string{"second"}, asked, "the loser's Decider is not asked")
	assert.Equal(t, http.StatusAccepted, rec.Code)
	assert.Equal(t, "second's", rec.Body.String())
	assert.Equal(t, []string{"second"}, rec.Header().Values("X-From"))
	assert.Equal(t, "kept", rec.Header().Get("X-Outer"), "the loser's Del never happened")
	assert.True(t, second.Committed())
	assert.True(t, first.Discarded())
	assert.Equal(t, "second", second.Header().Get("X-From"), "the winner's map is the client's now")
	second.Header().Set("X-Trailer-Like", "late")
	assert.Equal(t, "late", rec.Header().Get("X-Trailer-Like"))
	assert.Nil(t, first.Fork(passAll), "no fork once an attempt won")

	// Reset after a race restores nothing: the client's map is the winner's.
	first.Reset(httptest.NewRecorder(), passAll)
	assert.Equal(t, "kept", rec.Header().Get("X-Outer"))
}

// TestForkTooLate: once the handler reached the header map (its response
// arrived, or it set headers), the attempt cannot be forked.
func TestForkTooLate(t *testing.T) {
	rec := httptest.NewRecorder()
	i := gateway.NewInterceptor(rec, passAll)
	i.Header().Set("X-A", "1")
	assert.Nil(t, i.Fork(passAll))
	i.WriteHeader(http.StatusOK)
	assert.Equal(t, "1", rec.Header().Get("X-A"))

	j := gateway.NewInterceptor(httptest.NewRecorder(), passAll)
	j.WriteHeader(http.StatusNoContent)
	assert.Nil(t, j.Fork(passAll))
}

// TestForkFailureDiscarded: a racing attempt that the Decider discards
// (a failure while another is in flight) leaves the race to the other;
// the underlying map is never touched.
func TestForkFailureDiscarded(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("X-Outer", "kept")
	failing := deciderFunc(func(s int, h http.Header, f *gateway.Failure) gateway.Decision {
		if s >= 500 {
			return gateway.Discard
		}
		return gateway.Pass
	})
	first := gateway.NewInterceptor(rec, failing)
	second := first.Fork(failing)
	first.Header().Set("X-Bad", "1")
	first.WriteHeader(http.StatusBadGateway)
	_, _ = first.Write([]byte("bad"))
	first.Rollback() // nothing to roll back
	assert.True(t, first.Discarded())
	assert.Equal(t, http.Header{"X-Outer": {"kept"}}, rec.Header())

	third := second.Fork(passAll) // a fork of a fork joins the same race
	require.NotNil(t, third)
	second.WriteHeader(http.StatusOK)
	assert.True(t, second.Committed())
	assert.Equal(t, http.StatusOK, rec.Code)
	third.WriteHeader(http.StatusOK)
	assert.True(t, third.Discarded())
	assert.Empty(t, rec.Header().Get("X-Bad"))
}

// TestForkRacersHoldBack: racing attempts drop 1xx responses, cannot
// Hijack, and flush nothing until they win; two Deciders that both pass
// get one winner.
func TestForkRacersHoldBack(t *testing.T) {
	rec := httptest.NewRecorder()
	first := gateway.NewInterceptor(rec, passAll)
	second := first.Fork(passAll)
	first.WriteHeader(http.StatusEarlyHints)
	assert.Equal(t, http.StatusOK, rec.Code, "no 1xx from a racer")
	assert.False(t, rec.Flushed)
	_, _, err := first.Hijack()
	assert.Error(t, err)
	_, _, err = second.Hijack()
	assert.Error(t, err)

	second.WriteHeader(http.StatusOK)
	first.WriteHeader(http.StatusOK) // passes too: the first to pass won
	assert.True(t, second.Committed())
	assert.False(t, first.Committed())
	assert.NoError(t, http.NewResponseController(first).Flush())
	assert.False(t, rec.Flushed)
	assert.NoError(t, http.NewResponseController(second).Flush())
	assert.True(t, rec.Flushed)
}

// TestForkConcurrent: attempts racing on their own goroutines (run with
// -race): exactly one response reaches the client, whole.
func TestForkConcurrent(t *testing.T) {
	for range 200 {
		rec := httptest.NewRecorder()
		rec.Header().Set("X-Outer", "kept")
		first := gateway.NewInterceptor(rec, passAll)
		var wg sync.WaitGroup
		serve := func(i *gateway.Interceptor, name string) {
			defer wg.Done()
			i.Header().Set("X-From", name)
			i.Header().Add("X-Outer", name)
			i.WriteHeader(http.StatusOK)
			for range 10 {
				_, _ = io.WriteString(i, name)
			}
		}
		wg.Add(2)
		go serve(first, "a")
		second := first.Fork(passAll)
		if second != nil {
			go serve(second, "b")
		} else {
			wg.Done()
		}
		wg.Wait()
		if second != nil {
			assert.NotEqual(t, first.Committed(), second.Committed(), "one winner")
		}
		from := rec.Header().Get("X-From")
		require.Contains(t, []string{"a", "b"}, from)
		assert.Equal(t, []string{"kept", from}, rec.Header().Values("X-Outer"))
		assert.Equal(t, from+from+from+from+from+from+from+from+from+from, rec.Body.String())
	}
}
