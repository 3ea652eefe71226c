package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/proxykit/proxykit/examples/internal/loadgen"
)

// TestEvidenceScenarios runs slowupload and conncap end to end through
// every stack. The bare proxy is the control (its uploads are served
// under a response-header timeout, its 2 s deadline answers 502); proxykit
// serves the uploads under a 1 s per-try timeout, answers them as the
// client's (client_body) under a 2 s request timeout with every GET beside
// them served, and answers the waits for a connection as overloaded,
// never charging the host. Bounds allow for a busy, raced machine: the
// table's own checks are the strict figures.
func TestEvidenceScenarios(t *testing.T) {
	chosen, err := choose("evidence", jobs(time.Second, 1, defaultTimeline, defaultOverload, defaultStall))
	require.NoError(t, err)
	require.Len(t, chosen, 2)
	rows := map[string]loadgen.Row{}
	for _, j := range chosen {
		for _, st := range j.stacks {
			row, err := j.one(context.Background(), st)
			require.NoError(t, err, "%s/%s", j.name, st)
			rows[j.name+"/"+st] = row
			t.Logf("%s/%s: %d requests, %.2f%% served, failures %v", j.name, st, row.Requests, row.SuccessRate(), row.Failures)
		}
	}
	assert.Equal(t, 100.0, rows["slowupload/bare"].SuccessRate())
	assert.Equal(t, 4, rows["slowupload/bare-reqtimeout"].Failures["502"], "the bare proxy's deadline")
	assert.Equal(t, 100.0, rows["slowupload/proxykit"].SuccessRate(), "uploads and GETs served under a 1 s per-try timeout")
	rt := rows["slowupload/kit-reqtimeout"]
	assert.Equal(t, map[string]int{"client_body": 4}, rt.Failures, "the uploads are the client's; every GET served")

	kit := rows["conncap/proxykit"]
	assert.Positive(t, kit.Failures["overloaded"], "the waits are local saturation")
	for _, class := range []string{"connect_timeout", "open", "no_upstream"} {
		assert.Zero(t, kit.Failures[class], "%s: never charged to the host", class)
	}
	require.NotNil(t, kit.Figures)
	assert.GreaterOrEqual(t, kit.Figures.ServedAfter, 90.0, "served once a connection is free")
	assert.Equal(t, 100.0, rows["conncap/bare"].SuccessRate(), "the bare proxy queues every GET")
}
