package filelog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher/spool"
)

// A SyncPolicy says when the log calls fsync: SyncEveryAppend, SyncNever,
// or SyncEvery(d).
type SyncPolicy time.Duration

const (
	// SyncEveryAppend makes Append return only once its records are on
	// disk (fsync). Concurrent Appends share one fsync (group commit).
	SyncEveryAppend SyncPolicy = 0
	// SyncNever leaves flushing to the operating system: Append returns
	// once its records are written to the file (they survive the
	// process's death, not the machine's).
	SyncNever SyncPolicy = -1
)

// SyncEvery returns the policy of Append returning once its records are
// written to the file, with an fsync at most d later. d must be more than 0.
func SyncEvery(d time.Duration) SyncPolicy { return SyncPolicy(d) }

// String names the policy as its constructor does.
func (p SyncPolicy) String() string {
	switch {
	case p == SyncEveryAppend:
		return "every append"
	case p < 0:
		return "never"
	default:
		return "every " + time.Duration(p).String()
	}
}

// Defaults of a Log's settings.
const (
	DefaultSync          = SyncPolicy(10 * time.Millisecond)
	DefaultMaxBytes      = 1 << 30
	DefaultSegmentSize   = 8 << 20
	DefaultMaxRecordSize = 1 << 20
)

// A Cut is a part of a file that Open found unreadable and set aside.
type Cut struct {
	File   string // the segment (or dead-letter file) it was cut from
	Offset int64  // where the bad part began
	Bytes  int64  // how many bytes were cut
	// Tail is true for the end of the newest segment or of the dead-letter
	// file, where a crash during a write leaves a torn record: normal
	// after a crash. A cut elsewhere is corruption of the disk.
	Tail bool
	// SavedAs names the file the cut bytes were copied to, for
	// inspection; "" for a torn tail, which is dropped.
	SavedAs string
}

// String says what was cut, where, and why.
func (c Cut) String() string {
	if c.Tail {
		return fmt.Sprintf("filelog: cut a torn tail of %d bytes at offset %d of %s", c.Bytes, c.Offset, c.File)
	}
	return fmt.Sprintf("filelog: %s is corrupt at offset %d: %d bytes set aside in %s; the records before it and in the other segments are kept", c.File, c.Offset, c.Bytes, c.SavedAs)
}

// Stats counts what a Log did since Open.
type Stats struct {
	Records  int64 // records appended
	Writes   int64 // Append calls that copied records into a segment
	Syncs    int64 // fsync calls on segments
	Bytes    int64 // bytes the segment files take now, counting the space reserved for the active one
	Segments int64 // segment files now
	Unread   int64 // bytes of records appended and not yet read
	Unended  int64 // records read and not yet ended (acknowledged or dead-lettered)
}

