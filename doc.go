// Package batcher releases writes to a datastore as fast as the datastore
// allows and never faster.
//
// Services write to datastores that sell throughput by the second: Azure
// Cosmos DB in request units, ClickHouse in inserts it can merge, an API in
// calls per second. A caller wraps each write in an [Operation] with a cost
// and enqueues it to a [Batcher], one per datastore. The Batcher groups
// operations per [Watcher] and hands them to the watcher's ProcessBatch in
// batches, releasing no more cost than its [RateLimiter] grants.
//
// # Guarantees
//
//   - Never over capacity: with capacity C, the cost released in any
//     one-second window is at most C, whatever the flush interval, manual
//     flushes, operation costs or concurrency; a batch counts from the moment
//     its ProcessBatch call starts, however late its goroutine runs. An
//     operation costing more than the limiter's MaxCapacity is refused by
//     Enqueue.
//   - Uses what it is given: under a backlog the Batcher releases C per
//     second, for any C > 0; fractional shares of a flush accumulate.
//   - Every operation has exactly one end: refused by Enqueue, or succeeded,
//     or failed and reported in a [Failed] event. [Batcher.Stats] counts them.
//   - Lossless shutdown: [Batcher.Shutdown] drains the buffer through the
//     limiter and waits for running batches; what it cannot finish before its
//     context ends is reported operation by operation.
//   - Latency without losing batching: a full batch goes out at once (within
//     a millisecond when it fills while its producers stream operations
//     without a pause); with [Batcher.WithEagerRelease] any operation does,
//     as soon as a slot and capacity allow.
//   - Bounded memory: the buffer is bounded; a full buffer blocks Enqueue or
//     fails it with [ErrBufferFull].
//
// # Feedback from the datastore
//
// ProcessBatch says how a batch went: nil for done, [Retry] to try again
// after a back-off, [Throttle] when the datastore answered "too many
// requests", any other error for a permanent failure; and per operation,
// with [Operation.Retry], [Operation.Throttle], [Operation.Fail] and
// [Operation.SetActualCost].
//
// # Throttles and lanes
//
// A throttle pauses only the operations that share its cause: its lane,
// which is the watcher whose batch was throttled. Other watchers' releases
// go on meanwhile, at the same cost per release however many lanes are
// paused. Give each independent budget of the datastore a watcher of its
// own (for Azure Cosmos DB, one per partition key range): a hot partition's
// 429s then never hold back the cold ones. A retry-after is waited exactly,
// up to MaxPauseTime; a throttle without one (0 or negative) backs off from
// PauseTime, doubling while the lane's throttles repeat, with ±20% jitter,
// at most MaxPauseTime, and the lane's first success resets it. Throttled
// operations are retried and count against the capacity again; whatever the
// lanes do, no one-second window carries more than the capacity.
// [Batcher.Pause] stays Batcher-wide. [Paused] and [Resumed] events name the
// lane in Event.Watcher (nil for the Batcher-wide pause).
//
// # What it does not do
//
// The Batcher does not persist its buffer: operations buffered when the
// process dies are lost, as with any in-memory queue. It does not keep
// order: operations are released roughly in the order they were enqueued,
// but one may overtake others enqueued just before it (the intake is split
// per CPU, so even one goroutine's operations may be reordered when the Go
// scheduler moves it), and batches of one watcher run concurrently unless
// its MaxConcurrentBatches is 1. Carry what ordering needs in the payload
// (a timestamp or a version). It does not recover panics in ProcessBatch.
package batcher
