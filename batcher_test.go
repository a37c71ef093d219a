package batcher_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// The Batcher's own life: Start, Enqueue, Flush, Shutdown and Close.
// G3: every enqueued operation has exactly one end, and the counts add up.
// G4: Shutdown drains through the limiter and loses nothing; Close aborts.

func TestEveryOperationEndsOnceAndIsCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000))
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)

		// Operation i: i%5 == 0 fails for good, i%5 == 1 asks for a retry
		// every time (and runs out of attempts), i%5 == 2 is retried once
		// and then succeeds, the rest succeed at once.
		var mu sync.Mutex
		calls := map[int]int{}
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			for _, op := range batch {
				i := op.Payload().(int)
				calls[i]++
				switch i % 5 {
				case 0:
					op.Fail(fmt.Errorf("bad item %d", i))
				case 1:
					op.Retry(errors.New("try again"))
				case 2:
					if op.Attempt() == 1 {
						op.Retry(errors.New("once more"))
					}
				}
			}
			return nil
		}).WithMaxBatchSize(10).WithMaxAttempts(3)
		ops := enqueue(t, b, w, 500, 1)
		if err := b.Enqueue(nil); !errors.Is(err, batcher.ErrNoOperation) {
			t.Fatalf("Enqueue(nil) = %v, want ErrNoOperation", err)
		}
		if err := shutdown(t, b); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}

		var succeeded, failed int
		for i, op := range ops {
			select {
			case <-op.Done():
			default:
				t.Fatalf("op %d has not ended after Shutdown", i)
			}
			err := op.Wait(t.Context())
			switch i % 5 {
			case 0:
				if err == nil || err.Error() != fmt.Sprintf("bad item %d", i) {
					t.Errorf("op %d: Wait = %v, want its own failure", i, err)
				}
				failed++
			case 1:
				if !errors.Is(err, batcher.ErrTooManyAttempts) || calls[i] != 3 {
					t.Errorf("op %d: Wait = %v after %d calls, want ErrTooManyAttempts after 3", i, err, calls[i])
				}
				failed++
			case 2:
				if err != nil || calls[i] != 2 {
					t.Errorf("op %d: Wait = %v after %d calls, want success after 2", i, err, calls[i])
				}
				succeeded++
			default:
				if err != nil || calls[i] != 1 {
					t.Errorf("op %d: Wait = %v after %d calls, want success after 1", i, err, calls[i])
				}
				succeeded++
			}
		}
		st := b.Stats()
		if st.Enqueued != 500 || st.Refused != 1 || st.Succeeded != int64(succeeded) || st.Failed != int64(failed) || st.Buffered != 0 || st.InFlight != 0 {
			t.Errorf("Stats = %+v, want 500 enqueued, 1 refused, %d succeeded, %d failed, none left", st, succeeded, failed)
		}
		// Each failure is reported exactly once, with its operation.
		reported := map[*batcher.Operation]int{}
		for _, e := range ev.of(batcher.Failed) {
			for _, op := range e.Batch {
				reported[op]++
				if e.Err == nil || e.Err.Error() != op.Err().Error() {
					t.Errorf("failed event for op %v has error %v, op says %v", op.Payload(), e.Err, op.Err())
				}
			}
		}
		for i, op := range ops {
			want := 0
			if op.Err() != nil {
				want = 1
			}
			if reported[op] != want {
				t.Errorf("op %d reported %d times in failed events, want %d", i, reported[op], want)
			}
		}
	})
}

func TestRefusedEnqueueChangesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(100)).WithBufferSize(2).WithErrorOnFullBuffer()
		start(t, b)
		block := make(chan struct{})
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			select {
			case <-block:
			case <-ctx.Done():
			}
			return nil
		}).WithMaxBatchSize(1)
		enqueue(t, b, w, 2, 10)
		synctest.Wait()
		before := b.Stats()
		target := b.NeedsCapacity()

		bad := []struct {
			name string
			op   *batcher.Operation
			want error
		}{
			{"no watcher", batcher.NewOperation(nil, 1, nil, true), batcher.ErrNoWatcher},
			{"negative cost", batcher.NewOperation(w, -1, nil, true), batcher.ErrNegativeCost},
			{"too expensive", batcher.NewOperation(w, 101, nil, true), batcher.ErrTooExpensive},
			{"buffer full", batcher.NewOperation(w, 5, nil, true), batcher.ErrBufferFull},
		}
		for _, c := range bad {
			err := b.Enqueue(c.op)
			if !errors.Is(err, c.want) {
				t.Errorf("%s: Enqueue = %v, want %v", c.name, err, c.want)
			}
			if got := b.NeedsCapacity(); got != target {
				t.Errorf("%s: the target went from %d to %d", c.name, target, got)
			}
		}
		after := b.Stats()
		if after.Enqueued != before.Enqueued || after.Buffered != before.Buffered || after.Refused != before.Refused+int64(len(bad)) {
			t.Errorf("Stats went from %+v to %+v, want only Refused to grow by %d", before, after, len(bad))
		}
		// A refused operation can be enqueued once there is room.
		retry := bad[3].op
		close(block)
		for b.Enqueue(retry) != nil {
			time.Sleep(time.Millisecond)
		}
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		if err := waitFor(t, retry); err != nil {
			t.Errorf("the operation first refused for a full buffer: %v", err)
		}
		// An operation is enqueued once only.
		if err := b.Enqueue(retry); !errors.Is(err, batcher.ErrImproperOrder) {
			t.Errorf("Enqueue of an operation that has ended = %v, want ErrImproperOrder", err)
		}
	})
}

func TestEnqueueTwiceIsRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher())
		s := &sink{}
		op := batcher.NewOperation(s.watcher(), 1, nil, true)
		if err := b.Enqueue(op); err != nil {
			t.Fatal(err)
		}
		if err := b.Enqueue(op); !errors.Is(err, batcher.ErrImproperOrder) {
			t.Errorf("second Enqueue of the same operation = %v, want ErrImproperOrder", err)
		}
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		if n := s.ops(); n != 1 {
			t.Errorf("ProcessBatch saw %d operations, want 1", n)
		}
	})
}

func TestShutdownDrainsThroughTheLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000))
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(10)
		ops := enqueue(t, b, w, 500, 10) // five seconds' worth
		t0 := time.Now()
		if err := shutdown(t, b); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		took := time.Since(t0)
		if took < 4*time.Second || took > 6*time.Second {
			t.Errorf("Shutdown took %v to drain five seconds of capacity", took)
		}
		checkWindows(t, &s.log, 1000)
		for i, op := range ops {
			if !isDone(op) || op.Err() != nil {
				t.Fatalf("op %d: done %v, err %v after Shutdown", i, isDone(op), op.Err())
			}
		}
		if n := s.ops(); n != 500 {
			t.Errorf("ProcessBatch saw %d operations, want 500", n)
		}
		if n := ev.count(batcher.ShutdownDone); n != 1 {
			t.Errorf("%d shutdown events, want 1", n)
		}
		// Nothing is emitted after Shutdown returns.
		n := len(ev.list)
		b.Pause()
		b.Flush(bounded(t))
		time.Sleep(time.Second)
		if len(ev.list) != n {
			t.Errorf("events after Shutdown returned: %v", ev.list[n:])
		}
		if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); !errors.Is(err, batcher.ErrClosed) {
			t.Errorf("Enqueue after Shutdown = %v, want ErrClosed", err)
		}
		if err := shutdown(t, b); err != nil {
			t.Errorf("a second Shutdown = %v, want nil", err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close after Shutdown = %v, want nil", err)
		}
		if err := b.Start(t.Context()); !errors.Is(err, batcher.ErrClosed) {
			t.Errorf("Start after Shutdown = %v, want ErrClosed", err)
		}
	})
}

func isDone(op *batcher.Operation) bool {
	select {
	case <-op.Done():
		return true
	default:
		return false
	}
}

