package batcher_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
)

// The release scheduler: full batches before partial ones, batches that
// stay full under load, no watcher starved among many, a full buffer that
// does not wait for the flush interval, and the default bound on workers.

func TestFullBatchesGoBeforePartialOnes(t *testing.T) {
	// One slot, busy. Meanwhile a watcher with a partial batch is enqueued
	// to first, then one with a full batch: when the slot frees, the full
	// batch goes first, though the partial one was owed the flush.
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var order []string
		record := func(name string, d time.Duration) *batcher.Watcher {
			return batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
				return sleep(ctx, d)
			}).WithMaxBatchSize(10)
		}
		b := start(t, batcher.NewBatcher().WithMaxConcurrentBatches(1))
		enqueue(t, b, record("busy", 250*time.Millisecond), 10, 1) // holds the slot to 250ms
		time.Sleep(10 * time.Millisecond)
		enqueue(t, b, record("partial", 0), 3, 1)
		time.Sleep(100 * time.Millisecond) // the flush at 100ms finds the slot busy
		enqueue(t, b, record("full", 0), 10, 1)
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(order) != 3 || order[1] != "full" || order[2] != "partial" {
			t.Fatalf("batches in the order %v, want busy, full, partial", order)
		}
	})
}

func TestBatchesStayFullUnderSteadyLoad(t *testing.T) {
	// 50 watchers each get 3 operations every 10 ms, 30 a flush interval,
	// for batches of 100: a flush does not cut them short while they fill,
	// and no operation waits more than maxHold (4) flush intervals.
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		var maxWait atomic.Int64
		s.handle = func(ctx context.Context, batch []*batcher.Operation) error {
			for _, op := range batch {
				if d := int64(time.Since(op.Payload().(time.Time))); d > maxWait.Load() {
					maxWait.Store(d)
				}
			}
			return nil
		}
		b := start(t, batcher.NewBatcher().WithBufferSize(100_000))
		ws := make([]*batcher.Watcher, 50)
		for i := range ws {
			ws[i] = s.watcher().WithMaxBatchSize(100)
		}
		for range 200 { // 2 s
			for _, w := range ws {
				for range 3 {
					if err := b.Enqueue(batcher.NewOperation(w, 1, time.Now(), true)); err != nil {
						t.Fatal(err)
					}
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		sizes := s.batchSizes()
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		full, ops := 0, 0
		for _, n := range sizes {
			ops += n
			if n == 100 {
				full++
			}
		}
		if mean := float64(ops) / float64(len(sizes)); mean < 90 {
			t.Errorf("mean batch %.1f of %d batches released while the load went on, want >= 90 (%d full)", mean, len(sizes), full)
		}
		if d := time.Duration(maxWait.Load()); d > 4*batcher.DefaultFlushInterval {
			t.Errorf("an operation waited %v, more than 4 flush intervals", d)
		}
	})
}

// streamBatches sends each of n watchers (batches of 100) per ops
// operations every 10 ms for 2 s, and returns the mean batch released
// while the load went on and the longest any operation waited.
func streamBatches(t *testing.T, n, per int) (mean float64, maxWait time.Duration) {
	s := &sink{}
	var longest atomic.Int64
	s.handle = func(ctx context.Context, batch []*batcher.Operation) error {
		for _, op := range batch {
			if d := int64(time.Since(op.Payload().(time.Time))); d > longest.Load() {
				longest.Store(d)
			}
		}
		return nil
	}
	b := start(t, batcher.NewBatcher().WithBufferSize(100_000))
	ws := make([]*batcher.Watcher, n)
	for i := range ws {
		ws[i] = s.watcher().WithMaxBatchSize(100)
	}
	for range 200 { // 2 s
		for _, w := range ws {
			for range per {
				if err := b.Enqueue(batcher.NewOperation(w, 1, time.Now(), true)); err != nil {
					t.Fatal(err)
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	sizes := s.batchSizes()
	if err := shutdown(t, b); err != nil {
		t.Fatal(err)
	}
	ops := 0
	for _, k := range sizes {
		ops += k
	}
	return float64(ops) / float64(len(sizes)), time.Duration(longest.Load())
}

func TestBatchesHeldWhileTheyFillHalfway(t *testing.T) {
	// 50 watchers each get 2 operations every 10 ms, 20 a flush interval:
	// a batch of 100 does not fill within maxHold (4) flush intervals, but
	// reaches 60-80 operations by then. A flush does not cut it short at
	// 20: it waits for the last flush within the 4 intervals. No operation
	// waits longer than that.
	synctest.Test(t, func(t *testing.T) {
		mean, wait := streamBatches(t, 50, 2)
		if mean < 50 {
			t.Errorf("mean batch %.1f, want >= 50: batches that fill halfway within 4 flush intervals wait for it", mean)
		}
		if wait > 4*batcher.DefaultFlushInterval {
			t.Errorf("an operation waited %v, more than 4 flush intervals", wait)
		}
	})
}

func TestLightStreamsGoAtTheNextFlush(t *testing.T) {
	// 50 watchers each get 1 operation every 10 ms, 10 a flush interval: a
	// batch of 100 would not be half full within 4 flush intervals, so each
	// flush releases what is there; no operation waits two intervals.
	synctest.Test(t, func(t *testing.T) {
		_, wait := streamBatches(t, 50, 1)
		if wait > 2*batcher.DefaultFlushInterval {
			t.Errorf("an operation waited %v, more than 2 flush intervals", wait)
		}
	})
}

func TestNoWatcherStarvedAmongTenThousand(t *testing.T) {
	// 10,000 watchers with one operation each, and a busy watcher that
	// keeps full batches coming, on 4 slots with slow batches: every one of
	// the 10,000 is released within a few flush intervals of work, and the
	// busy one keeps its turns meanwhile.
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		s.handle = func(ctx context.Context, _ []*batcher.Operation) error { return sleep(ctx, time.Millisecond) }
		b := start(t, batcher.NewBatcher().WithMaxConcurrentBatches(4).WithBufferSize(100_000))
		busy := s.watcher().WithMaxBatchSize(10)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		feed(ctx, b, busy, 1)
		many := make([]*batcher.Operation, 10_000)
		for i := range many {
			many[i] = batcher.NewOperation(s.watcher(), 1, i, true)
			if err := b.Enqueue(many[i]); err != nil {
				t.Fatal(err)
			}
		}
		t0 := time.Now()
		// 10,000 one-op batches and the busy one's turns, 4 at a time, 1 ms
		// each: about 5 s if the busy watcher gets every other turn.
		for _, op := range many {
			if err := waitFor(t, op); err != nil {
				t.Fatal(err)
			}
		}
		if d := time.Since(t0); d > 6*time.Second {
			t.Errorf("the 10,000 watchers' operations took %v, want <= 6s", d)
		}
		busyOps := 0
		for _, bt := range s.batchSizes() {
			if bt == 10 {
				busyOps += 10
			}
		}
		cancel()
		if busyOps < 10*4000 {
			t.Errorf("the busy watcher got %d operations out meanwhile, want its turns (>= 40,000)", busyOps)
		}
	})
}

func TestFullBufferOfPartialBatchesDoesNotWaitForTheFlush(t *testing.T) {
	// 100 watchers, one operation each, fill a buffer of 100; the next
	// Enqueue finds no room, nothing running and no full batch: the partial
	// batches go at once, not at the flush a second later.
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		b := start(t, batcher.NewBatcher().WithBufferSize(100).WithFlushInterval(time.Second))
		t0 := time.Now()
		for range 101 {
			if err := b.Enqueue(batcher.NewOperation(s.watcher().WithMaxBatchSize(10), 1, nil, true)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if d := time.Since(t0); d != 0 {
			t.Errorf("the 101st Enqueue returned after %v, want at once", d)
		}
		if n := s.ops(); n < 100 {
			t.Errorf("%d operations released at once, want the 100 that filled the buffer", n)
		}
	})
}

func TestWorkersAreBoundedByDefault(t *testing.T) {
	// 3,000 one-op watchers whose ProcessBatch blocks: by default at most
	// DefaultMaxConcurrentBatches run at once (each on a worker goroutine).
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		gate := make(chan struct{})
		s.handle = func(ctx context.Context, _ []*batcher.Operation) error {
			select {
			case <-gate:
			case <-ctx.Done():
			}
			return nil
		}
		b := start(t, batcher.NewBatcher())
		for range 3000 {
			enqueue(t, b, s.watcher(), 1, 1)
		}
		time.Sleep(batcher.DefaultFlushInterval)
		synctest.Wait()
		if n := b.Inflight(); n != batcher.DefaultMaxConcurrentBatches {
			t.Errorf("%d batches running, want DefaultMaxConcurrentBatches, %d", n, batcher.DefaultMaxConcurrentBatches)
		}
		close(gate)
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.peak != batcher.DefaultMaxConcurrentBatches || len(s.payloads) != 3000 {
			t.Errorf("peak %d running, %d released; want %d and 3000", s.peak, len(s.payloads), batcher.DefaultMaxConcurrentBatches)
		}
	})
}
