package filelog

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// A pos is a place in the log: a segment and an offset in it.
type pos struct {
	seg uint64
	off int64
}

func (p pos) less(q pos) bool { return p.seg < q.seg || p.seg == q.seg && p.off < q.off }

// recover reads the directory at Open: it checks and repairs the segments,
// reads the watermark, removes the segments wholly before it, and begins a
// new active segment.
func (l *Log) recover() error {
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("filelog: %w", err)
	}
	var nums []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok || e.IsDir() {
			continue
		}
		if n, err := strconv.ParseUint(name, 10, 64); err == nil {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	for i, num := range nums {
		size, err := l.check(l.segPath(num), i == len(nums)-1, l.maxRecordSize)
		if err != nil {
			return err
		}
		l.segs = append(l.segs, &segment{num: num, size: size})
	}

	l.ackF, err = os.OpenFile(filepath.Join(l.dir, "ack"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("filelog: %w", err)
	}
	var b [20]byte
	if n, _ := l.ackF.ReadAt(b[:], 0); n == len(b) && crc32.Checksum(b[:16], castagnoli) == binary.LittleEndian.Uint32(b[16:]) {
		l.mark = pos{binary.LittleEndian.Uint64(b[:8]), int64(binary.LittleEndian.Uint64(b[8:16]))}
	}
	for len(l.segs) > 0 && l.segs[0].num < l.mark.seg {
		if err := os.Remove(l.segPath(l.segs[0].num)); err != nil {
			l.ackF.Close()
			return fmt.Errorf("filelog: %w", err)
		}
		l.segs = l.segs[1:]
	}
	next := uint64(1)
	if len(l.segs) > 0 {
		first := l.segs[0]
		l.rseg = first.num
		if first.num == l.mark.seg {
			l.roff = min(l.mark.off, first.size)
		}
		next = l.segs[len(l.segs)-1].num + 1
	} else {
		next = max(next, l.mark.seg)
		l.rseg = next
		// The watermark may name a segment that is not on disk (lost with
		// the machine, or removed by hand), and the new segment takes its
		// number: save the watermark at its start, so that an offset meant
		// for the lost file never skips the new one's records.
		if err := l.saveMarkLocked(true); err != nil {
			l.ackF.Close()
			return err
		}
	}
	for _, s := range l.segs {
		l.used += s.size
	}
	m, err := l.createSegment(next, l.segmentSize)
	if err != nil {
		l.ackF.Close()
		return err
	}
	l.active = m
	l.used += l.segmentSize
	l.segs = append(l.segs, &segment{num: next})
	if err := l.dead.open(filepath.Join(l.dir, "dead.log"), l.maxRecordSize+deadOverhead, l); err != nil {
		l.sealLocked()
		l.ackF.Close()
		return err
	}
	return nil
}

// check reads a file of frames to its first bad or incomplete frame and
// cuts the file there: a torn tail if tail is true, corruption otherwise,
// whose bytes are first copied aside. It returns the size kept.
func (l *Log) check(path string, tail bool, max int) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("filelog: %w", err)
	}
	off := 0
	for off < len(data) {
		_, n, ok := parseFrame(data[off:], max)
		if !ok || n == 0 {
			break
		}
		off += n
	}
	if off == len(data) {
		return int64(off), nil
	}
	if allZero(data[off:]) {
		// Space reserved for records that never came (the process died
		// before it sealed the segment): nothing is cut.
		return int64(off), truncate(path, int64(off))
	}
	c := Cut{File: path, Offset: int64(off), Bytes: int64(len(data) - off), Tail: tail}
	if !tail {
		c.SavedAs = fmt.Sprintf("%s.corrupt-%d", path, off)
		if err := os.WriteFile(c.SavedAs, data[off:], 0o644); err != nil {
			return 0, fmt.Errorf("filelog: %s is corrupt at offset %d, and saving its rest failed: %w", path, off, err)
		}
	}
	if err := truncate(path, int64(off)); err != nil {
		return 0, err
	}
	l.cuts = append(l.cuts, c)
	return int64(off), nil
}

func truncate(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("filelog: %w", err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("filelog: cut %s at %d: %w", path, size, err)
	}
	return nil
}

// saveMarkLocked writes the watermark (the first record not yet ended) to
// the ack file if it moved, or if force. It is not fsynced: a watermark
// lost in a power failure only makes records be delivered again.
func (l *Log) saveMarkLocked(force bool) error {
	m := l.watermarkLocked()
	if m == l.mark && !force {
		return nil
	}
	l.mark = m
	var b [20]byte
	binary.LittleEndian.PutUint64(b[:8], m.seg)
	binary.LittleEndian.PutUint64(b[8:16], uint64(m.off))
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
	if _, err := l.ackF.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("filelog: save the watermark: %w", err)
	}
	return nil
}

func (l *Log) watermarkLocked() pos {
	if p, ok := l.ring.front(); ok {
		return p
	}
	return pos{l.rseg, l.roff}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
