package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
)

// NewErrorHandler returns an httputil.ReverseProxy ErrorHandler that
// classifies err into a *Failure and:
//
//   - hands it to the nearest enclosing [FailureRecorder] (a retry or
//     errorpage layer), which decides what the client finally gets;
//   - for a client that went away, writes nothing and logs at debug level
//     with status 499, instead of the stock ReverseProxy's 502 and "proxy
//     error: context canceled" line; when no enclosing layer takes the
//     Failure, it then aborts the connection (see [HandOff]), so that
//     net/http does not finish the response with an implicit 200;
//   - otherwise writes the class's status (Retry-After when known) with a
//     short plain-text body built from the class's explanation: never the
//     error text or the upstream address;
//   - logs one line (see [LogFailure] for its level) when no enclosing layer
//     took the Failure (that layer logs the final outcome instead, so a
//     retried request does not produce a line per attempt), and otherwise
//     a debug line "proxy: attempt failed" with the attempt that failed:
//     the length of the request's [Trail] when the Failure does not say.
//
// When no enclosing layer takes a Failure although the request carries a
// [Trail] (so a retry layer is above, whose Interceptor would have taken
// it), a ResponseWriter wrapper between them hides the chain: it lacks
// Unwrap() http.ResponseWriter. The handler says so once, at warn level,
// naming the wrapper's type; every failure would otherwise be logged twice
// and classified by status alone above it.
//
// A nil logger means slog.Default() at the time of each call.
func NewErrorHandler(logger *slog.Logger) func(http.ResponseWriter, *http.Request, error) {
	var hidden sync.Once
	return func(w http.ResponseWriter, r *http.Request, err error) {
		if !handleError(logger, w, r, err) && TrailFrom(r.Context()) != nil {
			hidden.Do(func() { warnHidden(logger, w) })
		}
	}
}

// warnHidden says that a wrapper without Unwrap cut the chain of writers
// between this handler and the retry layer above it.
func warnHidden(logger *slog.Logger, w http.ResponseWriter) {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	if logger == nil {
		logger = slog.Default()
	}
	logger.Warn("proxy: a ResponseWriter wrapper between the proxy and the layers above it has no Unwrap() http.ResponseWriter method, "+
		"so failures cannot reach those layers (each is logged twice, and classified by its status alone); add the method to the wrapper",
		slog.String("wrapper", fmt.Sprintf("%T", w)))
}

// handleError answers err and reports whether an enclosing layer took the
// Failure.
func handleError(logger *slog.Logger, w http.ResponseWriter, r *http.Request, err error) bool {
	var up string
	if r.URL != nil {
		up = hostPort(r.URL.Scheme, r.URL.Host)
	}
	f := ClassifyError(err, up, true)
	if f.Class != ClassCanceled && f.Class != ClassClientBody && errors.Is(r.Context().Err(), context.Canceled) {
		// The client left; whatever broke afterwards is a consequence.
		// (Not for a client body that broke: net/http cancels the context
		// on a failed read of the client's connection, a timeout too, and
		// the client may still be there to read a 408.)
		c := *f
		c.Class, c.Status = ClassCanceled, ClassCanceled.Status()
		f = &c
	}
	// r is the outbound request of this attempt: its Trail, when a retry
	// layer put one in the context, counts the attempts so far.
	attempts := f.Attempts
	if attempts == 0 {
		attempts = TrailFrom(r.Context()).Len()
	}
	outer := HandOff(w, r, f, false, nil, func() {
		logFailure(logger, failureLevel(f), failureMessage, r, f, attempts, 0)
	})
	if outer {
		// An enclosing layer logs the request's final outcome; this
		// attempt's line is for debugging, and says it is an attempt.
		logFailure(logger, slog.LevelDebug, attemptMessage, r, f, attempts, 0)
	}
	return outer
}

// WriteFailure writes a minimal response for f: its status, Retry-After
// when known (spread, see SpreadRetryAfter), and a one-line plain-text body with the class's explanation.
// It reveals no address and no error text. errorpage writes richer pages;
// this is the floor when it is not in use. HEAD requests get no body.
func WriteFailure(w http.ResponseWriter, r *http.Request, f *Failure) {
	status := f.StatusCode()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	if ra := SpreadRetryAfter(f.Class, f.RetryAfter); ra > 0 {
		h.Set("Retry-After", strconv.Itoa(ra))
	}
	body := strconv.Itoa(status) + " " + http.StatusText(status) + ": " + f.Class.Explanation() + "\n"
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r == nil || r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}
