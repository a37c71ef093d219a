package batcher_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Panics are contained: one in ProcessBatch fails its batch, one in a
// listener is reported to the others; the Batcher goes on either way.

var errBoom = errors.New("boom")

// panicky panics in the first ProcessBatch call, with value, after asking
// for a retry of its first operation (which the panic overrides).
func panickyBatch(ctx context.Context, batch []*batcher.Operation, value any) error {
	batch[0].Retry(errors.New("please retry"))
	panic(value)
}

func TestAPanicInProcessBatchFailsItsBatchAndTheBatcherGoesOn(t *testing.T) {
	for _, value := range []any{"a string", errBoom} {
		t.Run(fmt.Sprint(value), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000)).WithMaxConcurrentBatches(1)
				ev := &events{}
				b.AddListener(ev.add)
				start(t, b)
				var mu sync.Mutex
				calls := 0
				w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
					mu.Lock()
					calls++
					first := calls == 1
					mu.Unlock()
					if first {
						return panickyBatch(ctx, batch, value)
					}
					return nil
				}).WithMaxBatchSize(5)
				first := enqueue(t, b, w, 5, 1)
				for i, op := range first {
					err := waitFor(t, op)
					if !errors.Is(err, batcher.ErrPanic) {
						t.Fatalf("op %d of the panicking batch ended with %v, want an error wrapping ErrPanic", i, err)
					}
					var pe *batcher.PanicError
					if !errors.As(err, &pe) || pe.Value != value {
						t.Fatalf("op %d: %v is not a *PanicError with the value %v", i, err, value)
					}
					if !strings.Contains(string(pe.Stack), "panickyBatch") {
						t.Errorf("the stack does not show where it panicked:\n%s", pe.Stack)
					}
					if verr, ok := value.(error); ok && !errors.Is(err, verr) {
						t.Errorf("op %d: %v does not wrap the error the panic carried", i, err)
					}
					if !strings.Contains(err.Error(), fmt.Sprint(value)) {
						t.Errorf("op %d: the error %q does not say what the panic carried", i, err)
					}
				}
				// The slot freed (one slot in all), and the Batcher goes on.
				second := enqueue(t, b, w, 5, 1)
				for i, op := range second {
					if err := waitFor(t, op); err != nil {
						t.Errorf("op %d after the panic: %v", i, err)
					}
				}
				if err := shutdown(t, b); err != nil {
					t.Errorf("Shutdown: %v", err)
				}
				failed := ev.of(batcher.Failed)
				if len(failed) != 5 {
					t.Fatalf("%d failed events, want one for each of the 5 operations", len(failed))
				}
				for _, e := range failed {
					if !errors.Is(e.Err, batcher.ErrPanic) {
						t.Errorf("failed event with %v, want ErrPanic", e.Err)
					}
				}
				if st := b.Stats(); st.Failed != 5 || st.Succeeded != 5 || st.Retried != 0 {
					t.Errorf("Stats %+v, want 5 failed, 5 succeeded, no retry", st)
				}
			})
		})
	}
}

// A listener that panics neither takes the Batcher down nor keeps the event
// from the listeners after it. Its first panic is reported to the others,
// once, as a ListenerPanicked event; later ones are recovered silently.
func TestAPanickingListenerIsReportedOnceAndSkipsNoOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithEmitBatch()
		before, after := &events{}, &events{}
		b.AddListener(before.add)
		bad := b.AddListener(func(e batcher.Event) {
			if e.Kind == batcher.BatchReleased || e.Kind == batcher.Failed {
				panic("listener bug")
			}
		})
		b.AddListener(after.add)
		start(t, b)
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			if batch[0].Payload() == 0 {
				return errBoom // each op is reported in a Failed event
			}
			return nil
		}).WithMaxBatchSize(1)
		ops := enqueue(t, b, w, 3, 1)
		for i, op := range ops {
			err := waitFor(t, op)
			if (i == 0) != errors.Is(err, errBoom) {
				t.Errorf("op %d ended with %v", i, err)
			}
		}
		if err := shutdown(t, b); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for name, ev := range map[string]*events{"before": before, "after": after} {
			if n := ev.count(batcher.BatchReleased); n != 3 {
				t.Errorf("the listener %s the panicking one got %d batch events, want 3", name, n)
			}
			if n := ev.count(batcher.Failed); n != 1 {
				t.Errorf("the listener %s the panicking one got %d failed events, want 1", name, n)
			}
			reports := ev.of(batcher.ListenerPanicked)
			if len(reports) != 1 {
				t.Fatalf("the listener %s the panicking one got %d reports, want 1 (it panicked 4 times)", name, len(reports))
			}
			r := reports[0]
			var pe *batcher.PanicError
			if r.Val != bad || !errors.Is(r.Err, batcher.ErrPanic) || !errors.As(r.Err, &pe) || pe.Value != "listener bug" || len(pe.Stack) == 0 {
				t.Errorf("report %v (Val %d), want listener %d's panic, with its value and stack", r, r.Val, bad)
			}
		}
	})
}

// A listener's panic while it reports another's is contained too, and the
// report reaches every other listener, the first one included.
func TestListenersThatAllPanicAreEachReportedOnce(t *testing.T) {
	var l batcher.Listeners
	var mu sync.Mutex
	got := map[int][]batcher.EventKind{}
	ids := make([]int, 3)
	for i := range ids {
		ids[i] = l.AddListener(func(e batcher.Event) {
			mu.Lock()
			got[i] = append(got[i], e.Kind)
			mu.Unlock()
			panic(i)
		})
	}
	l.Emit(batcher.Event{Kind: batcher.Paused})
	l.Emit(batcher.Event{Kind: batcher.Resumed})
	for i := range ids {
		count := map[batcher.EventKind]int{}
		for _, k := range got[i] {
			count[k]++
		}
		if count[batcher.Paused] != 1 || count[batcher.Resumed] != 1 || count[batcher.ListenerPanicked] != 2 || len(got[i]) != 4 {
			t.Errorf("listener %d got %v, want pause, resume and the other two's reports", i, got[i])
		}
	}
}
