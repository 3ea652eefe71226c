package gatewaytest

import (
	"bytes"
	"strings"
	"sync"
)

// SafeBuffer is a bytes.Buffer that is safe for concurrent use, for
// capturing what a slog handler or a program writes while a test's
// requests run:
//
//	var logs gatewaytest.SafeBuffer
//	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
//
// The zero value is an empty buffer ready to use.
type SafeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SafeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SafeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the non-empty lines written so far.
func (b *SafeBuffer) Lines() []string {
	var lines []string
	for _, l := range strings.Split(b.String(), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
