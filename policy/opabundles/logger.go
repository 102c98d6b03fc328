package opabundles

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/open-policy-agent/opa/v1/logging"
)

// opaLogger writes the log lines of OPA's REST client and downloader
// (logging.Logger: printf-style, fields added by WithFields) to a slog
// logger, so they share the proxy's JSON log and log level.
type opaLogger struct {
	log *slog.Logger
}

var _ logging.Logger = opaLogger{}

func newOPALogger(log *slog.Logger, args ...any) opaLogger {
	return opaLogger{log: log.With(args...)}
}

func (l opaLogger) Debug(f string, a ...any) { l.log.Debug(fmt.Sprintf(f, a...)) }
func (l opaLogger) Info(f string, a ...any)  { l.log.Info(fmt.Sprintf(f, a...)) }
func (l opaLogger) Warn(f string, a ...any)  { l.log.Warn(fmt.Sprintf(f, a...)) }
func (l opaLogger) Error(f string, a ...any) { l.log.Error(fmt.Sprintf(f, a...)) }

func (l opaLogger) WithFields(fields map[string]any) logging.Logger {
	args := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		args = append(args, k, v)
	}
	return opaLogger{log: l.log.With(args...)}
}

// GetLevel reports the most verbose level the slog logger writes, so OPA
// skips work (reading an error body) for lines that would be dropped.
func (l opaLogger) GetLevel() logging.Level {
	ctx := context.Background()
	switch {
	case l.log.Enabled(ctx, slog.LevelDebug):
		return logging.Debug
	case l.log.Enabled(ctx, slog.LevelInfo):
		return logging.Info
	case l.log.Enabled(ctx, slog.LevelWarn):
		return logging.Warn
	}
	return logging.Error
}

// SetLevel does nothing: the proxy's --log-level and admin endpoint set
// the level of every component at once.
func (opaLogger) SetLevel(logging.Level) {}
