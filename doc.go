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
//     Enqueue; when MaxCapacity falls, those above it that are buffered,
//     accepted as it falls, or sent back by ProcessBatch for another
//     attempt fail with [ErrTooExpensive].
//   - Uses what it is given: under a backlog the Batcher releases C in
//     every 1.001 s (a second, and the millisecond it counts each release
//     beyond it, for the moment ProcessBatch takes to start), for any
//     C > 0; fractional shares of a flush accumulate. That pattern of
//     releases repeats every 1.001 s, and so slides 1 ms a second against
//     any other clock: each second of the datastore's own clock gets C less
//     at most one share, the most the Batcher releases at one moment (one
//     flush interval's share, C × FlushInterval, or one operation if it
//     costs more, or a token bucket limiter's burst); a share and a few
//     operations when costs vary, for a flush that waits for the room then
//     waits up to half a flush interval. Shares of at most 1% of C give at
//     least 99% of C in every second of any clock (a few operations less
//     when costs vary).
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
// # Panics
//
// A panic in ProcessBatch is recovered by the goroutine that ran it: each
// operation of the batch fails with a [*PanicError], which wraps [ErrPanic]
// and carries the panic's value and stack, and is reported in a [Failed]
// event, whatever ProcessBatch said of single operations before it
// panicked; the batch's slot frees and the Batcher goes on, as net/http
// does with a handler's panic (a long-lived Batcher has no caller to hand
// the panic to, and letting it go would end the process and every buffered
// operation with it). There is no switch to turn this off: a program that
// would rather crash can do so from a listener of Failed events that finds
// ErrPanic (log, then os.Exit), since panics in listeners are recovered too.
//
// A listener that panics does not take the Batcher down and does not keep an
// event from the other listeners: the panic is recovered, and the
// listener's first panic is reported to the others in a [ListenerPanicked]
// event; its later ones are recovered without a report.
//
// # Scheduling between watchers
//
// Releasing, forming and completing a batch cost the same however many
// watchers hold operations: the Batcher keeps the watchers with a full
// batch in one ring and those with any in another, and never walks all of
// them to find the next. Full batches go at once; a flush releases full
// batches before partial ones, and then takes turns between the two, so a
// watcher that keeps making full batches starves no one. Under load a flush
// does not cut a batch short while its watcher's operations stream in fast
// enough to fill it at least halfway within 4 flush intervals: the partial
// batch waits until it is full, or for the last flush within 4 flush
// intervals of its oldest operation (at light load, or after a burst, every
// operation goes at the next flush, as before). A buffer
// full of partial batches, with none running to free room, is flushed at
// once rather than at the next interval. At most MaxConcurrentBatches
// batches run at once, each on a worker goroutine (1024 by default, see
// [DefaultMaxConcurrentBatches]); idle workers leave after a flush interval.
//
// Watchers may share one capacity unevenly: [Watcher.WithPriority] puts a
// watcher in a class released before lower ones while capacity or slots
// are short (lower classes leave room for a higher class's next batch);
// [Watcher.WithWeight] shares a class's capacity in proportion, by cost;
// [Watcher.WithGuaranteedShare] keeps a lower class from starving. The
// defaults (priority 0, weight 1, no share) give every watcher with work an
// equal turn.
//
// # Typed payloads, logs and metrics
//
// A watcher whose payloads are all of one type T is a [TypedWatcher],
// made with [NewTypedWatcher]; its operations, made with
// [NewTypedOperation], give ProcessBatch a T with no type assertion, and a
// payload of the wrong type does not compile. [NewLogListener] writes events
// to a *slog.Logger at levels that fit (failures at Error, throttles and
// pauses at Info, the rest at Debug) without payloads. Package otelbatcher
// registers a Batcher's figures as OpenTelemetry metrics; this package
// imports no OpenTelemetry.
//
// # What it does not do
//
// The Batcher does not persist its buffer: operations buffered when the
// process dies are lost, as with any in-memory queue; package spool puts a
// durable log (a local one, or Redis Streams) in front of it. It does not keep
// order: operations are released roughly in the order they were enqueued,
// but one may overtake others enqueued just before it (the intake is split
// per CPU, so even one goroutine's operations may be reordered when the Go
// scheduler moves it), and batches of one watcher run concurrently unless
// its MaxConcurrentBatches is 1. Carry what ordering needs in the payload
// (a timestamp or a version). It does not stop a ProcessBatch that ignores
// its context: a call that never returns keeps its slot (and Shutdown gives
// up on it at its context's end).
package batcher
