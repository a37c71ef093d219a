package batcher_test

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// G5: a full batch goes out at once; with eager release any operation does
// while a slot and capacity are free, and batches still fill at saturation.

func TestPartialBatchGoesOutOnTheFlushInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(10)
		b := start(t, batcher.NewBatcher().WithFlushInterval(100*time.Millisecond))
		enqueue(t, b, w, 3, 1)
		time.Sleep(100*time.Millisecond - time.Nanosecond)
		synctest.Wait()
		if n := s.numBatches(); n != 0 {
			t.Fatalf("%d batches before the flush interval, want 0", n)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if got := s.batchSizes(); len(got) != 1 || got[0] != 3 {
			t.Fatalf("batches %v at the flush interval, want one of 3", got)
		}
	})
}

func TestFullBatchGoesOutAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(10)
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000)))
		time.Sleep(30 * time.Millisecond)
		enqueue(t, b, w, 25, 1)
		synctest.Wait() // no time passes
		if got := s.batchSizes(); len(got) != 2 || got[0] != 10 || got[1] != 10 {
			t.Fatalf("batches %v right after 25 enqueues, want two full ones of 10", got)
		}
		time.Sleep(70 * time.Millisecond)
		synctest.Wait()
		if got := s.batchSizes(); len(got) != 3 || got[2] != 5 {
			t.Fatalf("batches %v after the flush, want the last 5 too", got)
		}
	})
}

// A full batch that fills while a goroutine streams operations goes within
// a millisecond of the last one, not at the flush: the intake leaves a
// streaming CPU's share to its producers for up to that long (see intake.go).
func TestFullBatchFromAStreamGoesWithinAMillisecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(1000)
		b := start(t, batcher.NewBatcher())
		time.Sleep(30 * time.Millisecond)
		t0 := time.Now()
		enqueue(t, b, w, 1000, 1) // several grants of credits
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got, sizes := s.starts(t0), s.batchSizes(); len(sizes) != 1 || sizes[0] != 1000 || got[0] > time.Millisecond {
			t.Fatalf("batches of %v started at %v after the stream, want one of 1000 within 1ms", sizes, got)
		}
	})
}

// A full batch that waits for a concurrency slot goes the moment the slot
// frees, not at the next flush: the worker that frees the slot takes it,
// whether the operations were enqueued before the slot filled or while it
// was busy.
func TestFullBatchWaitingForASlotGoesWhenItFrees(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		t0 := time.Now()
		s.handle = func(ctx context.Context, _ []*batcher.Operation) error {
			return sleep(ctx, 10*time.Millisecond)
		}
		w := s.watcher().WithMaxBatchSize(10).WithMaxConcurrentBatches(1)
		b := start(t, batcher.NewBatcher())
		enqueue(t, b, w, 20, 1) // two full batches: one runs, one waits
		time.Sleep(5 * time.Millisecond)
		enqueue(t, b, w, 10, 1) // a third, enqueued while the slot is busy
		time.Sleep(30*time.Millisecond - time.Nanosecond)
		synctest.Wait()
		got := s.starts(t0)
		want := []time.Duration{0, 10 * time.Millisecond, 20 * time.Millisecond}
		if len(got) != len(want) {
			t.Fatalf("batches started at %v, want at %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("batches started at %v, want at %v", got, want)
			}
		}
	})
}

// A flush that finds every slot busy is owed: the part batch goes as soon
// as a slot frees, not a flush interval later, for the interval's flush and
// for Flush alike.
func TestFlushThatFindsTheSlotsBusyGoesWhenOneFrees(t *testing.T) {
	for _, limit := range []string{"watcher", "batcher"} {
		t.Run(limit+" limit", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &sink{}
				t0 := time.Now()
				s.handle = func(ctx context.Context, batch []*batcher.Operation) error {
					if len(batch) == 10 {
						return sleep(ctx, 150*time.Millisecond) // over the 100 ms flush
					}
					return nil
				}
				w := s.watcher().WithMaxBatchSize(10)
				b := batcher.NewBatcher().WithFlushInterval(100 * time.Millisecond)
				if limit == "watcher" {
					w.WithMaxConcurrentBatches(1)
				} else {
					b.WithMaxConcurrentBatches(1)
				}
				start(t, b)
				enqueue(t, b, w, 13, 1) // a full batch runs until 150 ms; 3 wait for the flush
				time.Sleep(300 * time.Millisecond)
				synctest.Wait()
				got := s.starts(t0)
				// The flush at 100 ms finds the slot busy; the 3 go when it
				// frees, at 150 ms, not at the flush of 200 ms.
				if want := []time.Duration{0, 150 * time.Millisecond}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
					t.Fatalf("batches started at %v, want at %v", got, want)
				}

				// Flush: 10 more, then 4 more, while nothing runs: the 10
				// go at once and hold the slot for 150 ms; Flush owes the 4
				// and returns once they have gone, when the slot frees.
				t1 := time.Since(t0)
				enqueue(t, b, w, 14, 1)
				if err := b.Flush(bounded(t)); err != nil {
					t.Fatal(err)
				}
				if d := time.Since(t0) - t1; d != 150*time.Millisecond {
					t.Errorf("Flush returned after %v, want 150ms (when the slot freed)", d)
				}
			})
		})
	}
}

