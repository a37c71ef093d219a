package batcher

import "time"

// A Learner is a RateLimiter that learns the throughput the datastore gives from how batches went.
//
// A [Batcher] whose rate limiter implements Learner calls ObserveBatch once
// for every ProcessBatch call that completed (returned, and was accounted
// for: not one that Close abandoned, nor one that never started), with what
// the call showed. So a limiter that adapts to throttles needs no wiring
// with AddListener: the Batcher tells it. The ratelimiter package's
// Controller and Adaptive are Learners.
//
// The Batcher calls ObserveBatch without holding its locks, from the
// goroutine that completed the batch, once the batch's operations have been
// accounted for (the throttled ones are back in the buffer); calls for
// batches that complete at the same time may run concurrently, and may come
// in another order than the batches returned. ObserveBatch must be quick,
// must not block, and must not call the Batcher (it may change what
// Capacity returns next; the Batcher reads it at its next flush or capacity
// interval).
type Learner interface {
	ObserveBatch(o BatchOutcome)
}

// BatchOutcome is what one ProcessBatch call showed, as the Batcher accounted for it.
//
// Operations = Succeeded + Throttled + the operations that failed or are to
// be retried after their watcher's back-off (neither says anything about
// the datastore's throughput in itself).
type BatchOutcome struct {
	// Watcher is the watcher whose ProcessBatch ran the batch.
	Watcher *Watcher
	// Released is when ProcessBatch was called: the moment the Batcher's
	// one-second capacity window counts the batch from (see [ReleasedAt]).
	Released time.Time // when ProcessBatch was called
	// Returned is when it returned, as the Batcher saw it (read just
	// before the outcome was accounted).
	Returned time.Time // when it returned
	// Operations is how many operations the batch had.
	Operations int // operations in the batch
	// Cost is the cost charged for the batch against the capacity: the
	// declared cost of each operation, or its actual cost where
	// ProcessBatch reported one with SetActualCost (a datastore that
	// charges nothing for a throttled request reports 0 for it).
	Cost int // cost charged for the batch (actual costs where reported)
	// Succeeded is how many operations succeeded (ended without an
	// error).
	Succeeded int // operations that succeeded
	// Throttled is how many operations the datastore throttled: those
	// given Operation.Throttle, or all of them (but those given another
	// verdict) when ProcessBatch returned a [Throttle] error. They are
	// retried.
	Throttled int // operations the datastore throttled
	// RetryAfter is the longest retry-after given with a throttle of this
	// batch (Operation.Throttle or Throttle), or 0 if none was given or
	// nothing was throttled. It is passed on as given: a limiter should
	// bound what it makes of an absurd one.
	RetryAfter time.Duration // the longest retry-after the datastore gave with a throttle; 0 if none
}