// A Log is the local-log backend of a spool: a directory of segment files
// holding checksummed records, written with group commit and fsynced by a
// SyncPolicy, bounded in bytes. It implements spool.Backend.
//
// Create it with New, configure it with the With* methods, and Open it.
// Only one Log, in one process, can hold a directory at a time. The
// methods of an open Log are safe for concurrent use; hand it to
// spool.New.
type Log struct {
	dir           string
	sync          SyncPolicy
	maxBytes      int64
	segmentSize   int64
	maxRecordSize int
	errorWhenFull bool
	onCut         func(Cut)

	opened atomic.Bool
	lockF  *os.File
	ackF   *os.File
	cuts   []Cut

	mu       sync.Mutex
	closed   bool
	closedCh chan struct{}
	group    *group // the Appends waiting for the next fsync (SyncEveryAppend)
	dirty    bool   // written since the last fsync
	waiting  bool   // a Read waits on dataCh
	used     int64  // bytes in segments
	segs     []*segment
	roomCh   chan struct{} // closed when bytes are freed
	dataCh   chan struct{} // closed when records are written
	rseg     uint64        // the segment the reader reads
	roff     int64         // where in it
	ring     ring          // records read and not yet ended, in order
	mark     pos           // last watermark saved

	kick   chan struct{} // wakes the writer
	wg     sync.WaitGroup
	readMu sync.Mutex
	rfile  *os.File
	rnum   uint64
	// the read buffer, under readMu: bytes of segment rbufSeg from offset
	// rbufOff, held in rbufMem (one chunk, reused) unless a record was
	// larger
	rbuf    []byte
	rbufSeg uint64
	rbufOff int64
	rbufMem []byte
	frames  [][]byte // a Read's records in rbuf, reused

	dead deadLog

	// the active segment, mapped into memory; under mu
	active     *mapped
	activeSize int64
	broken     error      // a roll failed: the log refuses appends
	syncMu     sync.Mutex // held while a file is fsynced or sealed
	// segments a roll detached (unmapped and cut to their records) that
	// the syncer has yet to fsync and close; under mu
	detached []*mapped
	sealKick chan struct{} // wakes the syncer to seal the detached segments

	nRecords, nWrites, nSyncs atomic.Int64

	// Hooks of the package's own tests; nil otherwise.
	testBeforeRoundSync func() // in the syncer, between taking a group and its fsync
	testBeforeTickSync  func() // in the syncer, between taking the dirty flag and the tick's fsync
	testSynced          func(path string)
	testBeforeSealSync  func(path string) // before a full segment's fsync
}

type segment struct {
	num  uint64
	size int64 // bytes written
}

type group struct {
	done chan struct{}
	err  error
	n    int // records waiting
}

// New returns a Log in directory dir (created at Open if missing) with the
// default settings: fsync every 10 ms, at most 1 GiB, segments of 8 MiB,
// records of at most 1 MiB, Append waiting when full.
func New(dir string) *Log {
	return &Log{
		dir:           dir,
		sync:          DefaultSync,
		maxBytes:      DefaultMaxBytes,
		segmentSize:   DefaultSegmentSize,
		maxRecordSize: DefaultMaxRecordSize,
	}
}

func (l *Log) mustNotBeOpen(method string) {
	if l.opened.Load() {
		panic("filelog: Log." + method + " called after Open")
	}
}

// WithSync sets when the log calls fsync; the default is SyncEvery(10ms).
// See the spool package's doc for what each policy makes durable.
func (l *Log) WithSync(p SyncPolicy) *Log {
	l.mustNotBeOpen("WithSync")
	l.sync = p
	return l
}

// WithMaxBytes bounds the bytes the log's segment files take on disk,
// counting the space reserved for the segment being written. When an Append
// would pass it, Append waits for the consumer to free room (or, with
// WithErrorWhenFull, returns spool.ErrFull). Room is freed a segment at a
// time, once every record in it has ended. The default is 1 GiB; n must be
// at least twice the segment size.
func (l *Log) WithMaxBytes(n int64) *Log {
	l.mustNotBeOpen("WithMaxBytes")
	l.maxBytes = n
	return l
}

// WithSegmentSize sets the size at which a segment file is closed and the
// next one begun. The default is 8 MiB, or a quarter of MaxBytes if that is
// less; n must be more than the largest record's frame (MaxRecordSize + 8).
func (l *Log) WithSegmentSize(n int64) *Log {
	l.mustNotBeOpen("WithSegmentSize")
	l.segmentSize = n
	return l
}

// WithMaxRecordSize sets the largest encoded record Append accepts; a
// larger one is refused with an error wrapping spool.ErrTooLarge. The
// default is 1 MiB; n must be more than 0.
func (l *Log) WithMaxRecordSize(n int) *Log {
	l.mustNotBeOpen("WithMaxRecordSize")
	l.maxRecordSize = n
	return l
}

