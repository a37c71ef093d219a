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
			mu.Lock()
			defer mu.Unlock()
			if !slices.Contains(synced, first) {
				t.Fatalf("the segment holding an appended record (%s) was never fsynced; fsynced: %v", first, synced)
			}
		})
	}
}
