//go:build !unix

package telemetry

import "time"

var epoch = time.Now()

// cpuTime falls back to wall time where getrusage is not available.
func cpuTime() time.Duration { return time.Since(epoch) }