func TestShutdownWaitsForRetriesAndInFlightBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher())
		var mu sync.Mutex
		tries := 0
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			tries++
			n := tries
			mu.Unlock()
			if err := sleep(ctx, time.Second); err != nil {
				return err
			}
			if n < 3 {
				return batcher.Retry(errors.New("not yet"))
			}
			return nil
		}).WithRetryBackoff(2*time.Second, 10*time.Second)
		op := batcher.NewOperation(w, 1, nil, true)
		if err := b.Enqueue(op); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond) // in flight
		t0 := time.Now()
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		// Released at the first flush (0.1s), 1s in flight, 2s back-off, 1s,
		// 4s back-off, 1s: done at 9.1s; retries go at once while draining.
		if took := time.Since(t0); took != 8950*time.Millisecond {
			t.Errorf("Shutdown took %v, want 8.95s for the retries to finish", took)
		}
		if err := op.Err(); err != nil || !isDone(op) {
			t.Errorf("op: done %v, err %v", isDone(op), err)
		}
	})
}

func TestEnqueueBlockedOnAFullBufferReturnsAtShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The buffer counts operations in flight: five stuck ones fill it.
		b := start(t, batcher.NewBatcher().WithBufferSize(5))
		release := make(chan struct{})
		s := &sink{}
		s.handle = func(ctx context.Context, _ []*batcher.Operation) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}
		w := s.watcher().WithMaxBatchSize(1)
		enqueue(t, b, w, 5, 1)
		errs := make(chan error, 3)
		for range 3 {
			go func() { errs <- b.Enqueue(batcher.NewOperation(w, 1, nil, true)) }()
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		blocked := batcher.NewOperation(w, 1, nil, true)
		if err := b.EnqueueContext(ctx, blocked); err != context.DeadlineExceeded {
			t.Fatalf("EnqueueContext on a full buffer = %v, want DeadlineExceeded after its ctx", err)
		}
		synctest.Wait()
		select {
		case err := <-errs:
			t.Fatalf("Enqueue on a full buffer returned %v before Shutdown", err)
		default:
		}
		shut := make(chan error, 1)
		go func() { shut <- b.Shutdown(bounded(t)) }()
		for range 3 {
			if err := <-errs; !errors.Is(err, batcher.ErrClosed) {
				t.Errorf("blocked Enqueue returned %v at Shutdown, want ErrClosed", err)
			}
		}
		close(release)
		if err := <-shut; err != nil {
			t.Fatal(err)
		}
		if n := s.ops(); n != 5 {
			t.Errorf("drained %d operations, want the 5 accepted", n)
		}
		if st := b.Stats(); st.Enqueued != 5 || st.Succeeded != 5 || st.Refused != 4 {
			t.Errorf("Stats = %+v", st)
		}
		// The operation refused for its context can be enqueued elsewhere.
		b2 := start(t, batcher.NewBatcher())
		if err := b2.Enqueue(blocked); err != nil {
			t.Errorf("Enqueue of the operation refused for its context: %v", err)
		}
	})
}

func TestShutdownGivesUpAtItsContextAndReportsWhatIsLeft(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(10)).WithMaxConcurrentBatches(1)
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(1)
		ops := enqueue(t, b, w, 100, 1) // ten seconds' worth
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != context.DeadlineExceeded {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
		processed := s.ops()
		if processed < 25 || processed > 40 {
			t.Errorf("processed %d operations in 3s at 10 per second", processed)
		}
		failed := map[*batcher.Operation]bool{}
		for _, e := range ev.of(batcher.Failed) {
			if !errors.Is(e.Err, batcher.ErrClosed) || !errors.Is(e.Err, context.DeadlineExceeded) {
				t.Errorf("failed event error %v, want ErrClosed and DeadlineExceeded", e.Err)
			}
			for _, op := range e.Batch {
				failed[op] = true
			}
		}
		for i, op := range ops {
			if !isDone(op) {
				t.Fatalf("op %d has not ended after Shutdown gave up", i)
			}
			if (op.Err() != nil) != failed[op] {
				t.Errorf("op %d: err %v, reported %v", i, op.Err(), failed[op])
			}
		}
		if len(failed)+processed != 100 {
			t.Errorf("%d processed + %d reported != 100", processed, len(failed))
		}
		if st := b.Stats(); st.Succeeded+st.Failed != 100 {
			t.Errorf("Stats = %+v, want every operation ended", st)
		}
	})
}

