// Package admission decides what the service admits: how many requests
// each upstream host gets at once (an adaptive concurrency limit, enforced
// only while the host falls behind its traffic), which hosts get none (a
// drain before a deploy), and whether the service answers at all (planned
// maintenance). It is the
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
// A host that keeps pace with its traffic has no limit at all: requests
// pass after an atomic add, and nothing waits or is shed however many are
// in flight or however long they take. The limit exists only while the
// host falls behind — while it shows a queue of its own — and the evidence
// of that is the host's throughput, not its latency:
//
//   - By Little's law, requests in flight = arrival rate × latency. A host
//     that keeps pace answers as many requests as arrive; if it gets slower
//     (a slower dependency, a route-mix change), its in-flight grows to the
//     new latency's level within one latency and stops growing. A host
//     that is overloaded answers at its capacity whatever arrives: its
//     answers stay flat while its in-flight grows, window after window.
//   - Every Window (50 ms, by time) the Limiter notes how many requests
//     the host answered (or failed), and how many were in flight. It keeps
//     the last 20 slots of these, and the host's pace (answers a second)
//     and typical latency (the p90 of its latency samples) while it kept
//     up. A slot is a window, or for a host whose p90 is longer than 7
//     windows (350 ms), as many windows as make a seventh of its p90: the
//     history covers about three of the host's latencies however slow it
//     is, in a fixed 20 slots.
//   - The host falls behind when, over a horizon of at least two of its
//     latencies split in halves, in each half its in-flight grew by at least
//     15% of its answers while it answered at least 90% of its pace of
//     before; the recent half brought no more than 10% more answers than
//     the older one (more concurrency, no more throughput); and its
//     in-flight at least doubled, by 8 or more. A host that never kept
//     pace — overloaded from its first request, as when the gateway
//     restarts at peak — has no pace of before: for it, in-flight that
//     grows while answers stay flat is enough.
//   - None of the healthy shapes passes that test. A host that gets slower
//     answers nothing new for one latency: a half that covers that lag
//     answers under 90% of the pace (and the growth a half needs then is
//     more than the lag allows), and a half after it has no growth. A surge
//     or a burst at a host with room is answered one latency later, within
//     the recent half: that half brings more answers. A cheap route (a
//     health check's 404, an attacker's requests) adds answers, and sets
//     no baseline the others are measured against. Closed-loop clients
//     never grow a queue (each waits for its answer): no limit is needed.
//   - Latency is measured from when the request is handed to the next
//     transport (or, with a body, from when its body was sent whole) to
//     its response header (or the 101 of an upgrade, or its failure), and
//     a request holds its slot over the same span: a long download or a
//     WebSocket holds none, and neither does an upload still arriving from
//     a slow or stalled client. Only responses below 500, and timeouts,
//     are latency samples; a host busy enough (128 answers a window) times
//     a random quarter of its requests while it has no limit.
//   - Once the host falls behind, its limit is what carries its answers at
//     its latency without a queue, times Tolerance (Little's law again) —
//     held for a window at what is in flight first, if that is within
//     twice the limit, so that a burst that ends then sheds nothing. The
//     limit is Tolerance × answers a second × baseline, where the baseline
//     is the shortest median latency of a window over the last 5–10 s of
//     windows without a growing backlog (or of probes). The median, not the minimum: a cheap
//     route is a few samples of a window, not its median.
//   - While the host is congested, each window's median latency (of
//     requests sent since the last cut: those sent before hold the old
//     queue) adjusts the limit as Envoy's and Gradient's gradient does:
//     above Tolerance × baseline (and at least MinQueueDelay above it) the
//     limit is multiplied by threshold/latency (at least ½); within it, the
//     limit grows by its square root. The limit changes at most once a
//     baseline latency, so that a slow host's latency shows one change
//     before the next.
//   - While congested, after five windows and then every 5 s, a probe holds
//     the host to what carries its answers at half the baseline (at most
//     half its limit) until what was in flight drained (for at most 1 s
//     or five of the host's p90s), and measures the
//     requests sent from then on: latency within the threshold confirms
//     the baseline, lower latency lowers it, and a much lower one calls for
//     another probe soon. A baseline that no probe confirms for 5–10 s
//     expires, and the next probe measures it anew.
//   - The limit is lifted by time, never by a count of samples: when the
//     host kept pace — in-flight did not grow, and what waited or was shed
//     was at most 5% of what asked for it — for two windows and two
//     baseline latencies; when the host kept pace at its limit (latency
//     within the threshold) for 2 s; and when it got no request for 1 s
//     (the first request after a quiet spell has the limit reviewed before
//     it is held to it).
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
// The limiter does not catch every overload. An excess of a few percent
// of a host's capacity (up to about 10–15%) grows its queue too slowly for
// the test above, and is never limited, however long it lasts: in a
// simulation of 8 workers × 10 ms offered 1.05× their capacity, 1,600
// requests were in flight after 20 s, a wait of about 2 s. Such a queue
// shows in the host's latency and, at worst, in its timeouts, which the
// host-health model judges. A slow host is caught later than a fast one, after about two to
// four of its latencies (a host of 600 ms offered 1.5× its capacity:
// about 2 s). Bursts at a slow host that come within about four of its
// latencies of each other, each answered in full, can look like a queue
// to the test. A
// host close to its capacity under random arrivals has real queues in its
// bursts, and the limit sheds what finds more than Tolerance allows: in a
// simulation of 8 workers × 10 ms with Poisson arrivals, none at 75% busy,
// 0.02% of requests at 81%, 0.2% at 88% and 2% at 94%.
//
// # Why this law
//
// Netflix's concurrency-limits (the Vegas, Gradient2 and AIMD limits),
// Envoy's adaptive concurrency filter and TCP BBR were the candidates.
//
//   - AIMD reacts to drops and timeouts: the queue must already be full
//     when it acts, and it needs a timeout threshold per service.
//   - Vegas estimates the queue from the minimum latency ever seen, per
//     sample; Gradient2 compares a short average latency with a long one;
//     Envoy's gradient controller compares a windowed percentile with a
//     minimum latency measured by pinning concurrency low every minute.
//     Each reads a rise in latency as a queue: a cheap route sets a
//     baseline that makes every other route look queued, and a host that
//     got slower (a dependency, a route mix) is limited though it keeps
//     pace — the limit then sheds healthy traffic, the outage it exists to
//     prevent.
//   - BBR estimates the bottleneck's bandwidth (the most delivered per
//     round trip) and the round trip without a queue, and holds what is in
//     flight near their product; it probes both.
//
// This law takes BBR's evidence — delivery rate against what is in
// flight — as the test of overload, so that only a host that stopped
// keeping pace is limited, and keeps Envoy's and Gradient's gradient (with
// its clamp at ½ and square-root growth) and BBR's probe to size the limit
// once it is. It adds what a proxy in front of arbitrary routes needs: no
// limit at all until the host falls behind (so a healthy host pays an
// atomic add, sheds nothing, and needs no initial limit to grow out of), a
// baseline that only windows without a growing backlog and probes feed,
// limits that end by time, and one limit per host.
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