// WithErrorWhenFull makes Append return spool.ErrFull when the log is
// full, instead of waiting for room.
func (l *Log) WithErrorWhenFull() *Log {
	l.mustNotBeOpen("WithErrorWhenFull")
	l.errorWhenFull = true
	return l
}

// OnCut sets a function that Open calls with each part of a file it cut
// (see Cut), before it returns. Log.Cuts returns them too.
func (l *Log) OnCut(fn func(Cut)) *Log {
	l.mustNotBeOpen("OnCut")
	l.onCut = fn
	return l
}

// Cuts returns what Open cut from the files it found.
func (l *Log) Cuts() []Cut { return l.cuts }

// Dir returns the log's directory.
func (l *Log) Dir() string { return l.dir }

// Stats returns the log's counts.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	used, n, unended := l.used, int64(len(l.segs)), int64(l.ring.len())
	var unread int64
	for _, s := range l.segs {
		switch {
		case s.num > l.rseg:
			unread += s.size
		case s.num == l.rseg:
			unread += s.size - l.roff
		}
	}
	l.mu.Unlock()
	return Stats{Records: l.nRecords.Load(), Writes: l.nWrites.Load(), Syncs: l.nSyncs.Load(), Bytes: used, Segments: n, Unread: unread, Unended: unended}
}

func (l *Log) validate() error {
	var errs []error
	if l.dir == "" {
		errs = append(errs, fmt.Errorf("%w: the directory is empty", spool.ErrInvalidSetting))
	}
	if l.maxRecordSize <= 0 {
		errs = append(errs, fmt.Errorf("%w: MaxRecordSize is %d, want more than 0", spool.ErrInvalidSetting, l.maxRecordSize))
	}
	if l.segmentSize == DefaultSegmentSize && l.maxBytes/4 < l.segmentSize {
		l.segmentSize = l.maxBytes / 4
	}
	if l.segmentSize < int64(l.maxRecordSize)+frameHeader {
		errs = append(errs, fmt.Errorf("%w: SegmentSize is %d, want at least MaxRecordSize + 8 = %d", spool.ErrInvalidSetting, l.segmentSize, int64(l.maxRecordSize)+frameHeader))
	}
	if l.maxBytes < 2*l.segmentSize {
		errs = append(errs, fmt.Errorf("%w: MaxBytes is %d, want at least twice SegmentSize (%d)", spool.ErrInvalidSetting, l.maxBytes, 2*l.segmentSize))
	}
	return errors.Join(errs...)
}

func (l *Log) segPath(num uint64) string {
	return filepath.Join(l.dir, fmt.Sprintf("%020d.seg", num))
}

// Open checks the settings, takes the directory's lock, and recovers what
// the directory holds: it checks every record's checksum, cuts a torn tail
// from the newest segment (reported, see Cuts), sets aside the rest of a
// segment that is corrupt in the middle (reported; the other records are
// kept), and delivers again every record not yet ended. If another process
// holds the directory, Open returns an error wrapping spool.ErrLocked.
func (l *Log) Open() error {
	if !l.opened.CompareAndSwap(false, true) {
		return fmt.Errorf("filelog: Open called twice")
	}
	if err := l.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return fmt.Errorf("filelog: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(l.dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("filelog: %w", err)
	}
	held, err := lock(lf)
	if err != nil || held {
		lf.Close()
		if held {
			return fmt.Errorf("%w: %s is locked by another process (or another open Log)", spool.ErrLocked, l.dir)
		}
		return fmt.Errorf("filelog: lock %s: %w", l.dir, err)
	}
	l.lockF = lf
	if err := l.recover(); err != nil {
		l.lockF.Close()
		return err
	}
	l.closedCh = make(chan struct{})
	l.roomCh = make(chan struct{})
	l.dataCh = make(chan struct{})
	l.kick = make(chan struct{}, 1)
	l.sealKick = make(chan struct{}, 1)
	l.group = &group{done: make(chan struct{})}
	for _, c := range l.cuts {
		if l.onCut != nil {
			l.onCut(c)
		}
	}
	l.wg.Go(l.syncer)
	return nil
}

