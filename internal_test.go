package batcher

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unsafe"
)

// Unit tests of the bookkeeping, with explicit times.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// release records a batch taken and started at ms.
func release(l *ledger, ms, cost int) uint64 {
	id := l.add(at(ms), cost)
	l.started(id, at(ms))
	return id
}

func TestLedgerSteps(t *testing.T) {
	// A release counts from its start for a second and the slack (1ms).
	var l ledger
	steps := []struct {
		add      int // cost released at ms (0: none, only a look)
		ms       int
		wantUsed int // after the step
	}{
		{10, 0, 10},
		{5, 0, 15},    // same instant: merged
		{5, 1, 20},    // a millisecond later: a new entry
		{0, 1000, 20}, // both still count: a second and the slack
		{0, 1001, 5},  // the entry at 0 ends
		{7, 1001, 12}, //
		{0, 1002, 7},  // the entry at 1ms is gone
		{0, 3000, 0},
	}
	for i, s := range steps {
		if s.add > 0 {
			release(&l, s.ms, s.add)
		}
		if got := l.used(at(s.ms)); got != s.wantUsed {
			t.Fatalf("step %d at %dms: used %d, want %d", i, s.ms, got, s.wantUsed)
		}
	}
}

func TestLedgerCountsFromTheStart(t *testing.T) {
	var l ledger
	a := l.add(at(0), 10)
	b := l.add(at(0), 5)
	// Pending batches count however long they wait.
	if got := l.used(at(5000)); got != 15 {
		t.Fatalf("used %d with two batches pending, want 15", got)
	}
	l.started(a, at(5000))
	if got := l.used(at(7000)); got != 15 {
		t.Fatalf("used %d with one batch still pending, want 15", got)
	}
	l.started(b, at(6500))
	// The entry counts until a second after its last start.
	if got := l.used(at(7500)); got != 15 {
		t.Errorf("used %d at 7.5s, want 15 (the entry's last start was 6.5s)", got)
	}
	if got := l.used(at(7501)); got != 0 {
		t.Errorf("used %d at 7.501s, want 0", got)
	}
}

func TestLedgerMergesWithinAMillisecondButNotAcrossIt(t *testing.T) {
	var l ledger
	// A release every 0.5ms for 2s: entries start at most 1ms apart, so
	// none is held for more than a millisecond longer than its releases.
	for us := 0; us < 2_000_000; us += 500 {
		now := t0.Add(time.Duration(us) * time.Microsecond)
		l.started(l.add(now, 1), now)
	}
	now := t0.Add(2 * time.Second)
	// The window ending now holds the releases of the last second and the
	// slack, and at most a millisecond's worth more.
	if got := l.used(now); got < 2002 || got > 2006 {
		t.Errorf("used %d, want about 2002", got)
	}
	if l.n > 1100 {
		t.Errorf("%d entries for one second of releases every 0.5 ms", l.n)
	}
}

func TestLedgerWait(t *testing.T) {
	var l ledger
	release(&l, 0, 60)
	release(&l, 300, 30)
	release(&l, 600, 10)
	pending := l.add(at(650), 0) // a batch taken, not started yet: free
	_ = pending
	for _, c := range []struct {
		now, capacity, need int
		wantMS              int
		ok                  bool
	}{
		{700, 100, 0, 700, true},    // fits now
		{700, 100, 10, 1001, true},  // 100 used: the 60 released at 0 ends at 1001
		{700, 100, 61, 1301, true},  // needs the 60 and the 30 gone
		{700, 100, 101, 0, false},   // never
		{1100, 100, 70, 1301, true}, // 40 used, the 30 ends at 1301
	} {
		d, ok := l.wait(at(c.now), c.capacity, c.need)
		if ok != c.ok {
			t.Errorf("wait(now %d, cap %d, need %d) ok = %v", c.now, c.capacity, c.need, ok)
			continue
		}
		want := time.Duration(c.wantMS-c.now) * time.Millisecond
		if ok && d != want {
			t.Errorf("wait(now %d, cap %d, need %d) = %v, want %v", c.now, c.capacity, c.need, d, want)
		}
	}
}

