package pool

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requestHealth is a Health with AllowsRequest and Watch.
type requestHealth struct {
	healthFuncs
	allowsRequest func(host string, r *http.Request) bool
	mu            sync.Mutex
	watched       []string
}

func (h *requestHealth) AllowsRequest(host string, r *http.Request) bool {
	return h.allowsRequest(host, r)
}

func (h *requestHealth) Watch(target *url.URL) {
	h.mu.Lock()
	h.watched = append(h.watched, target.String())
	h.mu.Unlock()
}

// TestPoolAsksPerRequest: with a RequestHealth, a pick asks it about each
// request (a half-open host that keeps its trials for idempotent requests
// gets the GETs, the POSTs go elsewhere), and a Watcher is told every
// target once, before the first pick.
func TestPoolAsksPerRequest(t *testing.T) {
	targets := []*url.URL{mustURL(t, "http://127.0.0.1:1001"), mustURL(t, "http://127.0.0.1:1002/api")}
	for _, policy := range []Policy{PeakEWMA, RoundRobin} {
		t.Run(policy.String(), func(t *testing.T) {
			p, err := New(targets...)
			require.NoError(t, err)
			p.Policy = policy
			h := &requestHealth{
				healthFuncs: healthFuncs{allows: func(string) bool { panic("Allows asked beside AllowsRequest") }},
				allowsRequest: func(host string, r *http.Request) bool {
					return host != "127.0.0.1:1002" || r.Method == http.MethodGet
				},
			}
			p.Health = h
			pick := func(method string) string {
				in := httptest.NewRequest(method, "http://front.test/x", strings.NewReader("b"))
				pr := &httputil.ProxyRequest{In: in, Out: in.Clone(in.Context())}
				p.Rewrite(pr)
				return pr.Out.URL.Host
			}
			gets := map[string]int{}
			for range 100 {
				assert.Equal(t, "127.0.0.1:1001", pick("POST"), "a POST never goes to the host that keeps its trials for GETs")
				gets[pick("GET")]++
			}
			assert.Positive(t, gets["127.0.0.1:1002"], "GETs are its trials")
			assert.Equal(t, []string{"http://127.0.0.1:1001", "http://127.0.0.1:1002/api"}, h.watched, "every target, once")
		})
	}
}
