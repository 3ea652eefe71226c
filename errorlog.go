package proxykit

import (
	"context"
	"log"
	"log/slog"
)

// teeHandler sends each record to two handlers.
type teeHandler struct{ a, b slog.Handler }

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if t.a.Enabled(ctx, r.Level) {
		err = t.a.Handle(ctx, r.Clone())
	}
	if t.b.Enabled(ctx, r.Level) {
		if e := t.b.Handle(ctx, r); err == nil {
			err = e
		}
	}
	return err
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t.a.WithAttrs(as), t.b.WithAttrs(as)}
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{t.a.WithGroup(name), t.b.WithGroup(name)}
}

// logWriter writes each line it is given to a log.Logger, which adds its
// own prefix and flags.
type logWriter struct{ l *log.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	if err := w.l.Output(2, string(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// withErrorLog returns logger with its records at info level and above
// also written, as slog text lines, to errorLog: the destination a
// ReverseProxy's user chose for its proxy errors.
func withErrorLog(logger *slog.Logger, errorLog *log.Logger) *slog.Logger {
	text := slog.NewTextHandler(logWriter{errorLog}, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{} // the log.Logger's flags carry the time
			}
			return a
		},
	})
	return slog.New(teeHandler{logger.Handler(), text})
}