func TestLedgerFreedBy(t *testing.T) {
	var l ledger
	release(&l, 0, 60)
	release(&l, 300, 30)
	release(&l, 600, 10)
	l.add(at(650), 20) // pending: taken to start now, as wait takes it
	release(&l, 660, 5)
	for _, c := range []struct{ now, by, want int }{
		{700, 700, 0},
		{700, 1000, 0},  // the 60 counts until 1001
		{700, 1001, 60}, //
		{700, 1400, 90},
		{700, 1700, 100}, // the pending 20 would end at 1701, and hold back the 5 (ends 1661)
		{700, 1701, 125}, //
		{1100, 1300, 0},  // the 60 is gone already; the 30 ends at 1301
		{1100, 1301, 30}, //
		{2000, 3000, 0},  // what counts now is pending or after it
		{2000, 3001, 25}, //
	} {
		if got := l.freedBy(at(c.now), at(c.by)); got != c.want {
			t.Errorf("freedBy(now %d, by %d) = %d, want %d", c.now, c.by, got, c.want)
		}
	}
}

func TestLedgerAdjust(t *testing.T) {
	var l ledger
	id := release(&l, 0, 10)
	release(&l, 5, 10)
	l.adjust(id, 15)
	if got := l.used(at(10)); got != 35 {
		t.Errorf("used %d after adjusting +15, want 35", got)
	}
	l.adjust(id, -100)
	if got := l.used(at(10)); got != 10 {
		t.Errorf("used %d after adjusting below zero, want the entry at 5", got)
	}
	l.used(at(1001)) // the first entry ends
	l.adjust(id, 50) // too late: nothing changes
	if got := l.used(at(1001)); got != 10 {
		t.Errorf("used %d after adjusting an ended entry", got)
	}
}

func TestPaceSteps(t *testing.T) {
	// Capacity 1000/s, flush 100ms: the bucket holds 100.
	var p pace
	p.set(at(0), 1000, 100*time.Millisecond)
	steps := []struct {
		ms      int
		backlog bool
		take    int
		want    float64 // tokens after
	}{
		{0, false, 60, 40},
		{10, false, 0, 50},
		{500, false, 0, 100},    // full: no more while nothing waits
		{500, false, 250, -150}, // a single costly op may go into debt
		{600, true, 0, -50},
		{900, true, 0, 250},    // while operations wait it holds up to a second
		{3000, true, 0, 1000},  // ... and no more
		{3000, false, 0, 1000}, // no change without time passing
		{3001, false, 0, 100},  // back to a flush's worth once nothing waits
	}
	for i, s := range steps {
		p.advance(at(s.ms))
		p.take(s.take)
		p.backlog = s.backlog
		if got := float64(p.tokens) / float64(nano); got != s.want {
			t.Fatalf("step %d at %dms: tokens %v, want %v", i, s.ms, got, s.want)
		}
	}
}

func TestPaceFitsAndWait(t *testing.T) {
	var p pace
	p.set(at(0), 5, 100*time.Millisecond) // 5/s: the bucket holds 0.5
	if !p.fits(2, true) || p.fits(2, false) {
		t.Fatal("a full bucket of 0.5 lets one op of 2 go as the first of a batch only")
	}
	if !p.fits(1, false) {
		t.Fatal("a full bucket of 0.5 lets a batch of one unit go, as it lets a first op of 1 go")
	}
	p.take(1)
	if d, ok := p.wait(1); !ok || d != 200*time.Millisecond {
		t.Errorf("wait = %v, %v; want 200ms to pay back the debt and fill the bucket", d, ok)
	}
	var zero pace
	zero.set(at(0), 0, 100*time.Millisecond)
	zero.take(1)
	if _, ok := zero.wait(1); ok {
		t.Error("a zero-capacity bucket never has room")
	}
}

func TestRing(t *testing.T) {
	var r ring[int]
	for i := range 20 {
		r.push(i)
	}
	for range 5 {
		r.popFront()
	}
	r.pushFront([]int{-2, -1})
	if r.len() != 17 || r.front() != -2 || r.at(2) != 5 {
		t.Fatalf("len %d front %d at(2) %d", r.len(), r.front(), r.at(2))
	}
	r.rotate()
	if r.front() != -1 || r.at(r.len()-1) != -2 {
		t.Errorf("rotate: front %d last %d", r.front(), r.at(r.len()-1))
	}
	for r.len() > 0 {
		r.popFront()
	}
	r.push(42)
	if r.front() != 42 {
		t.Error("reuse after emptying")
	}
}