// Close stops the log: it fsyncs (unless the policy is SyncNever) what
// Appends wrote, wakes every blocked call with
// spool.ErrClosed, closes its files and releases the directory's lock.
// Close may be called more than once.
func (l *Log) Close() error {
	if !l.opened.Load() || l.closedCh == nil {
		return nil
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.closedCh)
	l.mu.Unlock()
	l.wg.Wait()
	l.readMu.Lock()
	if l.rfile != nil {
		l.rfile.Close()
		l.rfile = nil
	}
	l.readMu.Unlock()
	err := l.sealDetached()
	l.mu.Lock()
	err = errors.Join(err, l.saveMarkLocked(true))
	err = errors.Join(err, l.sealLocked())
	l.mu.Unlock()
	err = errors.Join(err, l.ackF.Close(), l.dead.close())
	return errors.Join(err, l.lockF.Close())
}

// Append implements spool.Backend: see the package doc for what is durable
// when it returns, per SyncPolicy.
func (l *Log) Append(ctx context.Context, recs [][]byte) error {
	return l.append(ctx, recs, false)
}

func (l *Log) append(ctx context.Context, recs [][]byte, forceSync bool) error {
	if !l.opened.Load() || l.closedCh == nil {
		return fmt.Errorf("filelog: Append before Open: %w", spool.ErrClosed)
	}
	var n int64
	for i, r := range recs {
		if len(r) > l.maxRecordSize {
			return fmt.Errorf("%w: record %d is %d bytes, over the limit of %d (MaxRecordSize)", spool.ErrTooLarge, i, len(r), l.maxRecordSize)
		}
		n += int64(len(r)) + frameHeader
	}
	if n > l.maxBytes-l.segmentSize {
		return fmt.Errorf("%w: %d records of %d bytes in all can never fit in MaxBytes %d", spool.ErrTooLarge, len(recs), n, l.maxBytes)
	}
	l.mu.Lock()
	for {
		if l.closed {
			l.mu.Unlock()
			return spool.ErrClosed
		}
		if l.broken != nil {
			err := l.broken
			l.mu.Unlock()
			return err
		}
		if l.activeSize+n <= int64(len(l.active.data)) {
			break // fits in the space the active segment reserved
		}
		// A new segment: its reservation must fit in the bound, counting
		// the active one as cut to its records.
		need := max(l.segmentSize, n)
		if l.used-(int64(len(l.active.data))-l.activeSize)+need <= l.maxBytes {
			if err := l.rollLocked(n); err != nil {
				l.mu.Unlock()
				return err
			}
			break
		}
		if l.errorWhenFull {
			used := l.used
			l.mu.Unlock()
			return fmt.Errorf("%w: %d of %d bytes (MaxBytes) in use", spool.ErrFull, used, l.maxBytes)
		}
		room := l.roomCh
		l.mu.Unlock()
		select {
		case <-room:
		case <-l.closedCh:
		case <-ctx.Done():
			return ctx.Err()
		}
		l.mu.Lock()
	}
	buf := l.active.data[l.activeSize:l.activeSize:len(l.active.data)]
	for _, r := range recs {
		buf = appendFrame(buf, r)
	}
	l.activeSize += n
	l.segs[len(l.segs)-1].size = l.activeSize
	if forceSync {
		l.active.forced = true
	}
	l.dirty = true
	l.nRecords.Add(int64(len(recs)))
	l.nWrites.Add(1)
	if l.waiting {
		close(l.dataCh)
		l.dataCh = make(chan struct{})
		l.waiting = false
	}
	if l.sync != SyncEveryAppend && !forceSync {
		l.mu.Unlock()
		return nil
	}
	g := l.group
	g.n += len(recs)
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	select {
	case <-g.done:
		return g.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
