package filelog

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"github.com/ratebatch/batcher/spool"
)

// The dead-letter file holds frames whose data is the record's ID in the
// log (16 bytes), the reason's length (4 bytes), the reason (at most
// maxReason bytes) and the record.
const (
	maxReason    = 4096
	deadOverhead = 20 + maxReason
)

type deadLog struct {
	mu   sync.RWMutex
	l    *Log
	f    *os.File
	size int64
	max  int
}

func (d *deadLog) open(path string, max int, l *Log) error {
	d.l, d.max = l, max
	size, err := l.check(path, true, max)
	if os.IsNotExist(unwrapAll(err)) {
		size, err = 0, nil
	}
	if err != nil {
		return err
	}
	d.f, err = os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("filelog: %w", err)
	}
	d.size = size
	return nil
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func (d *deadLog) close() error {
	if d.f == nil {
		return nil
	}
	return d.f.Close()
}

func (d *deadLog) add(entries []spool.Entry, reasons []string) error {
	var buf, rec []byte
	for i, e := range entries {
		r := reasons[i]
		if len(r) > maxReason {
			r = r[:maxReason]
		}
		rec = binary.LittleEndian.AppendUint64(rec[:0], e.ID.Hi)
		rec = binary.LittleEndian.AppendUint64(rec, e.ID.Lo)
		rec = binary.LittleEndian.AppendUint32(rec, uint32(len(r)))
		rec = append(rec, r...)
		rec = append(rec, e.Data...)
		buf = appendFrame(buf, rec)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.f.WriteAt(buf, d.size); err != nil {
		return fmt.Errorf("filelog: write the dead letters: %w", err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("filelog: fsync the dead letters: %w", err)
	}
	d.size += int64(len(buf))
	return nil
}

func (d *deadLog) list(ctx context.Context, fn func(spool.DeadEntry) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.listLocked(ctx, fn)
}

func (d *deadLog) listLocked(ctx context.Context, fn func(spool.DeadEntry) error) error {
	data := make([]byte, d.size)
	if _, err := d.f.ReadAt(data, 0); err != nil && int64(len(data)) > 0 {
		return fmt.Errorf("filelog: read the dead letters: %w", err)
	}
	off := 0
	for off < len(data) {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec, n, ok := parseFrame(data[off:], d.max)
		if !ok || n == 0 || len(rec) < 20 {
			return &CorruptError{File: d.f.Name(), Offset: int64(off)}
		}
		rl := int(binary.LittleEndian.Uint32(rec[16:20]))
		if 20+rl > len(rec) {
			return &CorruptError{File: d.f.Name(), Offset: int64(off)}
		}
		e := spool.DeadEntry{
			ID:     spool.ID{Lo: uint64(off)},
			From:   spool.ID{Hi: binary.LittleEndian.Uint64(rec[:8]), Lo: binary.LittleEndian.Uint64(rec[8:16])},
			Reason: string(rec[20 : 20+rl]),
			Data:   rec[20+rl : len(rec) : len(rec)],
		}
		if err := fn(e); err != nil {
			return err
		}
		off += n
	}
	return nil
}

func (d *deadLog) replay(ctx context.Context) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var recs [][]byte
	err := d.listLocked(ctx, func(e spool.DeadEntry) error {
		recs = append(recs, e.Data)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if len(recs) == 0 {
		return 0, nil
	}
	if err := d.l.append(ctx, recs, true); err != nil {
		return 0, err
	}
	if err := d.f.Truncate(0); err != nil {
		return len(recs), fmt.Errorf("filelog: the dead letters were replayed but not removed: %w", err)
	}
	d.size = 0
	return len(recs), d.f.Sync()
}
