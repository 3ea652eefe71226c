// Package admission decides what the service admits: how many requests
// each upstream host gets at once (an adaptive concurrency limit, learned
// from latency), which hosts get none (a drain before a deploy), and
// whether the service answers at all (planned maintenance). It is the
// overload seat of proxykit: the answers it gives are 503s with
// Retry-After of their own classes, [gateway.ClassOverloaded] and
// [gateway.ClassMaintenance], rendered by errorpage like any failure and
// never counted against a host's health.
//
//	lim, err := admission.New(admission.Settings{})
//	proxy.Transport = lim.Transport(hosts.Transport(&gateway.Transport{}))
//	p.Health = lim.Health(hosts) // a *pool.Pool; hosts a *breaker.Hosts
//	err = p.Attach(proxy)
//
//	maint := &admission.Maintenance{Allow: isHealthCheck}
//	h := pages.Wrap(maint.Wrap(retrying.Wrap(proxy)))
//
//	admin, err := admission.NewAdmin(admission.AdminOptions{Token: tok, Limiter: lim, Maintenance: maint})
//	adminMux.Handle("/admin/", admin)
//
// proxykit.New wires all of it (Stack.Limiter, Stack.Maintenance), the
// limiter on unless Config.NoLimiter.
//
// # The limit
//
// A host that is not overloaded has no limit at all: requests pass after
// an atomic add, and nothing waits or is shed however many are in flight.
// The limit exists only while the host shows queueing, and the signal of
// queueing is latency:
//
//   - Latency is measured from when the request is handed to the next
//     transport (or, with a body, from when its body was sent whole) to
//     its response header (or the 101 of an upgrade, or its failure), and
//     a request holds its slot over the same span: a long download or a
//     WebSocket holds none, and neither does an upload still arriving from
//     a slow or stalled client. Only responses below 500, and timeouts
//     (the strongest sign of queueing), are samples; a host busy enough
//     (2,500 requests a second and more) times a random quarter of its
//     requests while it shows no queueing.
//   - Every Window (50 ms), once at least 16 samples arrived, the window
//     closes with its shortest latency. Queueing in a host delays every
//     request, the fastest too; a slow route delays only its own requests,
//     and the fast ones of the same window keep the minimum down. So mixed
//     fast and slow routes on a healthy host do not look like queueing;
//     the minimum of a window is the standing queue of CoDel and the
//     min-RTT filter of TCP Vegas and BBR.
//   - The baseline is the shortest window latency over the last 5–10 s of
//     windows without queueing. A window shows queueing when its latency
//     is above Tolerance × baseline (2×) and at least MinQueueDelay (5 ms)
//     above it.
//   - The first such window makes the host congested and sets the limit
//     to what was in flight at most during it: nothing is cut yet, so one
//     window of only slow requests (a burst on a slow route) sheds nothing
//     when the next one is normal. Each further window that shows queueing
//     multiplies the limit by the gradient threshold/latency (at least ½),
//     and samples of requests sent before a cut are ignored, as they hold
//     the queue of the old limit (TCP cuts its window at most once a round
//     trip). A window near the baseline while requests were held back
//     grows the limit by its square root. A window near the baseline in
//     which no request waited ends the congestion: the limit is lifted.
//   - While congested, the limit is halved for one window after five
//     windows and then every 5 s (a probe): latency within the threshold
//     there confirms the baseline, and keeps it alive; lower latency
//     lowers it. Halving costs no throughput at the equilibrium, where the
//     limit is about twice the host's parallelism. A baseline that no
//     probe confirms for 5–10 s expires, and the next probe measures it
//     anew: a host that got slower for good (a slower release) is held
//     back at most that long.
//
// At the limit, a request waits in a bounded queue of the host — at most
// QueueLength (32), and no more than the slots the host gives back within
// QueueTimeout (1 ms) at its recent rate, so that a request that would wait
// longer is answered at once — ordered by priority (Settings.Priority),
// then arrival; a request that finds the queue full displaces one of lower
// priority. A request that gets no slot in QueueTimeout, or by its own
// deadline, is shed: [gateway.ClassOverloaded], 503, Retry-After
// (Settings.RetryAfter, 1 s), Sent false. A pool that asks
// [Limiter.Health] passes over a host at its limit for one with headroom,
// so the queue and shedding are for when no host has any.
//
// # Why this law
//
// Netflix's concurrency-limits (the Vegas, Gradient2 and AIMD limits) and
// Envoy's adaptive concurrency filter were the candidates.
//
//   - AIMD reacts to drops and timeouts: the queue must already be full
//     when it acts (in the scenario of issue 16, timeouts come only after
//     a second of queueing), and it needs a timeout threshold per service.
//   - Vegas estimates the queue from the minimum latency ever seen, per
//     sample: one fast route (a cached 404) sets a baseline that makes
//     every other route look queued, and its periodic reset of the
//     baseline to the current sample lets the queue become the baseline.
//   - Gradient2 compares a short average with a long exponential average
//     (600 samples): averages are what mixed routes move, and under
//     sustained overload the long average learns the queue, so the limit
//     creeps up, the known drift of that law.
//   - Envoy's gradient controller compares a windowed percentile with a
//     minRTT measured by pinning concurrency to 3 for 50 requests every
//     minute: that measurement throttles a healthy host too, by design,
//     and its limit is one for the whole cluster, not per host.
//
// This law keeps their good parts — Envoy's and Gradient's gradient with
// its clamp at ½ and square-root growth, Vegas's and BBR's minimum as the
// queueing signal, BBR's periodic probe, CoDel's "minimum over an
// interval" — and adds what a proxy in front of arbitrary routes needs:
// no limit at all until queueing shows (so a healthy host pays an atomic
// add, sheds nothing, and needs no initial limit to grow out of), a
// baseline that only queue-free windows and probes feed (so overload
// never becomes the baseline), probes that halve rather than pin (so they
// cost nothing at the equilibrium), and one limit per host.
//
// # Draining and maintenance
//
// [Limiter.Drain] stops new requests to one host: a pool skips it, and a
// request that reaches it anyway is refused (ClassOverloaded wrapping
// [ErrDraining], retried elsewhere); requests in flight finish, response
// bodies included; its state is draining, then drained. [Maintenance]
// answers every request with a planned-maintenance 503 until stopped;
// [NewAdmin] serves both to an operator, behind a token.
package admission
