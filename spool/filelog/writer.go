package filelog

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// A mapped is a segment file mapped into memory. Appends copy their frames
// into data under the log's mu: once copied, the bytes are in the
// operating system's page cache, so they survive the death of the process
// (not of the machine: that takes an fsync). closed is set, under the log's
// syncMu, when the file is sealed.
type mapped struct {
	f      *os.File
	data   []byte
	closed bool
	// forced is set once an Append that fsyncs whatever the policy
	// (Replay's) copied into it: the seal then fsyncs it under SyncNever
	// too.
	forced bool
	// sealErr is the seal's fsync error, for the Appends whose round was
	// to fsync the segment when the seal did it instead.
	sealErr error
	size    int64 // the records' bytes, once detached by a roll
}

// createSegment creates segment num, of size bytes reserved on disk, and
// maps it.
func (l *Log) createSegment(num uint64, size int64) (*mapped, error) {
	f, err := os.OpenFile(l.segPath(num), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("filelog: %w", err)
	}
	data, err := mapFile(f, size)
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("filelog: map %s: %w", f.Name(), err)
	}
	if l.sync != SyncNever {
		syncDir(l.dir)
	}
	return &mapped{f: f, data: data}, nil
}

// rollLocked detaches the active segment and begins the next, large enough
// for n bytes. The detached segment is cut to its records here; its fsync
// and close are left to the syncer (sealDetached), so that Appends do not
// wait for the fsync of a whole segment: its records are in the page cache
// already, and every fsync the policy promises covers the detached
// segments too.
func (l *Log) rollLocked(n int64) error {
	num := l.segs[len(l.segs)-1].num + 1
	reserved := int64(len(l.active.data))
	if err := l.detachLocked(); err != nil {
		l.broken = fmt.Errorf("filelog: the log is broken since a segment could not be sealed; reopen it: %w", err)
		return l.broken
	}
	l.used -= reserved - l.activeSize // detachLocked cut it
	size := max(l.segmentSize, n)
	m, err := l.createSegment(num, size)
	if err != nil {
		l.broken = fmt.Errorf("filelog: the log is broken since a segment could not be created; reopen it: %w", err)
		return l.broken
	}
	l.used += size
	l.active, l.activeSize = m, 0
	l.segs = append(l.segs, &segment{num: num})
	select {
	case l.sealKick <- struct{}{}:
	default:
	}
	return nil
}

// detachLocked unmaps the active segment, cuts its file to its records and
// puts it on the list of segments the syncer fsyncs and closes.
func (l *Log) detachLocked() error {
	a := l.active
	err := unmap(a.data)
	a.data = nil
	if terr := a.f.Truncate(l.activeSize); err == nil {
		err = terr
	}
	a.size = l.activeSize
	l.detached = append(l.detached, a)
	return err
}

// sealDetached fsyncs (unless the policy is SyncNever and no Append that
// must be fsynced wrote to it) and closes every segment detached by a roll
// before the call, and returns the first fsync error, which also breaks the
// log. A segment that another call is sealing is waited for.
func (l *Log) sealDetached() error {
	l.mu.Lock()
	ds := slices.Clone(l.detached)
	l.mu.Unlock()
	if len(ds) == 0 {
		return nil
	}
	var err error
	for _, a := range ds {
		if serr := l.sealOne(a); err == nil {
			err = serr
		}
	}
	l.mu.Lock()
	l.detached = slices.DeleteFunc(l.detached, func(a *mapped) bool { return slices.Contains(ds, a) })
	if err != nil && l.broken == nil {
		l.broken = fmt.Errorf("filelog: the log is broken since a segment could not be sealed; reopen it: %w", err)
	}
	l.mu.Unlock()
	return err
}

// sealOne fsyncs and closes a detached segment, once.
func (l *Log) sealOne(a *mapped) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if a.closed {
		return a.sealErr
	}
	if (l.sync != SyncNever || a.forced) && a.size > 0 {
		if l.testBeforeSealSync != nil {
			l.testBeforeSealSync(a.f.Name())
		}
		l.nSyncs.Add(1)
		if err := a.f.Sync(); err != nil {
			a.sealErr = fmt.Errorf("filelog: fsync %s: %w", a.f.Name(), err)
		} else if l.testSynced != nil {
			l.testSynced(a.f.Name())
		}
	}
	if err := a.f.Close(); err != nil && a.sealErr == nil {
		a.sealErr = fmt.Errorf("filelog: close %s: %w", a.f.Name(), err)
	}
	a.closed = true
	return a.sealErr
}

