package batcher

import (
	"errors"
	"time"
)

// The accessors below let adapters (such as package otelbatcher, which
// exports a Batcher's figures to OpenTelemetry) read what the Batcher was
// configured with and what ProcessBatch said, without the Batcher knowing
// of them. They are cheap and, but for ActualCost, safe for concurrent use.

// BufferSize returns the most operations the Batcher holds at once: its
// WithBufferSize setting, or the default.
func (b *Batcher) BufferSize() int { return b.cfg.bufferSize }

// RateLimiter returns the Batcher's rate limiter, or nil if it has none.
func (b *Batcher) RateLimiter() RateLimiter { return b.cfg.limiter }

// ActualCost returns the cost reported with [Operation.SetActualCost] during
// the operation's current or last ProcessBatch call, and true; or 0 and
// false if none was reported. A retry forgets it before the next attempt.
// Like SetActualCost it belongs to ProcessBatch: call it there (or in a
// Processor that wraps another, after the inner one returned), not while
// another goroutine may call SetActualCost.
func (op *Operation) ActualCost() (cost int, ok bool) {
	if c, ok := op.actualCost(); ok {
		return c, true
	}
	return 0, false
}

// IsRetry reports whether err, or an error it wraps, was made by [Retry]: as
// ProcessBatch's result, it asks for the batch to be retried.
func IsRetry(err error) bool {
	var f *feedback
	return errors.As(err, &f) && f.verdict == verdictRetry
}

// IsThrottle reports whether err, or an error it wraps, was made by
// [Throttle], and the retry-after it carries: as ProcessBatch's result, it
// says the datastore throttled the batch.
func IsThrottle(err error) (after time.Duration, ok bool) {
	var f *feedback
	if errors.As(err, &f) && f.verdict == verdictThrottle {
		return f.after, true
	}
	return 0, false
}