// TestRingAgainstASlice drives a ring and a plain slice with the same random
// pushes, front pushes, pops and rotations (so that it wraps and grows while
// wrapped) and compares them after every step.
func TestRingAgainstASlice(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	var r ring[int]
	var model []int
	next := 0
	for step := range 20000 {
		switch k := rng.IntN(10); {
		case k < 4:
			r.push(next)
			model = append(model, next)
			next++
		case k < 5:
			xs := make([]int, rng.IntN(12))
			for i := range xs {
				xs[i] = next
				next++
			}
			r.pushFront(xs)
			model = append(append([]int(nil), xs...), model...)
		case k < 9 && len(model) > 0:
			if got := r.popFront(); got != model[0] {
				t.Fatalf("step %d: popFront %d, want %d", step, got, model[0])
			}
			model = model[1:]
		case len(model) > 0:
			r.rotate()
			model = append(model[1:], model[0])
		}
		if r.len() != len(model) {
			t.Fatalf("step %d: len %d, want %d", step, r.len(), len(model))
		}
		if len(r.buf)&(len(r.buf)-1) != 0 {
			t.Fatalf("step %d: buffer of %d, not a power of two", step, len(r.buf))
		}
		for i, want := range model {
			if got := r.at(i); got != want {
				t.Fatalf("step %d: at(%d) = %d, want %d", step, i, got, want)
			}
		}
	}
}

func TestEpochs(t *testing.T) {
	var e epochs
	e.init()
	if w := e.barrier(); !closed(w.ch) {
		t.Fatal("a Flush with nothing enqueued waits")
	}
	a := e.addN(3)
	first := e.barrier()
	same := e.barrier() // nothing enqueued between: shares the wait
	if first != same || first.refs != 2 {
		t.Error("back-to-back barriers do not share a wait")
	}
	b := e.addN(2)
	second := e.barrier()
	e.done(b, 2)
	if closed(second.ch) {
		t.Fatal("the second barrier ended while the first epoch has operations")
	}
	e.done(a, 3)
	if !closed(first.ch) || !closed(second.ch) {
		t.Error("the barriers did not end when their operations did")
	}
	if len(e.segs) != 1 || len(e.waiters) != 0 {
		t.Errorf("%d segments and %d waiters left", len(e.segs), len(e.waiters))
	}
}

