package filelog

import (
	"fmt"
	"os"
	"time"
)

// writer is the goroutine that owns the active segment: it writes what
// Appends leave in pending, in one write call per round (group commit),
// fsyncs as the policy says, and rolls to a new segment when the active one
// is full.
func (l *Log) writer() {
	var tick <-chan time.Time
	if l.sync > 0 {
		t := time.NewTicker(time.Duration(l.sync))
		defer t.Stop()
		tick = t.C
	}
	dirty := false
	var spare []byte
	// With SyncEveryAppend, a round waits a little for the Appends that the
	// last round released to come back, so that they share the next fsync
	// instead of alternating in two half-full groups: until as many records
	// are pending as the last round wrote plus those that came during it,
	// for at most half the last fsync's time (and 2 ms).
	var target int
	var lastSync time.Duration
	gather := func() {
		if l.sync != SyncEveryAppend || target <= 1 {
			return
		}
		t := time.NewTimer(min(lastSync/2, 2*time.Millisecond))
		defer t.Stop()
		for {
			l.mu.Lock()
			n := l.records
			l.mu.Unlock()
			if n >= target {
				return
			}
			select {
			case <-l.kick:
			case <-t.C:
				return
			case <-l.closedCh:
				return
			}
		}
	}
	round := func() {
		gather()
		l.mu.Lock()
		if len(l.pending) == 0 {
			l.mu.Unlock()
			return
		}
		buf, g, n := l.pending, l.group, l.records
		l.pending, l.group, l.records = spare[:0], &group{done: make(chan struct{})}, 0
		l.mu.Unlock()
		err := l.writeOut(buf)
		if err == nil {
			l.nRecords.Add(int64(n))
			dirty = true
			if l.sync == SyncEveryAppend || g.sync {
				t0 := time.Now()
				err = l.syncActive()
				lastSync = time.Since(t0)
				dirty = err != nil
			}
		}
		l.mu.Lock()
		target = n + l.records
		if err != nil && l.broken == nil {
			l.broken = fmt.Errorf("filelog: the log is broken since a write failed; reopen it: %w", err)
		}
		wake := l.dataCh
		l.dataCh = make(chan struct{})
		l.mu.Unlock()
		close(wake)
		g.err = err
		close(g.done)
		spare = buf
	}
	for {
		select {
		case <-l.kick:
			round()
		case <-tick:
			if dirty {
				dirty = l.syncActive() != nil
			}
		case <-l.closedCh:
			round()
			if dirty && l.sync != SyncNever {
				l.syncActive()
			}
			l.active.Close()
			return
		}
	}
}

// writeOut writes buf (whole frames) to the active segment, first rolling
// to a new segment if the active one is full.
func (l *Log) writeOut(buf []byte) error {
	if l.activeSize >= l.segmentSize {
		if err := l.roll(); err != nil {
			return err
		}
	}
	n, err := l.active.Write(buf)
	l.nWrites.Add(1)
	l.activeSize += int64(n)
	l.mu.Lock()
	l.segs[len(l.segs)-1].size = l.activeSize
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("filelog: write %s: %w", l.active.Name(), err)
	}
	return nil
}

func (l *Log) syncActive() error {
	l.nSyncs.Add(1)
	if err := l.active.Sync(); err != nil {
		return fmt.Errorf("filelog: fsync %s: %w", l.active.Name(), err)
	}
	return nil
}

// roll closes the active segment (fsynced, unless the policy is
// SyncNever) and begins the next.
func (l *Log) roll() error {
	if l.sync != SyncNever {
		if err := l.syncActive(); err != nil {
			return err
		}
	}
	l.mu.Lock()
	num := l.segs[len(l.segs)-1].num + 1
	l.mu.Unlock()
	f, err := l.createSegment(num)
	if err != nil {
		return err
	}
	l.active.Close()
	l.active, l.activeSize = f, 0
	l.mu.Lock()
	l.segs = append(l.segs, &segment{num: num})
	l.mu.Unlock()
	return nil
}

func (l *Log) createSegment(num uint64) (*os.File, error) {
	f, err := os.OpenFile(l.segPath(num), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("filelog: %w", err)
	}
	if l.sync != SyncNever {
		syncDir(l.dir)
	}
	return f, nil
}

// syncDir fsyncs a directory, so that a file created or removed in it stays
// so after a power loss. Errors are ignored: some systems refuse it.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
