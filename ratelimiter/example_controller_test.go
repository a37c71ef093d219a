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

func ExampleNewController() {
	// A container configured for 1000 request units a second, which may
	// really serve less (another service writes to it too). The Batcher
	// tells the Controller how each batch went: no wiring.
	lim := ratelimiter.NewController(1000). // never more than 1000 RU/s
						WithInitial(1000).       // start there (the default starts at 1/32 and doubles)
						WithFloor(50).           // never less than 50 RU/s
						WithWindow(time.Second). // one cut per second at most (the default)
						WithBackoff(0.05)        // cut to 95% of what was served (the default)
	b := batcher.NewBatcher().WithRateLimiter(lim)
	var (
		mu      sync.Mutex
		changes []string
	)
	b.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.CapacityChanged {
			mu.Lock()
			changes = append(changes, fmt.Sprint(e.Msg, " to ", e.Val))
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
	// The throttle cuts the capacity at once: nothing was served in the
	// datastore's window, so to the floor. (Wait for the event, which the
	// Controller's own goroutine emits.)
	for {
		mu.Lock()
		n := len(changes)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
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
	// first change: throttled to 50
}