func TestEpochsMergeWhatNoOneWaitsOn(t *testing.T) {
	var e epochs
	e.init()
	stuck := e.addN(1) // never ends
	var ws []*epochWaiter
	for range 1000 {
		id := e.addN(1)
		ws = append(ws, e.barrier())
		e.done(id, 1)
	}
	if len(e.segs) != 1001 || len(e.waiters) != 1000 {
		t.Fatalf("%d segments and %d waiters with 1000 Flush calls waiting", len(e.segs), len(e.waiters))
	}
	for _, w := range ws[:999] {
		e.release(w) // their contexts ended
	}
	if len(e.segs) > 2 || len(e.waiters) != 1 {
		t.Errorf("%d segments and %d waiters with one Flush call left waiting", len(e.segs), len(e.waiters))
	}
	later := e.addN(1)
	e.done(stuck, 1)
	if !closed(ws[999].ch) {
		t.Error("the last Flush did not end when the stuck operation did")
	}
	e.done(later, 1)
	if len(e.segs) != 1 {
		t.Errorf("%d segments left", len(e.segs))
	}
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// G8: nothing grows with the watchers that have come and gone, idle workers
// leave, and Flush in a loop costs no memory.

func TestWatchersThatComeAndGoLeaveNothingBehind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBatcher().WithEagerRelease().WithMaxConcurrentBatches(8)
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		noop := func(ctx context.Context, _ []*Operation) error { return nil }
		for round := range 100 {
			for range 100 {
				w := NewWatcher(noop).WithMaxBatchSize(3)
				for i := range 5 {
					if err := b.Enqueue(NewOperation(w, 1, i, true)); err != nil {
						t.Fatal(err)
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
			if round%10 == 0 {
				b.mu.Lock()
				n := len(b.mu.queues)
				b.mu.Unlock()
				if n > 200 {
					t.Fatalf("round %d: %d watcher queues kept", round, n)
				}
			}
		}
		time.Sleep(300 * time.Millisecond)
		b.mu.Lock()
		defer b.mu.Unlock()
		if n, idle, workers := len(b.mu.queues), len(b.mu.idle), len(b.mu.idleWorkers); n != 0 || idle != 0 || workers != 0 {
			t.Errorf("after 10,000 watchers came and went: %d queues, %d marked idle, %d idle workers", n, idle, workers)
		}
		if st := b.succeeded.Load(); st != 50000 {
			t.Errorf("%d operations succeeded", st)
		}
	})
}

// The Batcher's own copies of ended batches are kept for reuse cleared, so
// that they hold on to no operation (nor its payload), and no more than
// maxSpareOps of them.
func TestReusedBatchCopiesHoldNoOperations(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBatcher().WithEagerRelease().WithMaxConcurrentBatches(100)
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		release := make(chan struct{})
		w := NewWatcher(func(ctx context.Context, _ []*Operation) error {
			<-release // many batches at once, so that many copies end together
			return nil
		}).WithMaxBatchSize(10)
		for i := range 1000 {
			if err := b.Enqueue(NewOperation(w, 1, i, true)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		close(release)
		if err := b.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if n := len(b.mu.spareOps); n == 0 || n > maxSpareOps {
			t.Fatalf("%d spare copies, want 1 to %d", n, maxSpareOps)
		}
		for i, s := range b.mu.spareOps {
			for j, op := range s[:cap(s)] {
				if op != nil {
					t.Fatalf("spare copy %d holds an operation at %d", i, j)
				}
			}
		}
	})
}

func TestFlushInALoopCostsNoMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBatcher().WithRateLimiter(fixedLimiter(10))
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		w := NewWatcher(func(ctx context.Context, _ []*Operation) error { return nil })
		for range 100 {
			if err := b.Enqueue(NewOperation(w, 1, nil, true)); err != nil {
				t.Fatal(err)
			}
		}
		done, cancel := context.WithCancel(t.Context())
		cancel()
		for range 100000 {
			b.Flush(done)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if n, m := len(b.mu.epochs.segs), len(b.mu.epochs.waiters); n > 2 || m > 1 {
			t.Errorf("%d epochs and %d waiters after 100,000 flushes", n, m)
		}
	})
}

func TestAuditCorrectsWrongBookkeeping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBatcher().WithRateLimiter(fixedLimiter(0)).WithAuditInterval(time.Second)
		var mu sync.Mutex
		var got []Event
		b.AddListener(func(e Event) {
			if e.Kind == AuditFailed || e.Kind == AuditPassed {
				mu.Lock()
				got = append(got, e)
				mu.Unlock()
			}
		})
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		w := NewWatcher(func(ctx context.Context, _ []*Operation) error { return nil })
		for range 3 {
			if err := b.Enqueue(NewOperation(w, 4, nil, true)); err != nil {
				t.Fatal(err)
			}
		}
		b.mu.Lock()
		b.sweepLocked()
		b.mu.target = 99 // a bug would do this
		b.mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 1 || got[0].Kind != AuditFailed || got[0].Msg != "target was 99, not 12" {
			t.Fatalf("audit events %v, want one failure about the target", got)
		}
		mu.Unlock()
		if n := b.NeedsCapacity(); n != 12 {
			t.Errorf("target %d after the audit, want 12", n)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		if len(got) != 2 || got[1].Kind != AuditPassed {
			t.Errorf("audit events %v, want a pass after the correction", got)
		}
	})
}

type fixedLimiter int

func (f fixedLimiter) MaxCapacity() int            { return max(int(f), 100) }
func (f fixedLimiter) Capacity() int               { return int(f) }
func (f fixedLimiter) GiveMe(int)                  {}
func (f fixedLimiter) Start(context.Context) error { return nil }

