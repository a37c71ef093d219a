package filelog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ratebatch/batcher/spool"
)

// crash abandons an open Log as a kill -9 would: no seal, no last
// watermark, the mapped segment's bytes left as they are in the page cache
// (and the reserved space after them), the lock dropped.
func (l *Log) crash() {
	l.mu.Lock()
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
	l.syncMu.Lock()
	if a := l.active; a != nil && !a.closed {
		unmap(a.data)
		a.data = nil
		a.f.Close()
		a.closed = true
	}
	for _, a := range l.detached { // cut to their records, not yet fsynced
		if !a.closed {
			a.f.Close()
			a.closed = true
		}
	}
	l.syncMu.Unlock()
	l.ackF.Close()
	l.dead.close()
	l.lockF.Close()
}

// A model of the log's promise, checked through random appends, reads,
// acknowledgements out of order, dead letters, closes and crashes (kill -9
// at any point between calls): after every reopen, every record appended
// and not yet ended (acknowledged or dead-lettered) is delivered again, in
// append order, before any record appended after the reopen; and no segment
// file holding such a record is removed.
func TestCrashModel(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { crashModel(t, seed) })
	}
}

func crashModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	ctx := context.Background()
	// Mostly SyncNever: a kill -9 keeps what the page cache holds whatever
	// the policy, and fsyncs on a loaded disk would make the test slow.
	policies := []SyncPolicy{SyncEveryAppend, SyncEvery(1e6), SyncNever, SyncNever, SyncNever, SyncNever}
	open := func() *Log {
		l := New(dir).WithSync(policies[rng.IntN(len(policies))]).WithMaxBytes(1 << 20).WithSegmentSize(512).WithMaxRecordSize(64)
		if err := l.Open(); err != nil {
			t.Fatal(err)
		}
		return l
	}
	next := 0
	outstanding := map[int]bool{} // appended, not ended
	ended := map[int]bool{}
	parse := func(e spool.Entry) int {
		s, _, _ := strings.Cut(string(e.Data), " ")
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("record %q at %v", e.Data, e.ID)
		}
		return n
	}
	for life := range 12 {
		l := open()
		if cuts := l.Cuts(); len(cuts) > 0 {
			t.Fatalf("life %d: cuts %v after a crash between calls", life, cuts)
		}
		// Everything outstanding comes first, in order.
		var inflight []spool.Entry
		var again []int
		for l.Stats().Unread > 0 && len(again) < len(outstanding)+1000 {
			es, err := l.Read(ctx, 1+rng.IntN(20))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				again = append(again, parse(e))
			}
			inflight = append(inflight, es...)
		}
		for id := range outstanding {
			if !slices.Contains(again, id) {
				t.Fatalf("life %d: record %d, appended and never ended, is not delivered after the reopen (delivered %d records)", life, id, len(again))
			}
		}
		if !slices.IsSorted(again) {
			t.Fatalf("life %d: delivered out of order: %v", life, again)
		}
		for step := range 30 + rng.IntN(60) {
			switch k := rng.IntN(10); {
			case k < 4: // append 1-4 records
				var recs [][]byte
				for range 1 + rng.IntN(4) {
					recs = append(recs, fmt.Appendf(nil, "%d %s", next, strings.Repeat("x", rng.IntN(40))))
					outstanding[next] = true
					next++
				}
				if err := l.Append(ctx, recs); err != nil {
					t.Fatal(err)
				}
			case k < 6: // read what there is
				if l.Stats().Unread == 0 {
					continue
				}
				es, err := l.Read(ctx, 1+rng.IntN(10))
				if err != nil {
					t.Fatal(err)
				}
				inflight = append(inflight, es...)
			default: // end a random part of what is in flight, in any order
				if len(inflight) == 0 {
					continue
				}
				rng.Shuffle(len(inflight), func(i, j int) { inflight[i], inflight[j] = inflight[j], inflight[i] })
				n := 1 + rng.IntN(len(inflight))
				done := inflight[:n]
				var ids []spool.ID
				for _, e := range done {
					ids = append(ids, e.ID)
				}
				var err error
				if k == 9 && rng.IntN(8) == 0 { // dead letters are fsynced: few
					reasons := make([]string, len(done))
					for i := range reasons {
						reasons[i] = "model"
					}
					err = l.Dead(ctx, done, reasons)
				} else {
					err = l.Ack(ctx, ids)
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range done {
					id := parse(e)
					delete(outstanding, id)
					ended[id] = true
				}
				inflight = slices.Clone(inflight[n:])
			}
			_ = step
		}
		if rng.IntN(3) == 0 {
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
		} else {
			l.crash()
		}
	}
}

// A watermark that names a segment no longer on disk (its creation lost
// with the machine under SyncNever, or the file removed by hand) must not
// apply to the segment that Open creates under the same number: the records
// appended to it after the reopen are delivered after a crash.
func TestWatermarkOfAMissingSegment(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	small := func() *Log {
		return New(dir).WithSync(SyncNever).WithMaxBytes(1 << 20).WithSegmentSize(4096).WithMaxRecordSize(100)
	}
	l := small()
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	l.rseg, l.roff = 3, 100 // a watermark in segment 3, which never was
	l.saveMarkLocked(true)
	l.mu.Unlock()
	l.crash()

	l = small()
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(ctx, [][]byte{[]byte("first"), []byte("second")}); err != nil {
		t.Fatal(err)
	}
	l.crash()

	l = small()
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if u := l.Stats().Unread; u == 0 {
		t.Fatalf("after a crash, nothing to read: the two records appended before it are lost")
	}
	es, err := l.Read(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || string(es[0].Data) != "first" {
		t.Fatalf("read %d records, want the 2 appended", len(es))
	}
}