func TestOperationThatCannotShareABatchGoesAloneAndAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(10)
		b := start(t, batcher.NewBatcher())
		time.Sleep(30 * time.Millisecond)
		enqueue(t, b, w, 3, 1)
		alone := batcher.NewOperation(w, 1, "alone", false)
		if err := b.Enqueue(alone); err != nil {
			t.Fatal(err)
		}
		enqueue(t, b, w, 2, 1)
		synctest.Wait() // no time passes
		s.mu.Lock()
		var found []*batcher.Operation
		for _, bt := range s.batches {
			for _, op := range bt {
				if op == alone {
					found = bt
				}
			}
		}
		s.mu.Unlock()
		if len(found) != 1 {
			t.Fatalf("the operation that cannot share a batch went out in %v, want at once and alone", found)
		}
		time.Sleep(70 * time.Millisecond)
		synctest.Wait()
		if n := s.ops(); n != 6 {
			t.Fatalf("%d operations out after the flush, want 6", n)
		}
	})
}

func TestEagerReleaseIsImmediate(t *testing.T) {
	for _, limited := range []bool{false, true} {
		t.Run(map[bool]string{false: "no limiter", true: "provisioned"}[limited], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &sink{}
				w := s.watcher().WithMaxBatchSize(100)
				b := batcher.NewBatcher().WithEagerRelease().WithMaxConcurrentBatches(4)
				if limited {
					b.WithRateLimiter(ratelimiter.NewProvisioned(1000))
				}
				start(t, b)
				for i := range 50 {
					time.Sleep(7 * time.Millisecond) // off the flush ticks
					enqueue(t, b, w, 1, 1)
					synctest.Wait() // no time passes
					if n := s.ops(); n != i+1 {
						t.Fatalf("op %d: ProcessBatch has seen %d operations at once, want %d", i, n, i+1)
					}
				}
			})
		})
	}
}

func TestEagerBatchesFillWhenSlotsAreBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		s.handle = func(ctx context.Context, _ []*batcher.Operation) error { return sleep(ctx, 10*time.Millisecond) }
		w := s.watcher().WithMaxBatchSize(100).WithMaxConcurrentBatches(1)
		b := start(t, batcher.NewBatcher().WithEagerRelease())
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		feed(ctx, b, w, 1)
		time.Sleep(5 * time.Second)
		cancel()
		sizes := s.batchSizes()
		s.mu.Lock()
		peak := s.peak
		s.mu.Unlock()
		if peak > 1 {
			t.Errorf("%d batches of the watcher ran at once, its limit is 1", peak)
		}
		checkFill(t, sizes[1:], 100)
	})
}

func TestEagerBatchesFillWhenCapacityIsShort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(100)
		b := start(t, batcher.NewBatcher().WithEagerRelease().WithRateLimiter(ratelimiter.NewProvisioned(10000)))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		t0 := time.Now()
		feed(ctx, b, w, 1)
		time.Sleep(5 * time.Second)
		cancel()
		checkWindows(t, &s.log, 10000)
		// In the first flush interval the capacity is there and the slots
		// are free: eager release sends operations as they come. After that
		// the capacity is short, and batches fill.
		var sizes []int
		for _, r := range s.log.All() {
			if r.At.Sub(t0) > time.Second {
				sizes = append(sizes, r.Cost) // operations cost 1
			}
		}
		checkFill(t, sizes, 100)
	})
}

// checkFill fails t unless the mean batch size is at least 90% of max.
func checkFill(t *testing.T, sizes []int, max int) {
	t.Helper()
	if len(sizes) == 0 {
		t.Fatal("no batches")
	}
	sum := 0
	for _, n := range sizes {
		sum += n
	}
	mean := float64(sum) / float64(len(sizes))
	if mean < 0.9*float64(max) {
		t.Errorf("mean batch size %.1f over %d batches, under 90%% of %d", mean, len(sizes), max)
	}
	t.Logf("mean batch size %.1f of %d over %d batches", mean, max, len(sizes))
}

func TestEagerReleaseCoalescesABurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(100)
		b := start(t, batcher.NewBatcher().WithEagerRelease())
		time.Sleep(7 * time.Millisecond)
		enqueue(t, b, w, 1, 1)
		synctest.Wait()
		if got := s.batchSizes(); len(got) != 1 {
			t.Fatalf("batches %v after the first operation, want it alone at once", got)
		}
		// Two that happen to come close together both go at once.
		enqueue(t, b, w, 1, 1)
		synctest.Wait()
		if got := s.batchSizes(); len(got) != 2 {
			t.Fatalf("batches %v after a second operation right after the first, want it at once too", got)
		}
		// A burst, later: its first two operations go at once, as those
		// two did; the rest not in a batch each, but together a
		// millisecond after.
		time.Sleep(10 * time.Millisecond)
		enqueue(t, b, w, 50, 1)
		synctest.Wait()
		if got := s.batchSizes(); !slices.Equal(got, []int{1, 1, 1, 1}) {
			t.Fatalf("batches %v right after a burst, want its first two alone and the rest held back for a millisecond", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := s.batchSizes(); len(got) != 5 || got[4] != 48 {
			t.Fatalf("batches %v a millisecond later, want the other 48 together", got)
		}
		// A full batch does not wait.
		enqueue(t, b, w, 100, 1)
		synctest.Wait()
		if got := s.batchSizes(); len(got) != 6 || got[5] != 100 {
			t.Fatalf("batches %v, want the full batch at once", got)
		}
	})
}
