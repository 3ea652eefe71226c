// Package chaos holds proxykit's whole-stack reliability tests, and nothing
// else: a randomized, seeded fault schedule over a pool of fault-injecting
// upstreams under concurrent load, and the end-to-end invariants of the
// recommended stack (examples/internal/stack) — bodies byte-exact on every
// replay, no POST delivered twice, streams and upgrades through every
// layer, client disconnects, aborted responses, hostile headers; and a
// hostile-client mix (malformed chunked bodies, stalled uploads, clients
// that vanish mid-request) beside well-behaved clients, where nothing but
// the hostile clients' own requests may suffer.
//
// The default run takes a few seconds. PROXYKIT_LONG=1 runs the long
// variants; PROXYKIT_SEED=n replays a randomized run (every test logs its
// seed, and again when it fails):
//
//	go test -race -run Chaos ./examples/internal/chaos/
//	PROXYKIT_LONG=1 go test -race -run Chaos ./examples/internal/chaos/
package chaos
