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

// The contract's corners: what a capacity drop does to operations that come
// back for another attempt, or that are accepted while it happens; what
// Flush waits for; extreme capacities and costs.

// An operation that ProcessBatch sends back (a retry or a throttle, for the
// operation or the whole batch) after the maximum capacity fell below its
// cost could never go out again: it fails with ErrTooExpensive, and the
// operations of its watcher behind it go on (G7, G4).
func TestRetriedOperationAboveALoweredMaxCapacityFails(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer func(big *batcher.Operation) error
	}{
		{"Operation.Retry", func(op *batcher.Operation) error { op.Retry(errors.New("again")); return nil }},
		{"Operation.Throttle", func(op *batcher.Operation) error { op.Throttle(0, errors.New("429")); return nil }},
		{"Retry", func(*batcher.Operation) error { return batcher.Retry(errors.New("again")) }},
		{"Throttle", func(*batcher.Operation) error { return batcher.Throttle(0, errors.New("429")) }},
	} {
		for _, late := range []bool{false, true} {
			name := c.name
			if late {
				name += ", the drop seen after the batch returned"
			}
			t.Run(name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					lim := ratelimiter.NewProvisioned(100)
					b := batcher.NewBatcher().WithRateLimiter(lim)
					ev := &events{}
					b.AddListener(ev.add)
					start(t, b)
					returned := make(chan struct{})
					w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
						if batch[0].Cost() != 80 {
							return nil
						}
						if err := lim.SetCapacity(50); err != nil {
							t.Error(err)
						}
						if !late {
							// The Batcher has read the new maximum before
							// the batch comes back.
							time.Sleep(300 * time.Millisecond)
						}
						defer close(returned)
						return c.answer(batch[0])
					}).WithMaxBatchSize(1)
					big := enqueue(t, b, w, 1, 80)[0]
					<-returned
					small := enqueue(t, b, w, 1, 10)[0]
					if err := waitFor(t, big); !errors.Is(err, batcher.ErrTooExpensive) {
						t.Errorf("the operation of cost 80 ended with %v, want ErrTooExpensive", err)
					}
					if err := waitFor(t, small); err != nil {
						t.Errorf("the operation of cost 10 behind it: %v", err)
					}
					if err := shutdown(t, b); err != nil {
						t.Errorf("Shutdown: %v", err)
					}
					if failed := ev.of(batcher.Failed); len(failed) != 1 || failed[0].Batch[0] != big {
						t.Errorf("failed events %v, want one for the operation of cost 80", failed)
					}
					if st := b.Stats(); st.Failed != 1 || st.Succeeded != 1 || st.Buffered != 0 || st.InFlight != 0 {
						t.Errorf("Stats %+v, want 1 failed, 1 succeeded, nothing left", st)
					}
				})
			})
		}
	}
}