func TestCloseAborts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(10))
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		cancelled := make(chan error, 50)
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			<-ctx.Done()
			cancelled <- ctx.Err()
			return ctx.Err()
		}).WithMaxBatchSize(1)
		ops := enqueue(t, b, w, 50, 1)
		time.Sleep(500 * time.Millisecond)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-cancelled; err != context.Canceled {
			t.Errorf("a running ProcessBatch saw %v at Close, want context.Canceled", err)
		}
		for i, op := range ops {
			if !isDone(op) || !errors.Is(op.Err(), batcher.ErrClosed) {
				t.Fatalf("op %d: done %v, err %v after Close, want ErrClosed", i, isDone(op), op.Err())
			}
		}
		if got := len(ev.of(batcher.Failed)); got != 50 {
			t.Errorf("%d failed events after Close, want 50", got)
		}
		if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); !errors.Is(err, batcher.ErrClosed) {
			t.Errorf("Enqueue after Close = %v", err)
		}
		synctest.Wait()
		if st := b.Stats(); st.Failed != 50 || st.Succeeded != 0 {
			t.Errorf("Stats = %+v, want 50 failed", st)
		}
	})
}

func TestStartContextEndingActsAsClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1))
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		s := &sink{}
		ops := enqueue(t, b, s.watcher(), 10, 1)
		time.Sleep(2500 * time.Millisecond)
		cancel()
		synctest.Wait()
		ended := 0
		for _, op := range ops {
			if isDone(op) {
				ended++
				if op.Err() != nil && !errors.Is(op.Err(), batcher.ErrClosed) {
					t.Errorf("op ended with %v", op.Err())
				}
			}
		}
		if ended != 10 {
			t.Errorf("%d of 10 operations ended after Start's context ended", ended)
		}
		if err := b.Enqueue(batcher.NewOperation(s.watcher(), 1, nil, true)); !errors.Is(err, batcher.ErrClosed) {
			t.Errorf("Enqueue after Start's context ended = %v, want ErrClosed", err)
		}
		if err := shutdown(t, b); !errors.Is(err, batcher.ErrClosed) {
			t.Errorf("Shutdown after Start's context ended = %v, want ErrClosed: there was no drain", err)
		}
	})
}

func TestNoGoroutineOutlivesShutdown(t *testing.T) {
	// Outside a bubble, with real goroutines: after Shutdown the goroutine
	// count is back where it was.
	before := runtime.NumGoroutine()
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(100000)).WithEagerRelease()
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := &sink{}
	s.handle = func(ctx context.Context, _ []*batcher.Operation) error { return sleep(ctx, time.Millisecond) }
	w := s.watcher().WithMaxBatchSize(10)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := s.ops(); n != 4000 {
		t.Errorf("processed %d, want 4000", n)
	}
	// Timer callbacks may still be returning; give the scheduler a moment.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Shutdown, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestShutdownAndCloseBeforeStart(t *testing.T) {
	b := batcher.NewBatcher()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown before Start = %v", err)
	}
	if err := b.Start(context.Background()); !errors.Is(err, batcher.ErrClosed) {
		t.Errorf("Start after Shutdown = %v, want ErrClosed", err)
	}
	b2 := batcher.NewBatcher()
	if err := b2.Close(); err != nil {
		t.Errorf("Close before Start = %v", err)
	}
	if err := b2.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after Close = %v", err)
	}
	b3 := batcher.NewBatcher()
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
	if err := b3.Enqueue(batcher.NewOperation(w, 1, nil, true)); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("Enqueue before Start = %v, want ErrImproperOrder", err)
	}
	if err := b3.Flush(context.Background()); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("Flush before Start = %v, want ErrImproperOrder", err)
	}
}

func TestConcurrentShutdowns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(100)))
		s := &sink{}
		enqueue(t, b, s.watcher().WithMaxBatchSize(10), 300, 1)
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() { errs[i] = b.Shutdown(bounded(t)) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("Shutdown #%d = %v", i, err)
			}
		}
		if n := s.ops(); n != 300 {
			t.Errorf("drained %d, want 300", n)
		}
	})
}

