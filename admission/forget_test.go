package admission_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/admission"
)

// TestLimiterForget: a forgotten host leaves the Limiter's state (status,
// drain), and through Health the inner Health forgets it too.
func TestLimiterForget(t *testing.T) {
	lim, err := admission.New(admission.Settings{})
	require.NoError(t, err)
	lim.Watch(&url.URL{Scheme: "http", Host: "a:80"})
	lim.Watch(&url.URL{Scheme: "http", Host: "b"}) // by its bare name too
	require.Len(t, lim.Status(), 2)
	require.NoError(t, lim.Drain("a:80"))

	inner := &forgetting{}
	h := lim.Health(inner).(interface{ Forget(string) bool })
	assert.True(t, h.Forget("a:80"))
	assert.True(t, lim.Forget("b:80"))
	assert.Empty(t, lim.Status())
	assert.ErrorIs(t, lim.Drain("a:80"), admission.ErrUnknownHost)
	assert.Equal(t, []string{"a:80"}, inner.forgot)
	assert.True(t, lim.Forget("never:80"))
}

type forgetting struct{ forgot []string }

func (f *forgetting) Allows(string) bool           { return true }
func (f *forgetting) OpenFor(string) time.Duration { return 0 }
func (f *forgetting) Forget(h string) bool {
	f.forgot = append(f.forgot, h)
	return true
}
