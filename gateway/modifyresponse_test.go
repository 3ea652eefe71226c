package gateway_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/gateway"
)

// TestWrapModifyResponse: the hook's error becomes a response_rejected
// Failure naming the upstream that answered; success, a Failure of the
// hook's own, and a nil hook pass unchanged.
func TestWrapModifyResponse(t *testing.T) {
	assert.Nil(t, gateway.WrapModifyResponse(nil))
	res := &http.Response{Request: httptest.NewRequest(http.MethodGet, "http://svc.internal/x", nil)}

	cause := errors.New("policy")
	err := gateway.WrapModifyResponse(func(*http.Response) error { return cause })(res)
	var f *gateway.Failure
	require.ErrorAs(t, err, &f)
	assert.Equal(t, gateway.ClassResponseRejected, f.Class)
	assert.Equal(t, http.StatusBadGateway, f.StatusCode())
	assert.Equal(t, "svc.internal:80", f.Upstream)
	assert.True(t, f.Sent)
	assert.ErrorIs(t, err, cause)
	assert.False(t, f.Class.CountsAsFailure())

	own := gateway.NewFailure(gateway.ClassUpstreamStatus, "a:1", nil)
	assert.Same(t, own, gateway.WrapModifyResponse(func(*http.Response) error { return own })(res))
	assert.NoError(t, gateway.WrapModifyResponse(func(*http.Response) error { return nil })(res))
}
