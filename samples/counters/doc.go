// Package counters is a sample: keyed counters coalesced in memory and
// written in batches through a [batcher.Batcher], so that a million
// increments become a few thousand writes.
//
// A [Counter] takes Increment(key, n) calls from any number of goroutines and
// sums them per key in memory. On an interval with jitter (FlushInterval,
// ±Jitter, so that many instances do not flush in step), it takes the sums
// and writes each key's sum once, in batches of keys, to a [Store]:
// [RedisStore] (INCRBY per key, in one Lua script per batch) or
// [MemoryStore]. A failed write is retried with a growing back-off; every
// key's total is exact in the store once [Counter.Shutdown] returns, or the
// sums that could not be written are reported to OnFailed.
//
// # How it uses the batcher
//
// The coalescing happens before the Batcher: each flush turns every key
// touched since the last one into one [batcher.Operation] carrying a
// [Delta] (the key, its sum, and the flush it came from), of cost 1 (one
// store write). One [batcher.Watcher] gets them in batches of up to
// BatchSize keys and its ProcessBatch writes a batch with one Store.Apply
// call. A failed Apply is answered with [batcher.Retry]: the Batcher waits
// the watcher's back-off and hands the deltas back, possibly grouped
// differently with newer ones, up to MaxAttempts; then it reports them in a
// Failed event, which becomes an OnFailed call. WithMaxWritesPerSecond caps
// the key writes per second with a provisioned rate limiter. Between
// flushes, memory holds one sum per key, however many increments come.
//
// # Exact under retries
//
// INCRBY is not idempotent: a write retried after it was applied, with the
// reply lost on the way back (a broken connection, a server killed after
// the write), would count twice. So each delta carries its identity, the
// flush it came from (unique to the Counter: a random instance id and a
// sequence number) and its key; a key's sum is made once per flush. The
// Redis store applies a batch in one Lua script, which Redis runs atomically
// (all or nothing, and in its append-only file as one unit): for each delta,
// SADD of the key to the set of keys applied for that flush, and INCRBY only
// if the SADD added it. A retry of a delta already applied is then a no-op,
// whatever batch it comes back in. The sets expire after DedupeTTL (a day by
// default), which must exceed the longest a delta can be retried.
//
// # What it does not do
//
// Sums buffered in memory when the process dies are lost, as with any
// in-memory buffer. The Redis script touches several keys at once, so on a
// Redis Cluster the keys would need one hash slot ({hash tags} in the
// prefix); this sample targets a single Redis. A Lua script is not rolled
// back if a command in it fails (a key holding a non-integer, say): that
// batch stays partly applied and its retries skip what was applied.
package counters
