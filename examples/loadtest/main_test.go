package main

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestScenarios runs two short scenarios end to end: the table is printed,
// and proxykit meets the scenario's target (100% success with one of three
// upstreams refusing; no POST delivered twice with one resetting).
func TestScenarios(t *testing.T) {
	for _, sc := range []string{"refuse1", "reset20"} {
		var out, errs strings.Builder
		err := run(context.Background(), []string{"-scenario", sc, "-duration", "400ms", "-concurrency", "4"}, &out, &errs)
		require.NoError(t, err)
		text := out.String()
		assert.Contains(t, text, sc)
		assert.Contains(t, text, "proxykit")
		assert.NotContains(t, text, "missed:", text)
	}
}

func TestBadFlags(t *testing.T) {
	var out, errs strings.Builder
	for _, args := range [][]string{{"-scenario", "nope"}, {"-duration", "0s"}, {"-concurrency", "0"}, {"-x"}} {
		assert.Error(t, run(context.Background(), args, &out, &errs), "%v", args)
	}
}
