package gateway_test

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
	"github.com/proxykit/proxykit/gateway/gatewaytest"
)

// TestHandOff: the outermost layer's duty, one function for every layer.
func TestHandOff(t *testing.T) {
	refused := func() *gateway.Failure { return gateway.NewFailure(gateway.ClassRefused, "10.0.0.5:80", nil) }
	canceled := func() *gateway.Failure { return gateway.NewFailure(gateway.ClassCanceled, "10.0.0.5:80", nil) }
	r := httptest.NewRequest(http.MethodGet, "/", nil)

	t.Run("outermost", func(t *testing.T) {
		w := httptest.NewRecorder()
		logged := 0
		outer := gateway.HandOff(w, r, refused(), false, nil, func() { logged++ })
		assert.False(t, outer)
		assert.Equal(t, 1, logged, "the outermost layer logs")
		assert.Equal(t, http.StatusBadGateway, w.Code, "WriteFailure answers")
		assert.NotContains(t, w.Body.String(), "10.0.0.5", "no address to the client")
	})
	t.Run("own writer", func(t *testing.T) {
		w := httptest.NewRecorder()
		wrote := 0
		gateway.HandOff(w, r, refused(), false, func() { wrote++; w.WriteHeader(599) }, nil)
		assert.Equal(t, 1, wrote)
		assert.Equal(t, 599, w.Code)
	})
	t.Run("canceled client aborts", func(t *testing.T) {
		w := httptest.NewRecorder()
		logged := 0
		func() {
			defer func() { assert.Equal(t, http.ErrAbortHandler, recover()) }()
			gateway.HandOff(w, r, canceled(), false, func() { t.Error("nothing is written for a client that left") }, func() { logged++ })
		}()
		assert.Equal(t, 1, logged, "logged before the abort")
	})
	t.Run("committed", func(t *testing.T) {
		w := httptest.NewRecorder()
		logged := 0
		outer := gateway.HandOff(w, r, canceled(), true, func() { t.Error("a committed response is not written again") }, func() { logged++ })
		assert.False(t, outer)
		assert.Equal(t, 1, logged)
	})
	t.Run("enclosing layer", func(t *testing.T) {
		var i gateway.Interceptor
		i.Reset(httptest.NewRecorder(), discardAll)
		f := refused()
		outer := gateway.HandOff(&i, r, f, false, nil, func() { t.Error("the enclosing layer logs") })
		assert.True(t, outer)
		assert.Same(t, f, i.Failure(), "handed outward")
		assert.Equal(t, http.StatusBadGateway, i.Status(), "still answered, for the enclosing layer to decide")

		i.Reset(httptest.NewRecorder(), discardAll)
		assert.True(t, gateway.HandOff(&i, r, canceled(), false, nil, nil), "no abort: the enclosing layer's duty")
	})
}

// TestAttemptLineSaysAttempt: an attempt whose Failure an enclosing layer
// takes is logged at debug as "attempt failed", not with the request's
// final message; the outermost handler writes the final line.
func TestAttemptLineSaysAttempt(t *testing.T) {
	s := gatewaytest.NewServer(gatewaytest.Refused)
	defer s.Close()
	var logs gatewaytest.SafeBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	eh := gateway.NewErrorHandler(logger)
	r := httptest.NewRequest(http.MethodGet, s.URL, nil)
	err := errors.New("dial tcp: connect: connection refused")

	var i gateway.Interceptor
	i.Reset(httptest.NewRecorder(), discardAll)
	eh(&i, r, err)
	line := logs.String()
	require.Equal(t, 1, strings.Count(line, "\n"), line)
	assert.Contains(t, line, `level=DEBUG msg="proxy: attempt failed"`)

	eh(httptest.NewRecorder(), r, err)
	lines := logs.Lines()
	require.Len(t, lines, 2)
	assert.Contains(t, lines[1], `level=WARN msg="proxy: upstream failure"`)
}
