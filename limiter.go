package batcher

import (
	"context"
	"time"
)

// A RateLimiter grants a [Batcher] the capacity it may release, in cost
// units per second. Package ratelimiter has a fixed provisioned capacity and
// a token bucket.
//
// Whatever the limiter says, the Batcher itself never releases more than
// Capacity() in any one-second window, so a custom limiter cannot make it
// overshoot: a limiter only decides how much capacity there is.
//
// The Batcher calls MaxCapacity from Enqueue, on the caller's goroutine, and
// the other methods from its own goroutines, never while holding its locks.
// They must be safe for concurrent use and must not block.
type RateLimiter interface {
	// MaxCapacity returns the most capacity the limiter could ever grant.
	// Enqueue refuses operations that cost more with ErrTooExpensive; when it
	// drops, the Batcher fails, with ErrTooExpensive, the buffered operations
	// that cost more than the new maximum (at the next capacity interval),
	// and those that ProcessBatch sends back for another attempt (a retry
	// or a throttle) afterwards.
	// An operation that costs more than the capacity granted now, but not
	// more than the maximum, waits for the capacity, and so do the
	// operations of its watcher behind it.
	MaxCapacity() int

	// Capacity returns the capacity granted now, in cost units per second.
	// The Batcher reads it every capacity interval and every flush.
	Capacity() int

	// GiveMe tells the limiter the capacity the Batcher would use, in cost
	// units per second: the cost it released in the last second plus the
	// cost of the operations waiting now (the target, see
	// Batcher.NeedsCapacity). Under a backlog it exceeds the capacity, by
	// the target; at a steady rate under the capacity it is about that
	// rate. The Batcher calls it every capacity interval. A limiter that
	// acquires capacity, such as a shared one, acquires enough for it, and
	// lets go of what it does not need.
	GiveMe(demand int)

	// Start starts the limiter's own work, if any, until ctx is cancelled.
	// The Batcher calls it from its own Start and reports its error.
	Start(ctx context.Context) error
}

// A Pacer is a [RateLimiter] that also decides when, within each second, cost
// may go out, as a token bucket does. A Batcher whose limiter is a Pacer
// releases only what TokensAt allows, instead of spreading each second's
// capacity evenly over its flushes; the one-second bound on Capacity still
// holds.
//
// Unlike the RateLimiter methods, the Batcher calls these while it holds its
// lock, as it decides each release: they must be quick, must not block, and
// must not call the Batcher.
type Pacer interface {
	// TokensAt returns the cost that may go out at now.
	TokensAt(now time.Time) float64
	// TakeAt records that cost n went out at now.
	TakeAt(now time.Time, n int)
	// Burst returns the most cost TokensAt can ever return.
	Burst() int
}

// An EventSource emits events; the rate limiters in package ratelimiter are
// ones. A Batcher whose rate limiter is an EventSource passes the limiter's
// events on to its own listeners until it has shut down.
type EventSource interface {
	AddListener(fn func(Event)) int
	RemoveListener(id int)
}

// A Stopper is a [RateLimiter] with work to finish when the Batcher stops,
// such as releasing leases. Shutdown calls Stop, after in-flight batches have
// returned, with Shutdown's own context; Close and a Shutdown that gave up
// only cancel the context given to Start.
type Stopper interface {
	Stop(ctx context.Context) error
}
