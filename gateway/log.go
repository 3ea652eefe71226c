package gateway

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

// LogFailure writes the one log line for a failed request: at warn level;
// at info level for a client body that could not be read (the client's
// fault, and one a client can repeat at will: not a warning) and for a
// request shed as overloaded (load shedding working as meant); at debug
// level for a client that went away and for planned maintenance (not
// faults). Attributes: class,
// status, upstream, sent, attempts, method, path, request_id, duration
// (when elapsed > 0) and error. The error text is for operators and never
// reaches a client. A nil logger means slog.Default().
func LogFailure(logger *slog.Logger, r *http.Request, f *Failure, elapsed time.Duration) {
	logFailure(logger, failureLevel(f), failureMessage, r, f, f.Attempts, elapsed)
}

func failureLevel(f *Failure) slog.Level {
	switch f.Class {
	case ClassCanceled, ClassMaintenance:
		// Not a fault: the client left; the operator asked for it.
		return slog.LevelDebug
	case ClassClientBody, ClassOverloaded, ClassResponseRejected:
		// The client's doing; load shedding working as meant (the
		// limiter reports the shedding itself, per host); a policy
		// decision of the proxy's own ModifyResponse.
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// RequestAttrs appends the attributes that identify r in a log line:
// method, path and request_id (when r has a valid one). A nil r adds
// nothing. Every proxykit log line about a request uses them.
func RequestAttrs(attrs []slog.Attr, r *http.Request) []slog.Attr {
	if r == nil {
		return attrs
	}
	attrs = append(attrs, slog.String("method", r.Method))
	if r.URL != nil {
		attrs = append(attrs, slog.String("path", r.URL.Path))
	}
	if id := RequestIDOf(r); id != "" {
		attrs = append(attrs, slog.String("request_id", id))
	}
	return attrs
}

// The messages of a request's one failure line and of an attempt's line
// (debug level, when an enclosing layer logs the request's outcome).
const (
	failureMessage = "proxy: upstream failure"
	attemptMessage = "proxy: attempt failed"
)

// logFailure writes f's line with msg; attempts 0 means 1.
func logFailure(logger *slog.Logger, level slog.Level, msg string, r *http.Request, f *Failure, attempts int, elapsed time.Duration) {
	if logger == nil {
		logger = slog.Default()
	}
	ctx := context.Background()
	if r != nil {
		ctx = r.Context()
	}
	if !logger.Enabled(ctx, level) {
		return
	}
	if attempts == 0 {
		attempts = 1
	}
	attrs := make([]slog.Attr, 0, 11)
	attrs = append(attrs,
		slog.String("class", f.Class.String()),
		slog.Int("status", f.StatusCode()),
		slog.String("upstream", f.Upstream),
		slog.Bool("sent", f.Sent),
		slog.Int("attempts", attempts),
	)
	attrs = RequestAttrs(attrs, r)
	if elapsed > 0 {
		attrs = append(attrs, slog.Duration("duration", elapsed))
	}
	if f.Err != nil {
		attrs = append(attrs, slog.String("error", f.Err.Error()))
	}
	logger.LogAttrs(ctx, level, msg, attrs...)
}
