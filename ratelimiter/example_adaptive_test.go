package ratelimiter_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

func ExampleNewAdaptive() {
	// A container provisioned for 1000 request units a second, which
	// another service also writes to: grant less after each throttle.
	lim := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1000))
	b := batcher.NewBatcher().WithRateLimiter(lim) // the Batcher tells it of throttles

	var (
		mu      sync.Mutex
		changes []string
	)
	b.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.CapacityChanged {
			mu.Lock()
			changes = append(changes, e.String())
			mu.Unlock()
		}
	})
	if err := b.Start(context.Background()); err != nil {
		fmt.Println("start:", err)
		return
	}

	var once sync.Once
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		throttle := false
		once.Do(func() { throttle = true })
		if throttle {
			// The datastore answered 429 with a retry-after of 10ms.
			return batcher.Throttle(10*time.Millisecond, errors.New("429"))
		}
		return nil
	})
	for i := range 5 {
		if err := b.Enqueue(batcher.NewOperation(w, 10, i, true)); err != nil {
			fmt.Println("enqueue:", err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println("shutdown:", err)
	}
	fmt.Println("succeeded:", b.Stats().Succeeded, "throttled:", b.Stats().Throttled)
	mu.Lock()
	fmt.Println("first change:", changes[0])
	mu.Unlock()
	// Output:
	// succeeded: 5 throttled: 1
	// first change: capacity val=800 msg=throttled
}
