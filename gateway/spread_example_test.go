package gateway_test

import (
	"fmt"
	"time"

	"github.com/proxykit/proxykit/gateway"
)

// Clients turned away in the same second by an overloaded host (advised to
// wait 1 s) are told to come back after 1, 2 or 3 seconds, each its own
// draw; a class that does not turn crowds away keeps the advised wait.
func ExampleSpreadRetryAfter() {
	seen := map[int]bool{}
	for range 1000 {
		seen[gateway.SpreadRetryAfter(gateway.ClassOverloaded, time.Second)] = true
	}
	fmt.Println("overloaded, 1 s advised:", seen[1], seen[2], seen[3], len(seen))
	fmt.Println("maintenance, 90 s advised:", gateway.SpreadRetryAfter(gateway.ClassMaintenance, 90*time.Second))
	// Output:
	// overloaded, 1 s advised: true true true 3
	// maintenance, 90 s advised: 90
}
