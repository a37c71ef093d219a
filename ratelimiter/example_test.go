package ratelimiter_test

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

func ExampleNewProvisioned() {
	// A datastore provisioned for 1000 request units a second.
	limiter := ratelimiter.NewProvisioned(1000)
	b := batcher.NewBatcher().WithRateLimiter(limiter)
	if err := b.Start(context.Background()); err != nil {
		fmt.Println("start:", err)
		return
	}

	var (
		mu      sync.Mutex
		written []string
	)
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		mu.Lock()
		defer mu.Unlock()
		for _, op := range batch {
			written = append(written, op.Payload().(string))
		}
		return nil
	})
	for _, doc := range []string{"carol", "alice", "dave", "bob"} {
		// Each write costs 10 request units.
		if err := b.Enqueue(batcher.NewOperation(w, 10, doc, true)); err != nil {
			fmt.Println("enqueue:", err)
		}
	}
	// An operation that costs more than the capacity could never go out.
	err := b.Enqueue(batcher.NewOperation(w, 1500, "huge", true))
	fmt.Println("too expensive:", errors.Is(err, batcher.ErrTooExpensive))

	// Shutdown releases what is buffered, through the limiter, and waits for
	// it to be processed.
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println("shutdown:", err)
	}
	mu.Lock()
	slices.Sort(written) // batches may run in any order
	fmt.Println("written:", written)
	mu.Unlock()
	fmt.Println("succeeded:", b.Stats().Succeeded)
	// Output:
	// too expensive: true
	// written: [alice bob carol dave]
	// succeeded: 4
}

func ExampleTokenBucket_Wait() {
	// 20 calls a second, at most 10 at once, for a client of an API.
	bucket := ratelimiter.NewTokenBucket(20, 10)
	if err := bucket.Start(context.Background()); err != nil {
		fmt.Println("start:", err)
		return
	}
	ctx := context.Background()

	// The bucket starts full: 10 calls may go at once.
	if err := bucket.Wait(ctx, 10); err == nil {
		fmt.Println("10 calls made")
	}
	// The next call waits for the bucket to refill (50ms).
	if err := bucket.Wait(ctx, 1); err == nil {
		fmt.Println("1 more call made")
	}
	// More than the burst can never be granted.
	err := bucket.Wait(ctx, 11)
	fmt.Println("11 at once:", errors.Is(err, batcher.ErrTooExpensive))

	// Wait gives up at once, taking nothing, when the calls could not be
	// made before the deadline: 10 more take half a second to refill.
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	err = bucket.Wait(short, 10)
	fmt.Println("10 within 1ms:", errors.Is(err, ratelimiter.ErrWouldExceedDeadline))
	// Output:
	// 10 calls made
	// 1 more call made
	// 11 at once: true
	// 10 within 1ms: true
}
