package batcher_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// A bulk write to a datastore provisioned for 1,000 units a second: each
// write costs 10, batches hold up to 50, and Shutdown drains what is left
// through the limiter.
func Example() {
	limiter := ratelimiter.NewProvisioned(1000)
	b := batcher.NewBatcher().WithRateLimiter(limiter).WithFlushInterval(100 * time.Millisecond)
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}

	var mu sync.Mutex
	written := 0
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		// Write the batch to the datastore here.
		mu.Lock()
		written += len(batch)
		mu.Unlock()
		return nil
	}).WithMaxBatchSize(50).WithMaxAttempts(3)

	for i := range 120 {
		if err := b.Enqueue(batcher.NewOperation(w, 10, i, true)); err != nil {
			fmt.Println(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}
	st := b.Stats()
	fmt.Println("written:", written, "succeeded:", st.Succeeded, "failed:", st.Failed)
	// Output: written: 120 succeeded: 120 failed: 0
}

func ExampleBatcher_Shutdown() {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	var mu sync.Mutex
	var flushed []int
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		mu.Lock()
		defer mu.Unlock()
		for _, op := range batch {
			flushed = append(flushed, op.Payload().(int))
		}
		return nil
	})
	for i := range 3 {
		b.Enqueue(batcher.NewOperation(w, 1, i, true))
	}
	// Shutdown releases what is buffered and waits for it.
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}
	slices.Sort(flushed)
	fmt.Println("flushed", flushed)
	fmt.Println(errors.Is(b.Enqueue(batcher.NewOperation(w, 1, 3, true)), batcher.ErrClosed))
	// Output:
	// flushed [0 1 2]
	// true
}

// ProcessBatch says how each operation went: here the datastore refused one
// document for good and throttled another, which is retried after the pause.
func ExampleOperation_Fail() {
	b := batcher.NewBatcher().WithPauseTime(10 * time.Millisecond)
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	var mu sync.Mutex
	throttled := false
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		mu.Lock()
		defer mu.Unlock()
		for _, op := range batch {
			switch op.Payload() {
			case "bad":
				op.Fail(errors.New("document too large"))
			case "busy":
				if !throttled {
					throttled = true
					op.Throttle(5*time.Millisecond, errors.New("429 too many requests"))
				}
			}
			op.SetActualCost(5) // what the datastore charged
		}
		return nil
	})
	ops := map[string]*batcher.Operation{}
	for _, name := range []string{"good", "bad", "busy"} {
		ops[name] = batcher.NewOperation(w, 5, name, true)
		b.Enqueue(ops[name])
	}
	b.Shutdown(context.Background())
	for _, name := range []string{"good", "bad", "busy"} {
		fmt.Printf("%s: %v (attempts: %d)\n", name, ops[name].Wait(context.Background()), ops[name].Attempt())
	}
	// Output:
	// good: <nil> (attempts: 1)
	// bad: document too large (attempts: 1)
	// busy: <nil> (attempts: 2)
}

// Listeners see what the Batcher does, as typed events.
func ExampleBatcher_AddListener() {
	b := batcher.NewBatcher()
	var mu sync.Mutex
	kinds := map[batcher.EventKind]int{}
	b.AddListener(func(e batcher.Event) {
		mu.Lock()
		kinds[e.Kind]++
		mu.Unlock()
	})
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		return errors.New("datastore unreachable")
	}).WithMaxAttempts(1)
	b.Enqueue(batcher.NewOperation(w, 1, nil, true))
	b.Shutdown(context.Background())
	mu.Lock()
	fmt.Println(batcher.Failed, kinds[batcher.Failed], batcher.ShutdownDone, kinds[batcher.ShutdownDone])
	mu.Unlock()
	// Output: failed 1 shutdown 1
}

// ProcessBatch learns when its batch was released: the moment the rate
// limiting counts it from. The time until the call started is how long the
// batch waited for its goroutine.
func ExampleReleasedAt() {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		released, ok := batcher.ReleasedAt(ctx)
		waited := time.Since(released)
		fmt.Println("released:", ok, "waited less than a second:", waited >= 0 && waited < time.Second)
		return nil
	})
	if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
		fmt.Println(err)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}
	// Output: released: true waited less than a second: true
}

// A panic in ProcessBatch fails its batch's operations with a *PanicError,
// which carries the panic's value and stack; the Batcher goes on.
func ExamplePanicError() {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		if batch[0].Payload() == "bug" {
			var m map[string]int
			//lint:ignore SA5000 the example panics on purpose
			m["x"] = 1 // panics: assignment to entry in nil map
		}
		return nil
	}).WithMaxBatchSize(1)
	bug := batcher.NewOperation(w, 1, "bug", true)
	fine := batcher.NewOperation(w, 1, "fine", true)
	b.Enqueue(bug)
	b.Enqueue(fine)
	b.Shutdown(context.Background())

	err := bug.Err()
	var pe *batcher.PanicError
	fmt.Println(errors.Is(err, batcher.ErrPanic), errors.As(err, &pe), len(pe.Stack) > 0)
	fmt.Println(err)
	fmt.Println("fine:", fine.Err())
	// Output:
	// true true true
	// batcher: ProcessBatch panicked: assignment to entry in nil map
	// fine: <nil>
}

// Interactive writes and a bulk load share one capacity: the interactive
// watcher's class goes first while capacity is short, and the bulk load,
// whose batches go in a lower class, keeps a guaranteed 20% of what is
// released; within a class, weights share the rest.
func ExampleWatcher_WithPriority() {
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000))
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	var mu sync.Mutex
	written := map[string]int{}
	write := func(kind string) func(context.Context, []*batcher.Operation) error {
		return func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			written[kind] += len(batch)
			return nil
		}
	}
	interactive := batcher.NewWatcher(write("interactive")).WithPriority(1)
	bulk := batcher.NewWatcher(write("bulk")).WithGuaranteedShare(0.2).WithMaxBatchSize(100)
	tenantA := batcher.NewWatcher(write("tenant A")).WithWeight(3) // of priority 0, like bulk
	for range 3 {
		b.Enqueue(batcher.NewOperation(interactive, 1, nil, true))
		b.Enqueue(batcher.NewOperation(bulk, 1, nil, true))
		b.Enqueue(batcher.NewOperation(tenantA, 1, nil, true))
	}
	b.Shutdown(context.Background())
	fmt.Println(written["interactive"], written["bulk"], written["tenant A"])
	// Output:
	// 3 3 3
}
