// Package spool puts a durable queue in front of a Batcher, so that a
// write accepted by the service is not lost when the process dies: Append
// stores a record in a Backend and returns once it is durable; a Consumer
// reads the records back, enqueues each as an operation to a Batcher, and
// removes a record only once its operation has ended. Records are typed:
// a Spool[T] stores values of the user's type T through a Codec[T] the
// user chooses (JSON, Bytes, or their own).
//
// Two backends implement Backend: package spool/filelog, a local log of
// checksummed segment files (the embedded default: no service), and
// package spool/redisstream, a Redis stream shared by producers and
// consumers in many processes.
//
//	l := filelog.New("/var/lib/myservice/spool")
//	if err := l.Open(); err != nil { ... }
//	sp := spool.New(l, spool.JSON[Event]())
//	defer sp.Close()
//
//	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[Event]) error {
//		return insert(ctx, batch) // nil: the records are removed
//	}).WithMaxBatchSize(1000)
//	c := sp.Consumer(b, w).WithCost(func(e Event) int { return 1 })
//	go c.Run(ctx)
//
//	err := sp.Append(ctx, Event{...}) // nil: durable, will be processed
//
// # Guarantees
//
//	| What | Local log (filelog) | Redis Streams (redisstream) |
//	|---|---|---|
//	| Append returned nil, SyncEveryAppend | on disk (fsynced); survives a crash of the process and of the machine | - |
//	| Append returned nil, SyncEvery(d) (default 10 ms) | written to the file: survives a crash of the process; of the machine, once the next fsync ran (at most d later) | - |
//	| Append returned nil, SyncNever | written to the file: survives a crash of the process; of the machine, when the OS wrote it | - |
//	| Append returned nil | - | what Redis promises for an acknowledged write: with appendfsync always, on the server's disk; everysec, up to 1 s may be lost if the server crashes; without persistence, nothing survives a restart |
//	| Append returned an error | not stored, if the error is ErrCodec or ErrTooLarge; otherwise it may have been stored, and will then be delivered | the same (the records of one Append are added all or none) |
//	| Delivery | at least once: a record is delivered again after a crash or a reopen unless its operation had ended and it was removed; duplicates are the records read and not yet removed (up to MaxInFlight), or removed while the watermark file was not yet written | at least once: a record is delivered again after a consumer's crash (to another consumer after ClaimIdle, or to the same consumer name at once) or when an operation outlives ClaimIdle |
//	| End of a record | removed once its operation succeeded; moved to the dead-letter store once it failed for good (an error other than batcher.ErrClosed); left in the spool if the Batcher closed before it ended | the same |
//	| Ordering | read in append order; the Batcher does not keep order (see its doc), so carry what ordering needs in the record (a time, a sequence number) | read in stream order by each consumer; no order across consumers |
//	| Dead letters | a file in the spool's directory, fsynced before the record is removed; Spool.DeadLetters lists them with their reasons, Spool.Replay appends them again | a second stream (name + ":dead"), added in the same transaction that removes the record |
//	| Bound | MaxBytes of segments: Append waits (ctx-aware) or returns ErrFull | MaxLen records: the same choice |
//
// With idempotent writes (an id per record that the datastore uses to
// collapse duplicates, as the analytics sample does) at least once becomes
// exactly once in the datastore.
//
// # Dead letters
//
// A record whose operation failed for good (ProcessBatch returned a
// permanent error, called Operation.Fail, or ran out of attempts), that the
// Batcher refused at enqueue (a bad cost), or that the codec could not
// decode, is a dead letter: the Consumer moves it to the backend's
// dead-letter store, durably, before removing it from the spool, and
// reports it to the function given to Consumer.OnDeadLetter. The store keeps
// the record's bytes, its ID and the reason; Spool.DeadLetters reads them,
// Spool.Replay puts them back in the spool for another try.
//
// # Several processes
//
// A local log is held by one process (a lock file; a second Open returns
// ErrLocked): run one spool directory per process, each with its own
// Consumer. A Redis stream is shared: run producers and consumers in as many
// processes as needed, with the same stream and group names; each consumer
// has a name of its own, and a dead consumer's records go to the others
// after ClaimIdle (set it well over the longest an operation takes, or a
// slow operation's records are processed twice).
//
// # What it does not do
//
// It does not deliver exactly once: make the writes idempotent. It does
// not keep order through the Batcher. A Consumer does not shut its Batcher
// down; stop the Consumer (cancel Run's ctx) first, then shut the Batcher
// down, then close the Spool.
package spool