// An Operation is allocated by the caller for every write: its size sets
// how often the garbage collector runs on the hot path (figure 1 of
// cmd/batchbench). 48 bytes is a size class of the allocator; 49 would cost
// 64.
func TestAnOperationIs48Bytes(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("pointers have 32 bits here")
	}
	if n := unsafe.Sizeof(Operation{}); n != 48 {
		t.Errorf("an Operation is %d bytes, want 48", n)
	}
	if n := unsafe.Sizeof(entry{}); n != 24 {
		t.Errorf("a queue entry is %d bytes, want 24", n)
	}
}

// A sweep touches its operations' queues under the Batcher's lock, over
// many watchers a different queue each operation: what it reads and writes
// is in a queue's first two cache lines (see queue), and a queue's size is a
// multiple of 64 bytes (an allocator size class, so every queue starts on a
// cache line).
func TestQueueSweepFieldsFirst(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("pointers have 32 bits here")
	}
	var q queue
	if n := unsafe.Sizeof(q); n%64 != 0 {
		t.Errorf("a queue is %d bytes, want a multiple of 64", n)
	}
	first := map[string]uintptr{"w": unsafe.Offsetof(q.w), "b": unsafe.Offsetof(q.b), "ops": unsafe.Offsetof(q.ops) + unsafe.Sizeof(q.ops) - 1,
		"gone": unsafe.Offsetof(q.gone), "inReady": unsafe.Offsetof(q.inReady), "inFull": unsafe.Offsetof(q.inFull),
		"slotWait": unsafe.Offsetof(q.slotWait), "capWait": unsafe.Offsetof(q.capWait), "paused": unsafe.Offsetof(q.paused),
		"held": unsafe.Offsetof(q.held), "touched": unsafe.Offsetof(q.touched)}
	for name, off := range first {
		if off >= 64 {
			t.Errorf("queue.%s ends at byte %d, want it in the first cache line", name, off)
		}
	}
	second := map[string]uintptr{"unbatchable": unsafe.Offsetof(q.unbatchable), "sinceAt": unsafe.Offsetof(q.sinceAt),
		"lastAt": unsafe.Offsetof(q.lastAt) + unsafe.Sizeof(q.lastAt) - 1, "stamp": unsafe.Offsetof(q.stamp) + 7}
	for name, off := range second {
		if off >= 128 {
			t.Errorf("queue.%s ends at byte %d, want it in the first two cache lines", name, off)
		}
	}
	var w Watcher
	if a, b := unsafe.Offsetof(w.maxBatchSize), unsafe.Offsetof(w.home); a/64 != b/64 {
		t.Errorf("Watcher.maxBatchSize at byte %d and Watcher.home at %d: want them on one cache line", a, b)
	}
}

// G5 through the intake: a shard whose producers are streaming is left to
// them, and a full batch that fills in it goes once the shard has held
// operations for intakeLinger since its last sweep (so at most that long
// after its last operation's Enqueue); in a shard that is not streaming,
// or whose producers swept it longer ago than that, it goes at once.
func TestStreamingShardsLingerAtMostIntakeLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu     sync.Mutex
			starts []time.Duration
		)
		t0 := time.Now()
		w := NewWatcher(func(ctx context.Context, _ []*Operation) error {
			mu.Lock()
			starts = append(starts, time.Since(t0))
			mu.Unlock()
			return nil
		}).WithMaxBatchSize(10)
		b := NewBatcher()
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		// Leave every shard as its producers leave it when they refill
		// their credits: swept by them at sweptAt, with credits to spare.
		streamed := func(sweptAt time.Time) {
			b.mu.Lock()
			for _, sh := range b.intake.Load().shards {
				sh.mu.Lock()
				sh.credits += 20
				b.mu.reserved += 20
				sh.streaming = true
				sh.mu.Unlock()
				sh.sweptAt = sweptAt
			}
			b.mu.Unlock()
		}
		fill := func() {
			for i := range 10 {
				if err := b.Enqueue(NewOperation(w, 1, i, true)); err != nil {
					t.Fatal(err)
				}
			}
		}
		check := func(step string, want ...time.Duration) {
			t.Helper()
			synctest.Wait()
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(starts, want) {
				t.Fatalf("%s: batches started at %v, want at %v", step, starts, want)
			}
		}

		streamed(t0)
		time.Sleep(300 * time.Microsecond)
		fill()
		check("a full batch enqueued into streaming shards")
		time.Sleep(intakeLinger - 300*time.Microsecond - time.Nanosecond)
		check("just before the linger ends")
		time.Sleep(time.Nanosecond)
		check("at the linger's end", intakeLinger)

		// The owner's sweep found the shards lingering: they stream no
		// more, and the next full batch goes at once.
		time.Sleep(500 * time.Microsecond)
		fill()
		check("a full batch enqueued once the stream ended", intakeLinger, 1500*time.Microsecond)

		// Marked streaming, but swept by their producers 5ms ago: nothing
		// to wait for. (First let any look the owner has set for later
		// pass: the Enqueue would leave its shard to that look, which
		// comes at most intakeLinger after it.)
		time.Sleep(intakeLinger)
		streamed(time.Now().Add(-5 * time.Millisecond))
		fill()
		check("a full batch enqueued into shards streaming long ago",
			intakeLinger, 1500*time.Microsecond, 2500*time.Microsecond)
	})
}

