package main

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEvidenceScenarios runs slowupload and conncap end to end: every
// stack has its row, and proxykit meets their targets (the uploads are
// served, or answered as the client's, and the GETs beside them served;
// the waits for a connection are overloaded, and the host serves once a
// connection is free).
func TestEvidenceScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("about 25 s of scenarios")
	}
	var out, errs strings.Builder
	require.NoError(t, run(context.Background(), []string{"-scenario", "evidence"}, &out, &errs))
	text := out.String()
	for _, row := range []string{"slowupload         bare", "slowupload         proxykit", "kit-reqtimeout",
		"bare-reqtimeout", "conncap            bare", "conncap            proxykit"} {
		assert.Contains(t, text, row)
	}
	assert.NotContains(t, text, "missed:", text)
}
