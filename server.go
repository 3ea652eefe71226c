package proxykit

import (
	"log/slog"
	"net/http"
	"time"
)

// Defaults of [NewServer].
const (
	// DefaultReadHeaderTimeout bounds reading a request's header (nginx's
	// client_header_timeout is 60 s; a header that takes longer than 10 s
	// on any network is an attack or a broken client).
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout closes keep-alive connections idle that long.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxHeaderBytes bounds a request's header: 64 KiB (net/http's
	// default is 1 MiB; nginx accepts 4 buffers of 8 KiB). Within 1 MiB a
	// client can send ~70,000 tiny header fields, each one a map entry and
	// a string: 20 such requests at once held 358 MiB.
	DefaultMaxHeaderBytes = 64 << 10
)

// NewServer returns an *http.Server for the public listener with bounds
// that are safe by default: a header read timeout, an idle timeout and a
// header size limit (the Default* constants). It sets no ReadTimeout and
// no WriteTimeout on purpose: both would cut long uploads, downloads,
// server-sent events and WebSockets; bound a request's body with
// [gateway.ClientBodyTimeout] (which the stack from [New] applies) and an
// upstream's silence with the transport's response-header timeout
// instead. ErrorLog goes to logger at warn level (nil: slog.Default()).
// Set Addr, or call Serve with a listener.
func NewServer(h http.Handler, logger *slog.Logger) *http.Server {
	if logger == nil {
		logger = slog.Default()
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		MaxHeaderBytes:    DefaultMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}
