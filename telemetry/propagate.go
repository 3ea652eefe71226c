package telemetry

import (
	"context"
	"net/http"
	"unsafe"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// traceparentLen is the length of a version-00 traceparent header:
// "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex.
const traceparentLen = 55

const hexDigits = "0123456789abcdef"

// traceparentValue holds one traceparent header value and the one-element
// slice that http.Header stores, in a single allocation.
type traceparentValue struct {
	buf [traceparentLen]byte
	val [1]string
}

// setTraceparent writes sc as the W3C traceparent (and tracestate) of h, as
// propagation.TraceContext does, in one allocation where the propagator
// takes three (the value, the canonicalised key, the slice). h is the
// outbound request's own header (ReverseProxy clones it per attempt).
func setTraceparent(h http.Header, sc trace.SpanContext) {
	v := new(traceparentValue)
	b := &v.buf
	b[0], b[1], b[2] = '0', '0', '-'
	tid, sid := sc.TraceID(), sc.SpanID()
	for i, c := range tid {
		b[3+2*i], b[4+2*i] = hexDigits[c>>4], hexDigits[c&0xf]
	}
	b[35] = '-'
	for i, c := range sid {
		b[36+2*i], b[37+2*i] = hexDigits[c>>4], hexDigits[c&0xf]
	}
	b[52], b[53], b[54] = '-', '0', '0'
	if sc.TraceFlags().IsSampled() {
		b[54] = '1'
	}
	// The bytes are never written again: the string may alias them.
	v.val[0] = unsafe.String(&v.buf[0], traceparentLen)
	h["Traceparent"] = v.val[:]
	if ts := sc.TraceState(); ts.Len() > 0 {
		h["Tracestate"] = []string{ts.String()}
	} else {
		delete(h, "Tracestate") // the client's, which belongs to the span it sent
	}
}

// inject writes the trace context of ctx (whose span is sc) into h: with
// the fast path for the W3C propagator alone, with the propagator
// otherwise. The propagator's own fields are cleared first, so that no
// value the client sent for another span survives beside ours.
func (t *Telemetry) inject(ctx context.Context, sc trace.SpanContext, h http.Header) {
	if !sc.IsValid() {
		return
	}
	if t.w3c {
		setTraceparent(h, sc)
		return
	}
	for _, k := range t.fields {
		delete(h, k)
	}
	t.prop.Inject(ctx, propagation.HeaderCarrier(h))
}

// carriesContext reports whether h has a field of the propagator: the
// trace context the client sent, which ReverseProxy forwards.
func (t *Telemetry) carriesContext(h http.Header) bool {
	for _, k := range t.fields {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}
