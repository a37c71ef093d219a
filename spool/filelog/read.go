package filelog

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/ratebatch/batcher/spool"
)

const readChunk = 256 << 10

// A CorruptError reports a record that failed its checksum while the log
// was read (after Open, which repairs what it finds).
type CorruptError struct {
	File   string
	Offset int64
}

// Error says which segment is corrupt and where.
func (e *CorruptError) Error() string {
	return fmt.Sprintf("filelog: %s is corrupt at offset %d (the disk changed under the open log); reopen the log to set the rest of the segment aside", e.File, e.Offset)
}

// Read implements spool.Backend: it returns up to max records in the order
// they were appended, waiting for one if there is none.
func (l *Log) Read(ctx context.Context, max int) ([]spool.Entry, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: Read's max is %d, want more than 0", spool.ErrInvalidSetting, max)
	}
	l.readMu.Lock()
	defer l.readMu.Unlock()
	var seg uint64
	var off, avail int64
	l.mu.Lock()
	for {
		if l.closed {
			l.mu.Unlock()
			return nil, spool.ErrClosed
		}
		s := l.findLocked(l.rseg)
		if s == nil { // between segments: go to the next that exists
			s = l.nextLocked(l.rseg)
			l.rseg, l.roff = s.num, 0
		}
		if s.size > l.roff {
			seg, off, avail = s.num, l.roff, s.size-l.roff
			break
		}
		if last := l.segs[len(l.segs)-1]; s != last {
			n := l.nextLocked(s.num)
			l.rseg, l.roff = n.num, 0
			l.advanceLocked()
			continue
		}
		wait := l.dataCh
		l.waiting = true
		l.mu.Unlock()
		select {
		case <-wait:
		case <-l.closedCh:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		l.mu.Lock()
	}
	l.mu.Unlock()

	if l.rfile == nil || l.rnum != seg {
		if l.rfile != nil {
			l.rfile.Close()
		}
		f, err := os.Open(l.segPath(seg))
		if err != nil {
			l.rfile = nil
			return nil, fmt.Errorf("filelog: %w", err)
		}
		l.rfile, l.rnum = f, seg
	}
	// Parse what the read buffer holds from off; read more (a chunk, or
	// one record larger than a chunk, whole) when it holds no whole
	// record.
	buf := l.buffered(seg, off, avail)
	want := min(avail, readChunk)
	frames := l.frames[:0]
	defer func() { clear(frames); l.frames = frames[:0] }()
	var consumed int64
	for {
		var bad bool
		frames, consumed, bad = parseFrames(buf, max, l.maxRecordSize, frames[:0])
		if len(frames) > 0 {
			break
		}
		if bad || int64(len(buf)) >= avail || int64(len(buf)) >= int64(l.maxRecordSize)+frameHeader {
			return nil, &CorruptError{File: l.rfile.Name(), Offset: off}
		}
		if int64(len(buf)) >= want {
			want = min(avail, int64(l.maxRecordSize)+frameHeader)
		}
		var err error
		if buf, err = l.fill(seg, off, want); err != nil {
			return nil, err
		}
	}
	// The entries' data belong to the caller: copy them out of the read
	// buffer, into one allocation.
	var total int
	for _, f := range frames {
		total += len(f)
	}
	arena := make([]byte, 0, total)
	entries := make([]spool.Entry, len(frames))
	at := off
	for i, f := range frames {
		start := len(arena)
		arena = append(arena, f...)
		entries[i] = spool.Entry{ID: spool.ID{Hi: seg, Lo: uint64(at)}, Data: arena[start:len(arena):len(arena)]}
		at += int64(len(f)) + frameHeader
	}
	l.mu.Lock()
	for _, e := range entries {
		l.ring.push(pos{e.ID.Hi, int64(e.ID.Lo)})
	}
	l.roff = off + consumed
	l.mu.Unlock()
	return entries, nil
}