// formBatcher returns a running Batcher, not started, with capacity c
// and the given flush interval, for calling formLocked directly.
func formBatcher(c int, flush time.Duration, now time.Time) *Batcher {
	b := NewBatcher().WithFlushInterval(flush)
	b.mu.state = stateRunning
	b.mu.queues = map[*Watcher]*queue{}
	b.mu.epochs.init()
	b.setCapacityLocked(now, c)
	b.mu.maxCapacity = c
	return b
}

// Whenever a batch cannot go yet, the Batcher notes a wake after now: the
// owner goroutine then blocks until it. A wake at now would make it loop
// without blocking (a whole CPU; under synctest a bubble whose time never
// moves). Seen with capacity × FlushInterval under one unit, a full batch
// whose first operation costs 1 and the rest 0: the pacing let the first
// go into debt but not the others, while its wait said there was room.
func TestARefusedBatchWaitsForAMomentAfterNow(t *testing.T) {
	for _, c := range []int{1, 5, 9, 10, 1000} {
		for _, flush := range []time.Duration{time.Millisecond, 100 * time.Millisecond, time.Second} {
			for _, costs := range [][]int32{{1, 0, 0}, {0, 1}, {0, 0, 1}, {1, 1}, {2, 0, 0}, {1}} {
				if int(slices.Max(costs)) > c {
					continue // refused at Enqueue: MaxCapacity is c
				}
				for _, warm := range []bool{false, true} {
					name := fmt.Sprintf("C=%d flush=%v costs=%v warm=%v", c, flush, costs, warm)
					now := at(0)
					b := formBatcher(c, flush, now)
					if warm { // a batch of cost 1 has just gone
						b.mu.pace.take(1)
						b.mu.ledger.started(b.mu.ledger.add(now, 1), now)
					}
					w := NewWatcher(func(context.Context, []*Operation) error { return nil }).WithMaxBatchSize(len(costs))
					q := b.queueLocked(w)
					for _, cost := range costs {
						q.push(entry{op: &Operation{watcher: w, cost: cost}, w: w, cost: cost, batchable: true})
						b.mu.buffered++
					}
					for i := 0; ; i++ {
						if i == 100 {
							t.Errorf("%s: no batch after 100 wakes", name)
							break
						}
						b.mu.roomWake = time.Time{}
						b.mu.pace.backlog = true
						b.advanceLocked(now)
						if bt, _, _ := b.formLocked(now, q, false); bt != nil {
							break
						}
						wake := b.mu.roomWake
						if wake.IsZero() {
							t.Errorf("%s: after %d wakes, at %v the batch waits for no wake", name, i, now.Sub(t0))
							break
						}
						if !wake.After(now) {
							t.Errorf("%s: after %d wakes, at %v the batch waits for a wake at %v", name, i, now.Sub(t0), wake.Sub(t0))
							break
						}
						now = wake
					}
				}
			}
		}
	}
}

