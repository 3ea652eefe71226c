//go:build race

package retry

// raceEnabled: the race detector makes sync.Pool drop a share of what is
// put back, so allocation counts are higher than in a normal build.
const raceEnabled = true
