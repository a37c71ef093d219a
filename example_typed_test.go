package batcher_test

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// A watcher whose payloads are all of one type: ProcessBatch gets them as
// that type, with no type assertion, and enqueuing a payload of another type
// does not compile. Per-operation feedback (here Fail) works as on any
// Operation.
func ExampleNewTypedWatcher() {
	type Row struct {
		ID    int
		Email string
	}

	var mu sync.Mutex
	var inserted []int
	w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[Row]) error {
		mu.Lock()
		defer mu.Unlock()
		for _, op := range batch {
			row := op.Payload() // a Row
			if row.Email == "" {
				op.Fail(fmt.Errorf("row %d has no email", row.ID))
				continue
			}
			inserted = append(inserted, row.ID) // write the row here
		}
		return nil
	}).WithMaxBatchSize(100)

	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000))
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	var ops []*batcher.TypedOperation[Row]
	for i := range 4 {
		row := Row{ID: i, Email: fmt.Sprintf("user%d@example.com", i)}
		if i == 2 {
			row.Email = ""
		}
		op := batcher.NewTypedOperation(w, 1, row, true)
		ops = append(ops, op)
		if err := b.Enqueue(&op.Operation); err != nil {
			fmt.Println(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}
	slices.Sort(inserted)
	fmt.Println("inserted:", inserted)
	for _, op := range ops {
		if err := op.Err(); err != nil {
			fmt.Println("failed:", op.Payload().ID, err)
		}
	}
	// Output:
	// inserted: [0 1 3]
	// failed: 2 row 2 has no email
}

// A typed watcher may also be built on a type with a ProcessBatch method.
func ExampleNewTypedWatcherFor() {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	sum := &summer{}
	w := batcher.NewTypedWatcherFor[int](sum)
	for i := 1; i <= 10; i++ {
		if err := b.Enqueue(&batcher.NewTypedOperation(w, 1, i, true).Operation); err != nil {
			fmt.Println(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}
	fmt.Println("sum:", sum.total())
	// Output: sum: 55
}

// summer adds up the payloads of the batches it is given.
type summer struct {
	mu  sync.Mutex
	sum int
}

func (s *summer) ProcessBatch(ctx context.Context, batch []*batcher.TypedOperation[int]) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range batch {
		s.sum += op.Payload()
	}
	return nil
}

func (s *summer) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sum
}

// A listener gets the typed operation, and its payload, back from an
// event's untyped operations with AsTyped.
func ExampleAsTyped() {
	w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[string]) error {
		return fmt.Errorf("datastore down")
	}).WithMaxAttempts(1)
	b := batcher.NewBatcher()
	b.AddListener(func(e batcher.Event) {
		if e.Kind != batcher.Failed {
			return
		}
		for _, op := range e.Batch {
			if t, ok := batcher.AsTyped[string](op); ok {
				fmt.Println("failed:", t.Payload())
			}
		}
	})
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	if err := b.Enqueue(&batcher.NewTypedOperation(w, 1, "order-17", true).Operation); err != nil {
		fmt.Println(err)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}
	// Output: failed: order-17
}