// sealLocked fsyncs the active segment (unless the policy is SyncNever and
// no Append that must be fsynced wrote to it),
// unmaps it, cuts the file to its records and closes it.
func (l *Log) sealLocked() error {
	a := l.active
	if a == nil || a.closed {
		return nil
	}
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	var err error
	// Fsync whether or not the log is dirty: the syncer may have taken the
	// dirty flag (and the Appends waiting on it) for this segment and not
	// have fsynced it yet; it relies on this fsync once the segment is
	// sealed.
	if (l.sync != SyncNever || a.forced) && l.activeSize > 0 {
		if l.testBeforeSealSync != nil {
			l.testBeforeSealSync(a.f.Name())
		}
		l.nSyncs.Add(1)
		err = a.f.Sync()
		if err != nil {
			a.sealErr = fmt.Errorf("filelog: fsync %s: %w", a.f.Name(), err)
		}
		if err == nil && l.testSynced != nil {
			l.testSynced(a.f.Name())
		}
	}
	l.dirty = false
	if uerr := unmap(a.data); err == nil {
		err = uerr
	}
	a.data = nil
	if terr := a.f.Truncate(l.activeSize); err == nil {
		err = terr
	}
	if cerr := a.f.Close(); err == nil {
		err = cerr
	}
	a.closed = true
	return err
}

// syncer is the goroutine that fsyncs: every d with SyncEvery(d), and in
// rounds for the Appends that wait with SyncEveryAppend (group commit:
// one fsync for every Append that came since the last).
func (l *Log) syncer() {
	var tick <-chan time.Time
	if l.sync > 0 {
		t := time.NewTicker(time.Duration(l.sync))
		defer t.Stop()
		tick = t.C
	}
	// A round waits a little for the Appends that the last round released
	// to come back, so that they share the next fsync instead of
	// alternating in two half-full groups: until as many records wait as
	// the last round synced plus those that came during it, for at most
	// half the last fsync's time (and 2 ms).
	var target int
	var lastSync time.Duration
	gather := func() {
		if target <= 1 {
			return
		}
		t := time.NewTimer(min(lastSync/2, 2*time.Millisecond))
		defer t.Stop()
		for {
			l.mu.Lock()
			n := l.group.n
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
		l.mu.Lock()
		g := l.group
		if g.n == 0 {
			l.mu.Unlock()
			return
		}
		l.group = &group{done: make(chan struct{})}
		a := l.active
		l.dirty = false
		l.mu.Unlock()
		if l.testBeforeRoundSync != nil {
			l.testBeforeRoundSync()
		}
		t0 := time.Now()
		// The group's records are in a, or in segments detached before
		// a was taken: fsync those first.
		g.err = errors.Join(l.sealDetached(), l.syncFile(a))
		lastSync = time.Since(t0)
		l.mu.Lock()
		target = g.n + l.group.n
		l.mu.Unlock()
		close(g.done)
	}
	for {
		select {
		case <-l.kick:
			gather()
			round()
		case <-l.sealKick:
			l.sealDetached()
		case <-tick:
			l.mu.Lock()
			dirty, a := l.dirty, l.active
			l.dirty = false
			l.mu.Unlock()
			l.sealDetached()
			if dirty {
				if l.testBeforeTickSync != nil {
					l.testBeforeTickSync()
				}
				l.syncFile(a)
			}
		case <-l.closedCh:
			round()
			return
		}
	}
}

// syncFile fsyncs a, unless it was sealed meanwhile: the seal fsynced it,
// and syncFile returns the seal's fsync error. a may have been detached
// by a roll since it was taken, and not yet sealed: it is fsynced then.
func (l *Log) syncFile(a *mapped) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if a.closed {
		return a.sealErr // the seal fsynced it, or failed to
	}
	l.nSyncs.Add(1)
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("filelog: fsync %s: %w", a.f.Name(), err)
	}
	if l.testSynced != nil {
		l.testSynced(a.f.Name())
	}
	return nil
}

// syncDir fsyncs a directory, so that a file created or removed in it stays
// so after a power loss. Errors are ignored: some systems refuse it.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