// buffered returns the bytes of segment seg from off that the read buffer
// holds, at most avail; nil if it holds none. The records before a
// segment's size never change, so what was read stays valid.
func (l *Log) buffered(seg uint64, off, avail int64) []byte {
	if l.rbufSeg != seg || off < l.rbufOff || off >= l.rbufOff+int64(len(l.rbuf)) {
		return nil
	}
	b := l.rbuf[off-l.rbufOff:]
	return b[:min(int64(len(b)), avail)]
}

// fill reads n bytes of segment seg from off into the read buffer (a
// buffer of its own if n is more than a chunk) and returns them.
func (l *Log) fill(seg uint64, off, n int64) ([]byte, error) {
	var buf []byte
	if n <= readChunk {
		if l.rbufMem == nil {
			l.rbufMem = make([]byte, readChunk)
		}
		buf = l.rbufMem[:n]
	} else {
		buf = make([]byte, n)
	}
	l.rbuf = nil
	if _, err := l.rfile.ReadAt(buf, off); err != nil && err != io.EOF {
		return nil, fmt.Errorf("filelog: read %s: %w", l.rfile.Name(), err)
	}
	l.rbuf, l.rbufSeg, l.rbufOff = buf, seg, off
	return buf, nil
}

// parseFrames appends to frames the data of the whole frames at the start
// of b, at most max of them, and returns them with the bytes they take. bad
// reports that parsing stopped at a bad frame.
func parseFrames(b []byte, max, maxRecordSize int, frames [][]byte) (_ [][]byte, consumed int64, bad bool) {
	for len(frames) < max {
		data, n, ok := parseFrame(b[consumed:], maxRecordSize)
		if !ok {
			return frames, consumed, true
		}
		if n == 0 {
			break
		}
		frames = append(frames, data)
		consumed += int64(n)
	}
	return frames, consumed, false
}

func (l *Log) findLocked(num uint64) *segment {
	for _, s := range l.segs {
		if s.num == num {
			return s
		}
	}
	return nil
}

// nextLocked returns the first segment after num; there is always one
// after any segment but the active.
func (l *Log) nextLocked(num uint64) *segment {
	for _, s := range l.segs {
		if s.num > num {
			return s
		}
	}
	return l.segs[len(l.segs)-1]
}

// Ack implements spool.Backend: the records' work is done. Once every
// record of a segment has ended, the segment file is removed.
func (l *Log) Ack(ctx context.Context, ids []spool.ID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return spool.ErrClosed
	}
	for _, id := range ids {
		l.ring.end(pos{id.Hi, int64(id.Lo)})
	}
	return l.advanceLocked()
}

// advanceLocked moves the watermark past the ended records, saves it, and
// removes the segments wholly before it.
func (l *Log) advanceLocked() error {
	l.ring.pop()
	if err := l.saveMarkLocked(false); err != nil {
		return err
	}
	freed := false
	for len(l.segs) > 1 && l.segs[0].num < l.mark.seg {
		s := l.segs[0]
		if err := os.Remove(l.segPath(s.num)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("filelog: %w", err)
		}
		l.segs = l.segs[1:]
		l.used -= s.size
		freed = true
	}
	if freed {
		close(l.roomCh)
		l.roomCh = make(chan struct{})
	}
	return nil
}

// Dead implements spool.Backend: it writes the records and their reasons to
// the dead-letter file, fsyncs it, and then acknowledges them.
func (l *Log) Dead(ctx context.Context, entries []spool.Entry, reasons []string) error {
	if len(entries) != len(reasons) {
		return fmt.Errorf("filelog: Dead got %d entries and %d reasons", len(entries), len(reasons))
	}
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return spool.ErrClosed
	}
	if err := l.dead.add(entries, reasons); err != nil {
		return err
	}
	ids := make([]spool.ID, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	return l.Ack(ctx, ids)
}

// DeadLetters implements spool.Backend. fn must not call Replay.
func (l *Log) DeadLetters(ctx context.Context, fn func(spool.DeadEntry) error) error {
	return l.dead.list(ctx, fn)
}

// Replay implements spool.Backend: it appends every dead letter to the log
// again (fsynced, whatever the policy) and then empties the dead-letter
// file.
func (l *Log) Replay(ctx context.Context) (int, error) {
	return l.dead.replay(ctx)
}
