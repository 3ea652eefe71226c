package loadgen

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunCountsWhatClientsSaw(t *testing.T) {
	var ledger Ledger
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ledger.Observe(r)
		if r.Method == http.MethodPost {
			ledger.Observe(r) // pretend the POST arrived twice
		}
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Header.Get(LoadIDHeader) == "3" {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, `{"class":"refused","status":502}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	r := Run(context.Background(), srv.URL, Options{Concurrency: 4, Duration: 5 * time.Second, MaxRequests: 100, PostRatio: 0.1})
	require.Equal(t, 100, r.Requests)
	assert.Equal(t, 99, r.Succeeded)
	assert.Equal(t, map[string]int{"refused": 1}, r.Failures)
	assert.Equal(t, 99, r.ByStatus[204])
	assert.Len(t, r.Latencies, 100)
	assert.LessOrEqual(t, r.Percentile(50), r.Percentile(99))
	assert.Equal(t, r.Latencies[99], r.Max())
	assert.InDelta(t, 99.0, r.SuccessRate(), 0.001)
	assert.Equal(t, 10, ledger.Duplicates(), "10% of 100 are POSTs, each seen twice")
	assert.EqualValues(t, 110, ledger.Total())
	row := Row{Result: r, Upstream: ledger.Total()}
	assert.InDelta(t, 1.1, row.Amplification(), 0.001)
}
