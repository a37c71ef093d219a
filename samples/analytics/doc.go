// Package analytics is the analytics event pipeline on a durable spool: a
// sample to read top to bottom.
//
// Events are tracked from many goroutines with a Tracker, which
// micro-batches them (100 events, or 10 ms after the first) into a spool
// and returns from Track once the batch is durable. A spool Consumer reads
// them back and enqueues them to a Batcher, whose Watcher (NewWatcher)
// takes batches of up to 4,000 events, sorts them by time, applies the
// session logic, and inserts the rows into ClickHouse in chunks of 1,000.
// Only once every chunk of a batch is inserted does ProcessBatch return, and
// only then are the batch's records removed from the spool. If the process
// dies anywhere in between, the records are delivered again: an event may
// be inserted twice (same id), never lost. Count events with uniqExact(id),
// or make the table a ReplacingMergeTree to have merges collapse them.
//
// # Sessions
//
// Each screen_view gets its duration from the same session's next
// screen_view; the session's session_end gives the last one its duration.
// Sessions does this in Redis with one Lua script per event, which runs
// atomically, so consumers in any number of processes can apply events of
// the same session at once. It is safe across processes and redeliveries
// because the script:
//   - applies a session's events in their Seq order, whatever order they
//     arrive in (an early one is parked in Redis until its turn): the spool
//     and the Batcher do not keep order, and two consumers may hold
//     consecutive events of one session;
//   - remembers the rows each event's application released, and returns
//     the same rows when the event comes again (a redelivery after a crash
//     between the script and the insert), so that the insert is repeated,
//     not lost or changed.
//
// The kill tests (kill_test.go) run the pipeline through the local log and
// through Redis Streams with real OS processes killed at random, and check
// every screen_view's duration in the table.
//
// # Running it with several processes
//
// With the local log (spool/filelog), one process holds the spool: run one
// pipeline process per machine, each with its own spool directory. With
// Redis Streams (spool/redisstream), run any number of producer processes
// (Tracker on a Stream) and consumer processes (Consumer on a Stream with
// the same stream and group names); a consumer that dies leaves its records
// to the others after the Stream's ClaimIdle. Run Redis with appendonly yes
// and appendfsync always for the spool and the session state.
package analytics
