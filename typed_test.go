package batcher_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
)

type row struct {
	ID   int
	Name string
}

// A typed watcher hands ProcessBatch the payloads as enqueued, as T, and the
// per-operation feedback works as it does on an untyped operation.
func TestTypedPayloadsAndFeedback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu       sync.Mutex
			seen     []row
			attempts = map[int][]int{}
		)
		w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[row]) error {
			mu.Lock()
			defer mu.Unlock()
			for _, op := range batch {
				r := op.Payload() // a row: no type assertion
				seen = append(seen, r)
				attempts[r.ID] = append(attempts[r.ID], op.Attempt())
				switch r.ID {
				case 1:
					if op.Attempt() == 1 {
						op.Retry(errors.New("once more"))
					}
				case 2:
					op.Fail(errors.New("bad row"))
				case 3:
					op.SetActualCost(7)
				}
			}
			return nil
		}).WithMaxBatchSize(10).WithRetryBackoff(time.Millisecond, time.Millisecond)

		b := batcher.NewBatcher()
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		var ops []*batcher.TypedOperation[row]
		for i := range 4 {
			op := batcher.NewTypedOperation(w, 1, row{i, "r"}, true)
			ops = append(ops, op)
			if err := b.Enqueue(&op.Operation); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		for i, op := range ops {
			err := op.Wait(context.Background())
			if (i == 2) != (err != nil) {
				t.Errorf("op %d: Wait = %v", i, err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 5 {
			t.Fatalf("ProcessBatch saw %v, want 5 payloads (op 1 twice)", seen)
		}
		for _, r := range seen {
			if r.Name != "r" || r.ID < 0 || r.ID > 3 {
				t.Errorf("payload %+v is not one that was enqueued", r)
			}
		}
		if !slices.Equal(attempts[1], []int{1, 2}) || !slices.Equal(attempts[0], []int{1}) {
			t.Errorf("attempts = %v, want op 1 tried twice and the others once", attempts)
		}
		if c, ok := ops[3].ActualCost(); !ok || c != 7 {
			t.Errorf("ActualCost = %d, %v; want 7, true", c, ok)
		}
		if got := ops[0].Cost(); got != 1 {
			t.Errorf("Cost = %d, want 1", got)
		}
		if st := b.Stats(); st.Succeeded != 3 || st.Failed != 1 {
			t.Errorf("Stats = %+v, want 3 succeeded, 1 failed", st)
		}
	})
}

// An operation made with NewOperation for a typed watcher's Watcher fails
// with ErrNotTyped instead of reaching ProcessBatch; the typed operations of
// its batch go through.
func TestTypedWatcherRefusesUntypedOperation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu   sync.Mutex
			seen []string
		)
		w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[string]) error {
			mu.Lock()
			defer mu.Unlock()
			for _, op := range batch {
				seen = append(seen, op.Payload())
			}
			return nil
		})
		b := batcher.NewBatcher()
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		a := batcher.NewTypedOperation(w, 1, "a", true)
		// An untyped operation whose payload is another typed operation, and
		// one with a payload of the right type: neither is a TypedOperation.
		odd1 := batcher.NewOperation(w.Watcher(), 1, a, true)
		odd2 := batcher.NewOperation(w.Watcher(), 1, "c", true)
		c := batcher.NewTypedOperation(w, 1, "d", true)
		for _, op := range []*batcher.Operation{&a.Operation, odd1, odd2, &c.Operation} {
			if err := b.Enqueue(op); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, op := range []*batcher.Operation{odd1, odd2} {
			if err := op.Err(); !errors.Is(err, batcher.ErrNotTyped) {
				t.Errorf("untyped operation's Err = %v, want ErrNotTyped", err)
			}
		}
		if a.Err() != nil || c.Err() != nil {
			t.Errorf("typed operations failed: %v, %v", a.Err(), c.Err())
		}
		mu.Lock()
		defer mu.Unlock()
		slices.Sort(seen)
		if !slices.Equal(seen, []string{"a", "d"}) {
			t.Errorf("ProcessBatch saw %q, want [a d]", seen)
		}
	})
}

