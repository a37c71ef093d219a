package filelog

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// An Append that waits for its fsync (SyncEveryAppend, or SyncEvery's
// tick) must not be released, or counted as synced, when the segment
// holding its records was sealed between the syncer taking the round and
// its fsync: the seal then has to fsync the segment itself, even though the
// round had already marked the log clean.
func TestSealBetweenRoundAndFsyncStillFsyncs(t *testing.T) {
	// SyncNever: Replay's append, which fsyncs whatever the policy.
	for _, p := range []SyncPolicy{SyncEveryAppend, SyncEvery(time.Millisecond), SyncNever} {
		t.Run(p.String(), func(t *testing.T) {
			l := New(t.TempDir()).WithSync(p).WithMaxBytes(1 << 20).WithSegmentSize(4096).WithMaxRecordSize(100)
			var mu sync.Mutex
			var synced []string
			l.testSynced = func(path string) {
				mu.Lock()
				synced = append(synced, path)
				mu.Unlock()
			}
			first := l.segPath(1)
			var once sync.Once
			rolled := make(chan struct{})
			roll := func() {
				once.Do(func() {
					// Another Append rolls the log right here: the
					// segment that holds the record is sealed.
					l.mu.Lock()
					if err := l.rollLocked(0); err != nil {
						t.Error(err)
					}
					l.mu.Unlock()
					close(rolled)
				})
			}
			if p == SyncEveryAppend || p == SyncNever {
				l.testBeforeRoundSync = roll
			} else {
				// The tick path: roll where the tick has taken the
				// dirty flag the Append set.
				l.testBeforeTickSync = roll
			}
			if err := l.Open(); err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if err := l.append(t.Context(), [][]byte{[]byte("acknowledged")}, p == SyncNever); err != nil {
				t.Fatal(err)
			}
			<-rolled
			// The roll leaves the fsync to the syncer, which runs it at
			// once (here, right after the hook): wait for it.
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
				mu.Lock()
				ok := slices.Contains(synced, first)
				mu.Unlock()
				if ok {
					break
				}
				if time.Now().After(deadline) {
					mu.Lock()
					defer mu.Unlock()
					t.Fatalf("the segment holding an appended record (%s) was never fsynced; fsynced: %v", first, synced)
				}
			}
		})
	}
}

// A roll must not hold every Append while the full segment is fsynced: the
// fsync of 8 MiB takes tens of milliseconds on a busy disk, and producers
// waited through it once a segment (in the benchmark, a third of their
// time). Appends into the next segment go on while the old one's fsync
// runs, and the old segment is still fsynced, soon and before Close
// returns.
func TestRollDoesNotHoldAppendsForTheFsync(t *testing.T) {
	l := New(t.TempDir()).WithSync(SyncEvery(time.Hour)).WithMaxBytes(1 << 20).WithSegmentSize(4096).WithMaxRecordSize(100)
	first := l.segPath(1)
	held := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var synced []string
	l.testBeforeSealSync = func(path string) {
		if path == first {
			once.Do(func() { close(held) })
			<-release
		}
	}
	l.testSynced = func(path string) {
		mu.Lock()
		synced = append(synced, path)
		mu.Unlock()
	}
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer l.Close()
	defer unblock()
	rec := make([]byte, 100)
	perSegment := 4096 / (100 + frameHeader)
	done := make(chan error, 1)
	go func() {
		// Fill the first segment, roll, and go on into the next one.
		for range perSegment + perSegment/2 {
			if err := l.Append(t.Context(), [][]byte{rec}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case <-held:
	case <-time.After(time.Minute):
		t.Fatal("the full segment's fsync never began")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Appends into the next segment waited for the full segment's fsync")
	}
	unblock()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(synced, first) {
		t.Fatalf("the full segment %s was never fsynced; fsynced: %v", first, synced)
	}
}
