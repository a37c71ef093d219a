// Package filelog is the local-log backend of a spool: the embedded
// default, with no service to run.
//
// A Log keeps records in a directory of segment files (8 MiB by default).
// Each record is framed with its length and a CRC-32C of the length and
// the data. The segment being written is reserved on disk and mapped:
// Append copies its frames into the mapping under a mutex, so that once it
// returns they are in the operating system's page cache (a kill -9 does
// not lose them). With SyncEvery and SyncNever it returns then; with
// SyncEveryAppend it waits for the syncer goroutine's next fsync, which
// covers every Append since the last (group commit) and which the syncer
// holds back for a moment to let the Appends it just released join. A
// full segment is cut to its records and the next one begun under the
// mutex; its fsync and close are left to the syncer, which runs them at
// once, and every fsync the policy promises (a SyncEveryAppend round, a
// SyncEvery tick, Close) covers such segments too.
//
// The consumer reads the segments in order; records that ended move a
// watermark (saved in the file "ack", not fsynced: a lost watermark only
// makes records be delivered again), and a segment is deleted once the
// watermark passed it. The bytes held are bounded (MaxBytes): Append waits
// for room, ctx-aware, or returns spool.ErrFull.
//
// Open takes a lock (flock on the file "LOCK", released by the kernel when
// the process dies) so that two processes cannot open one directory, and
// checks every record: a torn or corrupt tail of the newest segment (a
// crash during a write) is cut, and reported as a Cut; a bad record in any
// other segment is corruption: the rest of that segment is copied to a
// file beside it and cut, reported as a Cut, and every other record is
// kept. Dead letters are kept in the file "dead.log", fsynced on every
// write.
package filelog