// The pacing's and the ledger's arithmetic holds at the extremes: for
// capacities up to math.MaxInt and costs up to math.MaxInt32, every wait is
// at least 0, and once it has passed, the cost it waited for fits.
func TestWaitsHoldAtExtremeCapacities(t *testing.T) {
	for _, c := range []int{1, math.MaxInt32, 3 * math.MaxInt32, math.MaxInt / 3, math.MaxInt - 1, math.MaxInt} {
		for _, flush := range []time.Duration{time.Nanosecond, time.Millisecond, time.Second, time.Hour, math.MaxInt64} {
			for _, cost := range []int{1, math.MaxInt32} {
				if cost > c {
					continue
				}
				name := fmt.Sprintf("C=%d flush=%v cost=%d", c, flush, cost)
				var p pace
				p.set(at(0), c, flush)
				p.backlog = true
				now := at(0)
				for i := range 5 {
					if !p.fits(cost, true) {
						d, ok := p.wait(cost)
						if !ok || d < 0 {
							t.Fatalf("%s: take %d: pace wait = %v, %v", name, i, d, ok)
						}
						now = now.Add(d)
						p.advance(now)
						if !p.fits(cost, true) {
							t.Fatalf("%s: take %d: after the pace's wait of %v the cost does not fit", name, i, d)
						}
					}
					p.take(cost)
				}
				var l ledger
				for i := range 5 {
					d, ok := l.wait(now, c, cost)
					if !ok || d < 0 {
						t.Fatalf("%s: release %d: ledger wait = %v, %v", name, i, d, ok)
					}
					now = now.Add(d)
					if used := l.used(now); used > c-cost {
						t.Fatalf("%s: release %d: after the ledger's wait of %v it holds %d, no room for %d", name, i, d, used, cost)
					}
					l.started(l.add(now, cost), now)
				}
			}
		}
	}
}

func TestWatcherQueueCacheFollowsTheMap(t *testing.T) {
	// A watcher remembers the queue a Batcher last made for it (see
	// queueLocked), for sweeps over many watchers: the map stays the
	// authority. Two Batchers sharing a watcher each get their own queue,
	// and a queue the Batcher forgets (idle) is never handed out again.
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		got := map[*Batcher]int{}
		var b1, b2 *Batcher
		w := NewWatcher(func(ctx context.Context, ops []*Operation) error {
			mu.Lock()
			defer mu.Unlock()
			for _, op := range ops {
				got[op.Payload().(*Batcher)]++
			}
			return nil
		}).WithMaxBatchSize(10)
		b1, b2 = NewBatcher(), NewBatcher()
		for _, b := range []*Batcher{b1, b2} {
			if err := b.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		queueOf := func(b *Batcher) *queue {
			b.mu.Lock()
			defer b.mu.Unlock()
			q := b.queueLocked(w)
			if m := b.mu.queues[w]; m != q {
				t.Fatalf("queueLocked returned %p, the map holds %p", q, m)
			}
			if q.b != b {
				t.Fatalf("queueLocked returned another Batcher's queue")
			}
			return q
		}
		for range 3 {
			for _, b := range []*Batcher{b1, b2} {
				for range 25 {
					if err := b.Enqueue(NewOperation(w, 1, b, true)); err != nil {
						t.Fatal(err)
					}
				}
				queueOf(b)
			}
		}
		for _, b := range []*Batcher{b1, b2} {
			if err := b.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		old := queueOf(b1) // the watcher's cached queue; nothing is left to sweep
		// Idle through two flushes: the queue is forgotten.
		time.Sleep(3 * DefaultFlushInterval)
		synctest.Wait()
		b1.mu.Lock()
		_, kept := b1.mu.queues[w]
		b1.mu.Unlock()
		if kept {
			t.Fatal("the idle watcher's queue was not forgotten; the test needs it to be")
		}
		if !old.gone {
			t.Error("the forgotten queue is not marked gone")
		}
		if q := queueOf(b1); q == old {
			t.Error("queueLocked handed out the queue the Batcher forgot")
		}
		for _, b := range []*Batcher{b1, b2} {
			if err := b.Enqueue(NewOperation(w, 1, b, true)); err != nil {
				t.Fatal(err)
			}
			if err := b.Shutdown(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		if got[b1] != 76 || got[b2] != 76 {
			t.Errorf("ProcessBatch saw %d and %d operations, want 76 each", got[b1], got[b2])
		}
	})
}
