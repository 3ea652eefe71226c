package errorpage_test

import (
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/errorpage"
	"github.com/proxykit/proxykit/gateway"
)

// spreads reports a class whose Retry-After is drawn per response.
func spreads(c gateway.Class) bool {
	return c == gateway.ClassOverloaded || c == gateway.ClassOpen || c == gateway.ClassNoUpstream
}

var refreshRE = regexp.MustCompile(`<meta http-equiv="refresh" content="(\d+)">`)

// TestComebacksSpread: overloaded, open and no_upstream pages turn many
// visitors away within the same second; each response draws its own wait
// from [n, 2n] seconds (at least [n, n+2]) for an advised n, so that they
// do not all reload in the same second. The header, the page's reload and
// its countdown text send the one drawn value. Every other class keeps
// the advised wait.
func TestComebacksSpread(t *testing.T) {
	h := newHandler(t, errorpage.Options{})
	const responses = 300
	for _, c := range []gateway.Class{gateway.ClassOverloaded, gateway.ClassOpen, gateway.ClassNoUpstream} {
		for _, tc := range []struct {
			advised time.Duration
			lo, hi  int
		}{{time.Second, 1, 3}, {2500 * time.Millisecond, 3, 6}, {10 * time.Second, 10, 20}} {
			t.Run(c.String()+"/"+tc.advised.String(), func(t *testing.T) {
				f := failure(c)
				f.RetryAfter = tc.advised
				seen := map[int]int{}
				for range responses {
					w := serve(h.Wrap(fail(f)), http.MethodGet, "/", acceptChrome)
					ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
					require.NoError(t, err)
					require.True(t, ra >= tc.lo && ra <= tc.hi, "Retry-After %d outside [%d, %d]", ra, tc.lo, tc.hi)
					m := refreshRE.FindStringSubmatch(w.Body.String())
					require.NotNil(t, m, "the page reloads itself")
					require.Equal(t, strconv.Itoa(ra), m[1], "the page reloads when the header says")
					require.Contains(t, w.Body.String(), "reload by itself in <strong>"+strconv.Itoa(ra)+" second")
					seen[ra]++
				}
				// Uniform over the window: each value expected
				// responses/(hi-lo+1) times (≥ 27 here); a third of that
				// is far outside chance.
				want := responses / (tc.hi - tc.lo + 1) / 3
				for v := tc.lo; v <= tc.hi; v++ {
					assert.GreaterOrEqual(t, seen[v], want, "Retry-After %d drawn %d times of %d: %v", v, seen[v], responses, seen)
				}
			})
		}
	}

	// Other classes: the advised wait, rounded up, every time.
	f := failure(gateway.ClassMaintenance)
	f.RetryAfter = 1500 * time.Millisecond
	for range 20 {
		w := serve(h.Wrap(fail(f)), http.MethodGet, "/", acceptChrome)
		assert.Equal(t, "2", w.Header().Get("Retry-After"))
	}
}