// Flush waits for the operations enqueued before it to end, those that are
// between attempts included, when Flush had never been called before they
// were enqueued.
func TestFlushWaitsForOperationsBetweenAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher())
		var mu sync.Mutex
		attempts := 0
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			attempts++
			if attempts == 1 {
				return batcher.Retry(errors.New("try again"))
			}
			return nil
		}).WithMaxBatchSize(10).WithRetryBackoff(time.Second, time.Second)
		ops := enqueue(t, b, w, 5, 1)
		time.Sleep(150 * time.Millisecond) // the first attempt has failed
		synctest.Wait()
		t0 := time.Now()
		if err := b.Flush(bounded(t)); err != nil {
			t.Fatal(err)
		}
		for i, op := range ops {
			if !isDone(op) {
				t.Fatalf("Flush returned after %v with op %d not ended", time.Since(t0), i)
			}
		}
		if st := b.Stats(); st.Succeeded != 5 || st.Retried != 5 {
			t.Errorf("Stats %+v, want 5 retried and then succeeded", st)
		}
	})
}

func TestProcessBatchMayChangeItsSlice(t *testing.T) {
	// The usual filter idiom reuses the slice ProcessBatch got: every
	// operation still ends, once.
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher())
		var mu sync.Mutex
		var kept [][]*batcher.Operation
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			odd := batch[:0]
			for _, op := range batch {
				if op.Payload().(int)%2 == 1 {
					odd = append(odd, op)
				}
			}
			for i := range batch[len(odd):] {
				batch[len(odd)+i] = nil
			}
			mu.Lock()
			kept = append(kept, odd) // and keeps it
			mu.Unlock()
			return nil
		}).WithMaxBatchSize(4)
		ops := enqueue(t, b, w, 40, 1)
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		for i, op := range ops {
			if !isDone(op) || op.Err() != nil {
				t.Errorf("op %d: done %v, err %v", i, isDone(op), op.Err())
			}
		}
		if st := b.Stats(); st.Succeeded != 40 {
			t.Errorf("Stats %+v", st)
		}
		// What ProcessBatch kept is still what it left there, after the
		// batches that came later: the Batcher reuses only its own copies.
		seen := map[*batcher.Operation]bool{}
		for _, k := range kept {
			for _, op := range k {
				if op == nil || op.Payload().(int)%2 != 1 || seen[op] {
					t.Fatalf("a kept slice changed after its batch: %v", k)
				}
				seen[op] = true
			}
		}
		if len(seen) != 20 {
			t.Errorf("the kept slices hold %d odd operations, want 20", len(seen))
		}
	})
}

func TestFailuresAreReportedBeforeCloseReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher()
		ev := &events{}
		closed := make(chan error, 1)
		var once sync.Once
		b.AddListener(func(e batcher.Event) {
			ev.add(e)
			if e.Kind == batcher.Failed {
				once.Do(func() {
					go func() { closed <- b.Close() }() // Close arrives during the first event
					time.Sleep(time.Millisecond)
				})
			}
		})
		start(t, b)
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			return errors.New("rejected")
		}).WithMaxBatchSize(2).WithMaxAttempts(1)
		ops := enqueue(t, b, w, 2, 1)
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		reported := map[*batcher.Operation]bool{}
		for _, e := range ev.of(batcher.Failed) {
			reported[e.Batch[0]] = true
		}
		for i, op := range ops {
			if op.Err() == nil || !reported[op] {
				t.Errorf("op %d: err %v, reported %v by the time Close returned", i, op.Err(), reported[op])
			}
		}
		if st := b.Stats(); st.Failed != 2 {
			t.Errorf("Stats.Failed = %d when Close returned, want 2", st.Failed)
		}
	})
}

// blockingLimiter's Start waits for a signal, as a limiter that acquires
// leases might.
type blockingLimiter struct{ release chan struct{} }

func (l blockingLimiter) MaxCapacity() int { return 100 }
func (l blockingLimiter) Capacity() int    { return 100 }
func (l blockingLimiter) GiveMe(int)       {}
func (l blockingLimiter) Start(ctx context.Context) error {
	<-l.release
	return nil
}

func TestShutdownDuringStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := blockingLimiter{make(chan struct{})}
		b := batcher.NewBatcher().WithRateLimiter(lim)
		started := make(chan error, 1)
		go func() { started <- b.Start(t.Context()) }()
		synctest.Wait() // Start is waiting for the limiter
		if err := shutdown(t, b); err != nil {
			t.Fatalf("Shutdown during Start = %v", err)
		}
		close(lim.release)
		if err := <-started; !errors.Is(err, batcher.ErrClosed) {
			t.Fatalf("Start after a Shutdown that came during it = %v, want ErrClosed", err)
		}
		w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
		if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err == nil {
			t.Error("Enqueue accepted after Shutdown")
		}
		// synctest.Test fails if a goroutine of the Batcher is left.
	})
}

func TestDerivedContextsSeeTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithMaxOperationTime(time.Second))
		got := make(chan error, 2)
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			child, cancel := context.WithCancel(ctx) // as client libraries do
			defer cancel()
			<-child.Done()
			got <- ctx.Err()
			got <- child.Err()
			return child.Err()
		})
		enqueue(t, b, w, 1, 1)
		if err := <-got; err != context.DeadlineExceeded {
			t.Errorf("ctx.Err() = %v after an overrun", err)
		}
		if err := <-got; err != context.DeadlineExceeded {
			t.Errorf("a derived context's Err() = %v after an overrun, want DeadlineExceeded", err)
		}
	})
}

// stoppingLimiter records when its Stop is called.
type stoppingLimiter struct {
	mu      sync.Mutex
	stopped []time.Time
}

func (l *stoppingLimiter) MaxCapacity() int            { return 1000 }
func (l *stoppingLimiter) Capacity() int               { return 1000 }
func (l *stoppingLimiter) GiveMe(int)                  {}
func (l *stoppingLimiter) Start(context.Context) error { return nil }
func (l *stoppingLimiter) Stop(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = append(l.stopped, time.Now())
	return nil
}

func (l *stoppingLimiter) stops() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.stopped)
}

func TestShutdownStopsTheLimiterAfterTheLastBatch(t *testing.T) {
	// A limiter that holds leases releases them in Stop: Shutdown calls it
	// once, after every ProcessBatch has returned; Close does not.
	synctest.Test(t, func(t *testing.T) {
		lim := &stoppingLimiter{}
		b := batcher.NewBatcher().WithRateLimiter(lim)
		start(t, b)
		var mu sync.Mutex
		var lastReturn time.Time
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			err := sleep(ctx, 2*time.Second)
			mu.Lock()
			lastReturn = time.Now()
			mu.Unlock()
			return err
		})
		enqueue(t, b, w, 3, 1)
		time.Sleep(150 * time.Millisecond)
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		shutdown(t, b)
		stops := lim.stops()
		mu.Lock()
		defer mu.Unlock()
		if len(stops) != 1 || stops[0].Before(lastReturn) {
			t.Errorf("Stop called at %v, the last batch returned at %v; want once, after", stops, lastReturn)
		}

		lim2 := &stoppingLimiter{}
		b2 := start(t, batcher.NewBatcher().WithRateLimiter(lim2))
		if err := b2.Close(); err != nil {
			t.Fatal(err)
		}
		if n := len(lim2.stops()); n != 0 {
			t.Errorf("Close called Stop %d times; it only cancels the limiter's context", n)
		}
	})
}

// G3: an operation is counted in Stats by the time its Wait returns, so a
// caller that waits and then reads Stats sees it.
func TestStatsCountAnOperationByTheTimeWaitReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithEagerRelease()
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		boom := errors.New("boom")
		w := batcher.NewWatcher(func(_ context.Context, ops []*batcher.Operation) error {
			if ops[0].Payload().(int)%2 == 1 {
				return boom
			}
			return nil
		})
		for i := range 500 {
			op := batcher.NewOperation(w, 1, i, true)
			if err := b.Enqueue(op); err != nil {
				t.Fatal(err)
			}
			op.Wait(t.Context())
			st := b.Stats()
			if st.Succeeded != int64(i/2+1) || st.Failed != int64((i+1)/2) {
				t.Fatalf("after operation %d ended: Stats %+v, want %d succeeded and %d failed", i, st, i/2+1, (i+1)/2)
			}
		}
	})
}
