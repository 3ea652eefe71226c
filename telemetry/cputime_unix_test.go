//go:build unix

package telemetry

import (
	"syscall"
	"time"
)

// cpuTime returns the CPU time the process has used (user and system,
// every thread, the garbage collector's included). Other processes on a
// busy machine do not add to it, as they add to wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