func TestAsTyped(t *testing.T) {
	w := batcher.NewTypedWatcher(func(context.Context, []*batcher.TypedOperation[int]) error { return nil })
	op := batcher.NewTypedOperation(w, 1, 42, true)
	if got, ok := batcher.AsTyped[int](&op.Operation); !ok || got != op || got.Payload() != 42 {
		t.Errorf("AsTyped[int] = %v, %v; want the operation", got, ok)
	}
	if _, ok := batcher.AsTyped[string](&op.Operation); ok {
		t.Error("AsTyped[string] of a TypedOperation[int] succeeded")
	}
	plain := batcher.NewOperation(w.Watcher(), 1, op, true)
	if _, ok := batcher.AsTyped[int](plain); ok {
		t.Error("AsTyped of an untyped operation succeeded")
	}
	if _, ok := batcher.AsTyped[int](nil); ok {
		t.Error("AsTyped(nil) succeeded")
	}
}

// A typed watcher's settings are its Watcher's, are checked at Enqueue, and
// a nil function is refused as NewWatcher's is.
func TestTypedWatcherSettings(t *testing.T) {
	w := batcher.NewTypedWatcher(func(context.Context, []*batcher.TypedOperation[int]) error { return nil }).
		WithMaxAttempts(5).WithMaxBatchSize(7).WithMaxOperationTime(time.Second).WithMaxConcurrentBatches(2).
		WithRetryBackoff(time.Millisecond, time.Second)
	u := w.Watcher()
	if u.MaxAttempts() != 5 || u.MaxBatchSize() != 7 || u.MaxOperationTime() != time.Second || u.MaxConcurrentBatches() != 2 {
		t.Errorf("settings not passed on: %d %d %v %d", u.MaxAttempts(), u.MaxBatchSize(), u.MaxOperationTime(), u.MaxConcurrentBatches())
	}

	b := batcher.NewBatcher()
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bad := batcher.NewTypedWatcher[int](nil)
	if err := b.Enqueue(&batcher.NewTypedOperation(bad, 1, 1, true).Operation); !errors.Is(err, batcher.ErrInvalidSetting) {
		t.Errorf("Enqueue for a nil function = %v, want ErrInvalidSetting", err)
	}
	if err := b.Enqueue(&batcher.NewTypedOperation[int](nil, 1, 1, true).Operation); !errors.Is(err, batcher.ErrNoWatcher) {
		t.Errorf("Enqueue without a watcher = %v, want ErrNoWatcher", err)
	}
	neg := batcher.NewTypedWatcher(func(context.Context, []*batcher.TypedOperation[int]) error { return nil }).WithMaxBatchSize(-1)
	if err := b.Enqueue(&batcher.NewTypedOperation(neg, 1, 1, true).Operation); !errors.Is(err, batcher.ErrInvalidSetting) {
		t.Errorf("Enqueue with MaxBatchSize -1 = %v, want ErrInvalidSetting", err)
	}
	if err := b.Enqueue(&batcher.NewTypedOperation(w, -1, 1, true).Operation); !errors.Is(err, batcher.ErrNegativeCost) {
		t.Errorf("Enqueue with cost -1 = %v, want ErrNegativeCost", err)
	}
}

// Unbatchable typed operations go in batches of their own.
func TestTypedUnbatchable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu    sync.Mutex
			sizes []int
		)
		w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[int]) error {
			mu.Lock()
			sizes = append(sizes, len(batch))
			mu.Unlock()
			return nil
		})
		b := batcher.NewBatcher()
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if err := b.Enqueue(&batcher.NewTypedOperation(w, 1, i, false).Operation); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(sizes, []int{1, 1, 1}) {
			t.Errorf("batch sizes = %v, want [1 1 1]", sizes)
		}
	})
}

// A payload of the wrong type does not compile: testdata/typedmismatch
// passes a string to a TypedWatcher[int]'s NewTypedOperation, and reads a
// TypedOperation[int]'s payload into a string.
func TestTypedWrongPayloadDoesNotCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program with the go command; skipped with -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH:", err)
	}
	cmd := exec.Command(goTool, "build", "-o", os.DevNull, "./testdata/typedmismatch")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("testdata/typedmismatch compiled; a wrong payload type must be a compile error")
	}
	msg := string(out)
	for _, want := range []string{
		`cannot use "one" (untyped string constant) as int value in argument to batcher.NewTypedOperation`,
		`cannot use op.Payload() (value of type int) as string value in assignment`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("go build's output lacks %q:\n%s", want, msg)
		}
	}
}
