package batcher_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// The context ProcessBatch gets behaves as one made with context.WithDeadline
// from Start's context: the deadline, the values, the ends (deadline, return,
// Close) with their errors, context.Cause, and derived contexts and
// context.AfterFunc that follow it.

type valueKey struct{}

func TestProcessBatchContextCarriesStartsValuesAndTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.WithValue(t.Context(), valueKey{}, "from Start")
		b := batcher.NewBatcher().WithMaxOperationTime(3 * time.Second)
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		type seen struct {
			value    any
			deadline time.Time
			ok       bool
			err      error
		}
		got := make(chan seen, 1)
		var kept context.Context
		t0 := time.Now()
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			d, ok := ctx.Deadline()
			got <- seen{ctx.Value(valueKey{}), d, ok, ctx.Err()}
			kept = ctx
			return nil
		})
		enqueue(t, b, w, 1, 1)
		s := <-got
		if s.value != "from Start" || !s.ok || !s.deadline.Equal(t0.Add(100*time.Millisecond+3*time.Second)) || s.err != nil {
			t.Errorf("in ProcessBatch: value %v, deadline %v (%v), err %v; want Start's value, flush + 3s, nil",
				s.value, s.deadline.Sub(t0), s.ok, s.err)
		}
		synctest.Wait()
		// Kept after ProcessBatch returned, it has ended, as a
		// context.WithDeadline's would have been cancelled.
		select {
		case <-kept.Done():
		default:
			t.Fatal("the context is not done after ProcessBatch returned")
		}
		if err := kept.Err(); err != context.Canceled {
			t.Errorf("Err() after ProcessBatch returned = %v, want Canceled", err)
		}
		if err := context.Cause(kept); err != context.Canceled {
			t.Errorf("Cause() after ProcessBatch returned = %v, want Canceled", err)
		}
	})
}

func TestProcessBatchContextEndsWithClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher())
		inCall := make(chan struct{})
		got := make(chan error, 2)
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			child, cancel := context.WithTimeout(ctx, time.Hour)
			defer cancel()
			close(inCall)
			<-child.Done()
			got <- ctx.Err()
			got <- child.Err()
			return ctx.Err()
		})
		enqueue(t, b, w, 1, 1)
		<-inCall
		b.Close()
		if err := <-got; err != context.Canceled {
			t.Errorf("Err() after Close = %v, want Canceled", err)
		}
		if err := <-got; err != context.Canceled {
			t.Errorf("a derived context's Err() after Close = %v, want Canceled", err)
		}
	})
}

func TestAfterFuncOnTheProcessBatchContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithMaxOperationTime(time.Second))
		type call struct {
			at  time.Duration
			err error
		}
		ran := make(chan call, 1)
		stoppedOK := make(chan bool, 1)
		t0 := time.Now()
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			// One stopped before the end never runs; one left runs at the
			// deadline.
			stop := context.AfterFunc(ctx, func() { ran <- call{-1, nil} })
			stoppedOK <- stop()
			context.AfterFunc(ctx, func() { ran <- call{time.Since(t0), ctx.Err()} })
			<-ctx.Done()
			return ctx.Err()
		})
		enqueue(t, b, w, 1, 1)
		if !<-stoppedOK {
			t.Error("stopping an AfterFunc before the context ended reported false")
		}
		c := <-ran
		if c.at != 1100*time.Millisecond || c.err != context.DeadlineExceeded {
			t.Errorf("AfterFunc ran at %v with Err %v, want at 1.1s (flush + limit) with DeadlineExceeded", c.at, c.err)
		}
		synctest.Wait()
		select {
		case c := <-ran:
			t.Errorf("a stopped AfterFunc ran too (%v)", c)
		default:
		}
	})
}

// A worker sets its overrun timer for one batch and keeps it for the next,
// moving it only for an earlier deadline; each batch still ends at its own.
func TestEachBatchEndsAtItsOwnDeadlineOnAReusedWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// One slot: every batch runs on the same worker, one after another.
		b := start(t, batcher.NewBatcher().WithMaxConcurrentBatches(1))
		t0 := time.Now()
		ended := make(chan time.Duration, 2)
		hang := func(ctx context.Context, _ []*batcher.Operation) error {
			<-ctx.Done()
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Errorf("ctx.Err() = %v, want DeadlineExceeded", ctx.Err())
			}
			ended <- time.Since(t0)
			return nil
		}
		quick := func(context.Context, []*batcher.Operation) error { return nil }
		endedAt := func() time.Duration {
			select {
			case at := <-ended:
				return at
			case <-time.After(time.Minute):
				t.Fatal("a hanging batch never reached its deadline")
				return 0
			}
		}

		// A quick batch with a 10 s limit leaves the timer set for 10.1 s;
		// a 1 s batch after it must end at 1.2 s, an earlier deadline.
		long := batcher.NewWatcher(quick).WithMaxOperationTime(10 * time.Second)
		enqueue(t, b, long, 1, 1)
		time.Sleep(150 * time.Millisecond)
		short := batcher.NewWatcher(hang).WithMaxOperationTime(time.Second)
		enqueue(t, b, short, 1, 1)
		if at := endedAt(); at != 1200*time.Millisecond {
			t.Errorf("the 1 s batch after a 10 s one ended at %v, want 1.2s", at)
		}

		// A quick 1 s batch leaves the timer set before the deadline of a
		// 5 s batch after it: the timer fires early, finds it running and
		// waits again, and it ends at its own deadline.
		enqueue(t, b, batcher.NewWatcher(quick).WithMaxOperationTime(time.Second), 1, 1)
		time.Sleep(150 * time.Millisecond) // the quick batch goes at 1.3 s
		t1 := time.Now()
		enqueue(t, b, batcher.NewWatcher(hang).WithMaxOperationTime(5*time.Second), 1, 1)
		next := t1.Sub(t0).Truncate(100*time.Millisecond) + 100*time.Millisecond // its flush
		if at := endedAt(); at != next+5*time.Second {
			t.Errorf("the 5 s batch after a 1 s one ended at %v, want %v", at, next+5*time.Second)
		}
	})
}

// ReleasedAt gives ProcessBatch the moment its batch counts from, through
// derived contexts too; the moments keep to the capacity (here one batch
// of the whole capacity a second).
func TestReleasedAtIsWhenTheBatchCounts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(10)))
		if _, ok := batcher.ReleasedAt(t.Context()); ok {
			t.Error("ReleasedAt of a context that is not ProcessBatch's says ok")
		}
		t0 := time.Now()
		var released, called []time.Time
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			derived, cancel := context.WithCancel(context.WithValue(ctx, valueKey{}, 1))
			defer cancel()
			at, ok := batcher.ReleasedAt(derived)
			if !ok {
				t.Error("ReleasedAt in ProcessBatch, through derived contexts, is not ok")
			}
			released, called = append(released, at), append(called, time.Now())
			return nil
		}).WithMaxBatchSize(1)
		enqueue(t, b, w, 3, 10)
		if err := b.Flush(bounded(t)); err != nil {
			t.Fatal(err)
		}
		if len(released) != 3 {
			t.Fatalf("%d batches, want 3", len(released))
		}
		for i, at := range released {
			if !at.Equal(called[i]) { // no time passes under synctest
				t.Errorf("batch %d: ReleasedAt %v, called at %v", i, at.Sub(t0), called[i].Sub(t0))
			}
			if i > 0 && at.Sub(released[i-1]) < time.Second {
				t.Errorf("batches %d and %d, each of the whole capacity, released %v apart", i-1, i, at.Sub(released[i-1]))
			}
		}
	})
}
