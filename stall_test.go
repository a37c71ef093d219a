package batcher_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// G7: no stalls of our making; MaxConcurrentBatches is never exceeded; an
// overrun is cancelled and reported but keeps its slot until it returns.

func TestAuditDuringALongBatchDoesNotStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(100)).
			WithAuditInterval(time.Second).WithMaxOperationTime(time.Hour)
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		long := &sink{}
		long.handle = func(ctx context.Context, _ []*batcher.Operation) error { return sleep(ctx, 20*time.Second) }
		enqueue(t, b, long.watcher(), 1, 50)
		time.Sleep(time.Second)
		short := &sink{}
		sw := short.watcher().WithMaxBatchSize(5)
		for range 10 {
			enqueue(t, b, sw, 10, 1)
			time.Sleep(time.Second)
		}
		// Ten audits ran while the long batch did; the other watcher's
		// operations all went out meanwhile.
		if n := short.ops(); n != 100 {
			t.Errorf("%d of 100 operations released while a long batch and audits ran", n)
		}
		if n := ev.count(batcher.AuditFailed); n != 0 {
			t.Errorf("%d failed audits: %v", n, ev.of(batcher.AuditFailed))
		}
		if n := ev.count(batcher.AuditPassed); n < 9 {
			t.Errorf("%d passed audits in 11 s with an audit interval of 1 s", n)
		}
		if got := b.Inflight(); got != 1 {
			t.Errorf("Inflight = %d during the long batch, want 1", got)
		}
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		if n := long.ops(); n != 1 {
			t.Errorf("the long batch ran %d times", n)
		}
	})
}

func TestAuditSkipsAnEmptyBatcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithAuditInterval(time.Second)
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		time.Sleep(3500 * time.Millisecond)
		if n := ev.count(batcher.AuditSkipped); n != 3 {
			t.Errorf("%d skipped audits in 3.5 s, want 3", n)
		}
	})
}

func TestOverrunIsCancelledReportedAndKeepsItsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithMaxConcurrentBatches(1).WithMaxOperationTime(2 * time.Second)
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		type seen struct {
			err      error
			deadline time.Time
			at       time.Duration
		}
		results := make(chan seen, 1)
		t0 := time.Now()
		slow := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			d, _ := ctx.Deadline()
			<-ctx.Done()
			results <- seen{ctx.Err(), d, time.Since(t0)}
			time.Sleep(3 * time.Second) // goes on after the cancellation
			return ctx.Err()
		}).WithMaxBatchSize(1)
		op := batcher.NewOperation(slow, 1, nil, true)
		if err := b.Enqueue(op); err != nil {
			t.Fatal(err)
		}
		other := &sink{}
		enqueue(t, b, other.watcher().WithMaxBatchSize(1), 1, 1)

		got := <-results
		if got.err != context.DeadlineExceeded || got.at != 2*time.Second || !got.deadline.Equal(t0.Add(2*time.Second)) {
			t.Errorf("ProcessBatch saw %v at %v with deadline %v, want DeadlineExceeded at 2s", got.err, got.at, got.deadline.Sub(t0))
		}
		synctest.Wait()
		to := ev.of(batcher.TimedOut)
		if len(to) != 1 || len(to[0].Batch) != 1 || to[0].Batch[0] != op || to[0].Duration != 2*time.Second {
			t.Fatalf("timeout events %v, want one with the batch", to)
		}
		// The slot is held until the call returns, 3 s after the deadline.
		time.Sleep(3*time.Second - time.Nanosecond)
		synctest.Wait()
		if n := other.ops(); n != 0 {
			t.Fatal("another batch ran while the overrunning one still held the only slot")
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if n := other.ops(); n != 1 {
			t.Fatal("the other batch did not run once the slot was free")
		}
		if err := op.Wait(t.Context()); err != context.DeadlineExceeded {
			t.Errorf("the overrun operation ended with %v, what its ProcessBatch returned was DeadlineExceeded", err)
		}
		if st := b.Stats(); st.TimedOut != 1 {
			t.Errorf("Stats.TimedOut = %d", st.TimedOut)
		}
	})
}

func TestProcessBatchThatNeverReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const slots = 3
		b := batcher.NewBatcher().WithMaxConcurrentBatches(slots).WithMaxOperationTime(time.Second)
		ev := &events{}
		b.AddListener(ev.add)
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		forever := make(chan struct{})
		defer close(forever) // only so that the bubble can end
		stuck := &sink{}
		stuck.handle = func(context.Context, []*batcher.Operation) error {
			<-forever // ignores its context
			return nil
		}
		stuckOp := batcher.NewOperation(stuck.watcher(), 1, nil, true)
		if err := b.Enqueue(stuckOp); err != nil {
			t.Fatal(err)
		}
		// Other watchers' work goes on in the remaining slots.
		var mu sync.Mutex
		running, peak := 1, 1
		others := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			mu.Lock()
			running++
			peak = max(peak, running)
			mu.Unlock()
			err := sleep(ctx, 50*time.Millisecond)
			mu.Lock()
			running--
			mu.Unlock()
			return err
		}).WithMaxBatchSize(5)
		for range 20 {
			enqueue(t, b, others, 10, 1)
			time.Sleep(200 * time.Millisecond)
		}
		synctest.Wait()
		if st := b.Stats(); st.Succeeded != 200 {
			t.Errorf("%d of 200 other operations done while one batch never returns", st.Succeeded)
		}
		if peak > slots {
			t.Errorf("%d batches ran at once, over MaxConcurrentBatches %d", peak, slots)
		}
		if to := ev.of(batcher.TimedOut); len(to) != 1 || to[0].Batch[0] != stuckOp {
			t.Errorf("timeout events %v, want the stuck batch once", to)
		}
		// Shutdown gives up at its context and reports the stuck operation.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		t0 := time.Now()
		if err := b.Shutdown(ctx); err != context.DeadlineExceeded {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if took := time.Since(t0); took != 2*time.Second {
			t.Errorf("Shutdown gave up after %v, want its 2s", took)
		}
		if err := stuckOp.Err(); !isDone(stuckOp) || !errors.Is(err, batcher.ErrClosed) {
			t.Errorf("the stuck operation: done %v, err %v, want ErrClosed", isDone(stuckOp), err)
		}
		reported := false
		for _, e := range ev.of(batcher.Failed) {
			if len(e.Batch) == 1 && e.Batch[0] == stuckOp {
				reported = true
			}
		}
		if !reported {
			t.Error("the stuck operation was not reported in a failed event")
		}
	})
}

func TestConcurrencyLimitHoldsWhateverHappens(t *testing.T) {
	// Overruns, retries, audits, flushes and pauses at random: the number of
	// running ProcessBatch calls never exceeds the limits, and everything
	// ends.
	for seed := range uint64(4) {
		t.Run("", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, 1))
				const limit, perWatcher = 4, 2
				b := batcher.NewBatcher().WithMaxConcurrentBatches(limit).WithMaxOperationTime(300 * time.Millisecond).
					WithAuditInterval(time.Second).WithRateLimiter(ratelimiter.NewProvisioned(5000))
				if seed%2 == 1 {
					b.WithEagerRelease()
				}
				start(t, b)
				var mu sync.Mutex
				running := 0
				perW := map[*batcher.Watcher]int{}
				bad := ""
				var ws []*batcher.Watcher
				durations := make([]time.Duration, 64)
				for i := range durations {
					durations[i] = time.Duration(rng.IntN(600)) * time.Millisecond
				}
				for i := range 6 {
					var w *batcher.Watcher
					w = batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
						mu.Lock()
						running++
						perW[w]++
						if running > limit || perW[w] > perWatcher {
							bad = "over the limit"
						}
						d := durations[(batch[0].Payload().(int)+i)%len(durations)]
						mu.Unlock()
						time.Sleep(d) // may ignore the cancellation for a while
						mu.Lock()
						running--
						perW[w]--
						mu.Unlock()
						if d > 400*time.Millisecond {
							return batcher.Retry(errors.New("slow"))
						}
						return nil
					}).WithMaxBatchSize(1 + i).WithMaxConcurrentBatches(perWatcher).WithMaxAttempts(2)
					ws = append(ws, w)
				}
				var all []*batcher.Operation
				for range 50 {
					for _, w := range ws {
						all = append(all, enqueue(t, b, w, rng.IntN(8), 1+rng.IntN(30))...)
					}
					if rng.IntN(5) == 0 {
						b.Pause()
					}
					time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
				}
				if err := shutdown(t, b); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				defer mu.Unlock()
				if bad != "" {
					t.Error(bad)
				}
				for i, op := range all {
					if !isDone(op) {
						t.Fatalf("op %d did not end", i)
					}
				}
				if st := b.Stats(); st.Succeeded+st.Failed != int64(len(all)) {
					t.Errorf("Stats %+v for %d operations", st, len(all))
				}
			})
		})
	}
}
