package pool

// State is a host's one state: one word, the same in the status view (HTML
// and JSON), the logs and the metrics. A pool's [Health] decides it
// ([HostStater]): *breaker.Hosts the health-model states, the admission
// Limiter's Health adds draining and drained. Details of a state — a
// breaker's counts, an open period's end, the next probe, a concurrency
// limit — are shown beside it, never as another state.
type State string

// The states, from in service to out of it.
const (
	// StateServing: the host takes its full share of new requests.
	StateServing State = "serving"
	// StateWarming: the host is back, with a share of new requests that
	// ramps up (slow start); after a rest, until a request to it succeeds.
	StateWarming State = "warming"
	// StateResting: the host failed lately (evidence about the host:
	// connection failures, resets, timeouts); it is sent new requests only
	// when no other host can take them.
	StateResting State = "resting"
	// StateTrial: the host's breaker is half-open: a probe passed, or its
	// open period ended; a few real requests decide whether it serves again.
	StateTrial State = "trial"
	// StateOut: the host is sent no request: its breaker is open, until a
	// probe passes or its open period ends.
	StateOut State = "out"
	// StateDraining: an operator drains the host: it is sent no new
	// request, and those in flight finish.
	StateDraining State = "draining"
	// StateDrained: a drained host with nothing left in flight.
	StateDrained State = "drained"
)
