package batcher

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/ratebatch/batcher/internal/redact"
)

// A LogListener writes a Batcher's events, and its rate limiter's, to a
// [*slog.Logger], each at a level that fits it:
//
//   - Error: [Failed] (operations ended in failure) and [ListenerPanicked]
//     (a listener panicked; the panic was recovered).
//   - Warn: [TimedOut], [AuditFailed], [LimiterError], [PartitionReleased]
//     when the lease was lost or expired, and [ShutdownDone] when Shutdown
//     gave up (Err set).
//   - Info: [Throttled], [Paused] and [Resumed].
//   - Debug: everything else, such as [TargetChanged], the audits that
//     passed, the partitions a shared limiter acquires and lets go, and
//     retries.
//
// So a logger whose handler is at Info (slog's default) logs what an
// operator wants to see, and the many Debug events cost one Enabled call
// each. [LogListener.WithLevel] moves a kind to another level.
//
// A record's message is "batcher " followed by the kind's name ("batcher
// throttled"); its attributes are the kind, the event's figure under a name
// that says what it is (cost, partition, capacity, ...), its duration, the
// number of operations it concerns, its detail and its error, each only when
// set. Errors pass through the same redaction of secrets as the rest of the
// project's output. Payloads are never printed, since they may hold
// customer data, unless [LogListener.WithPayloads] asks for them.
//
// Create it with [NewLogListener], configure it, then add its Listen method
// as a listener:
//
//	b.AddListener(batcher.NewLogListener(logger).Listen)
//
// The zero value is not ready for use; call NewLogListener. The With*
// methods must be called before Listen is first called; after it they
// panic. Listen is safe for concurrent use.
type LogListener struct {
	logger   *slog.Logger
	payloads int
	levels   [kindCount]slog.Level
	used     atomic.Bool
}

// DefaultLogPayloads is how many payloads of an event
// [LogListener.WithPayloads] prints when given 0.
const DefaultLogPayloads = 10

// NewLogListener returns a LogListener that writes to logger, or to
// slog.Default() if logger is nil, at the levels listed in [LogListener]'s
// doc, without payloads.
func NewLogListener(logger *slog.Logger) *LogListener {
	l := &LogListener{logger: logger}
	for k := range l.levels {
		l.levels[k] = slog.LevelDebug
	}
	l.levels[Failed] = slog.LevelError
	l.levels[ListenerPanicked] = slog.LevelError
	for _, k := range []EventKind{TimedOut, AuditFailed, LimiterError} {
		l.levels[k] = slog.LevelWarn
	}
	for _, k := range []EventKind{Throttled, Paused, Resumed} {
		l.levels[k] = slog.LevelInfo
	}
	return l
}

func (l *LogListener) mustNotBeUsed(method string) {
	if l.used.Load() {
		panic("batcher: LogListener." + method + " called after Listen")
	}
}

// WithLevel sets the level events of kind are logged at. The exceptions in
// [LogListener]'s doc (a lost or expired lease, a Shutdown that gave up) are
// logged at the kind's level or Warn, whichever is higher.
func (l *LogListener) WithLevel(kind EventKind, level slog.Level) *LogListener {
	l.mustNotBeUsed("WithLevel")
	if kind > 0 && kind < kindCount {
		l.levels[kind] = level
	}
	return l
}

// WithPayloads makes the listener print the payloads of the operations an
// event carries, at most n of them per event (0 means
// [DefaultLogPayloads]; negative means all), under the attribute
// "payloads". Payloads may hold customer data: ask for them only where the
// logs may hold it too. The payload of a [TypedOperation] is printed as its
// T.
func (l *LogListener) WithPayloads(n int) *LogListener {
	l.mustNotBeUsed("WithPayloads")
	switch {
	case n == 0:
		n = DefaultLogPayloads
	case n < 0:
		n = -1
	}
	l.payloads = n
	return l
}

// Level returns the level l logs e at.
func (l *LogListener) Level(e Event) slog.Level {
	if e.Kind <= 0 || e.Kind >= kindCount {
		return slog.LevelDebug
	}
	level := l.levels[e.Kind]
	switch {
	case e.Kind == PartitionReleased && (e.Msg == "lease lost" || e.Msg == "expired"),
		e.Kind == ShutdownDone && e.Err != nil:
		level = max(level, slog.LevelWarn)
	}
	return level
}

// Listen logs e. Pass it to [Batcher.AddListener].
func (l *LogListener) Listen(e Event) {
	if !l.used.Load() {
		l.used.Store(true)
	}
	logger := l.logger
	if logger == nil {
		logger = slog.Default()
	}
	level := l.Level(e)
	ctx := context.Background()
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs, slog.String("kind", e.Kind.String()))
	if e.Val != 0 || valAlwaysSet(e.Kind) {
		attrs = append(attrs, slog.Int(valName(e.Kind), e.Val))
	}
	if e.Duration != 0 {
		attrs = append(attrs, slog.Duration("duration", e.Duration))
	}
	if len(e.Batch) > 0 {
		attrs = append(attrs, slog.Int("ops", len(e.Batch)))
		if l.payloads != 0 {
			attrs = append(attrs, slog.Any("payloads", payloadsOf(e.Batch, l.payloads)))
		}
	}
	if e.Msg != "" {
		attrs = append(attrs, slog.String("detail", e.Msg))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("err", redact.String(e.Err.Error())))
	}
	logger.LogAttrs(ctx, level, "batcher "+e.Kind.String(), attrs...)
}

// valName returns what Val is for events of kind k.
func valName(k EventKind) string {
	switch k {
	case BatchReleased:
		return "cost"
	case CapacityRequested:
		return "demand"
	case FlushDone:
		return "released"
	case CapacityChanged:
		return "capacity"
	case TargetChanged:
		return "target"
	case ProvisionStarted, ProvisionDone:
		return "partitions"
	case PartitionAcquired, PartitionReleased:
		return "partition"
	}
	return "val"
}

// valAlwaysSet reports whether Val means something for kind k even when it
// is 0 (partition 0, a capacity or target of 0).
func valAlwaysSet(k EventKind) bool {
	switch k {
	case CapacityChanged, TargetChanged, PartitionAcquired, PartitionReleased:
		return true
	}
	return false
}

// payloadsOf returns the payloads of the first n operations (all if n < 0).
func payloadsOf(ops []*Operation, n int) []any {
	if n < 0 || n > len(ops) {
		n = len(ops)
	}
	out := make([]any, n)
	for i, op := range ops[:n] {
		if t, ok := op.payload.(typedPayload); ok {
			out[i] = t.typedPayload()
		} else {
			out[i] = op.payload
		}
	}
	return out
}
