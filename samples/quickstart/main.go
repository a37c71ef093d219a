// Command quickstart is the README's example, whole: orders written to a
// datastore that sells 1,000 cost units a second, never faster.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// An order is one write; its payload type is checked at compile time.
type order struct {
	ID    int
	Total int
}

// errThrottled stands for the datastore's "429 Too Many Requests".
var errThrottled = errors.New("429 too many requests")

// save stands for your datastore client's write. It returns what the write
// really cost (a Cosmos DB request charge, say).
func save(ctx context.Context, o order) (cost int, err error) {
	return 10, ctx.Err()
}

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer) error {
	b := batcher.NewBatcher().
		WithRateLimiter(ratelimiter.NewProvisioned(1000)). // 1,000 units a second
		WithFlushInterval(100 * time.Millisecond)
	b.AddListener(batcher.NewLogListener(slog.Default()).Listen) // failures, throttles
	if err := b.Start(ctx); err != nil {
		return err // names every bad setting
	}

	w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[order]) error {
		for _, op := range batch {
			cost, err := save(ctx, op.Payload())
			switch {
			case errors.Is(err, errThrottled):
				op.Throttle(time.Second, err) // its watcher waits, then it is retried
			case err != nil:
				op.Fail(err) // a Failed event; op.Wait returns err
			default:
				op.SetActualCost(cost) // the limiter counts what it really cost
			}
		}
		return nil
	}).WithMaxBatchSize(50)

	start := time.Now()
	for i := range 100 {
		op := batcher.NewTypedOperation(w, 10, order{ID: i, Total: 5 * i}, true)
		if err := b.EnqueueContext(ctx, &op.Operation); err != nil {
			return err
		}
	}
	if err := b.Shutdown(ctx); err != nil { // drains through the limiter
		return err
	}
	s := b.Stats()
	fmt.Fprintf(out, "stored %d of 100 orders, %d failed, in %.1fs\n",
		s.Succeeded, s.Failed, time.Since(start).Seconds())
	return nil
}
