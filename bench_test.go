package batcher_test

import (
	"context"
	"testing"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// The hot path, Enqueue to the end of ProcessBatch, with 4 producer
// goroutines on 2 CPUs (SetParallelism(2)): cost-1 operations for one
// watcher with batches of 100. Time and allocations per operation include
// creating it. cmd/batchbench measures the same path end to end; these give
// benchstat a handle on it.

func BenchmarkEnqueue(b *testing.B) {
	benchEnqueue(b, batcher.NewBatcher())
}

func BenchmarkEnqueueEager(b *testing.B) {
	benchEnqueue(b, batcher.NewBatcher().WithEagerRelease().WithMaxConcurrentBatches(4))
}

// With a limiter that never holds releases back: the cost of the ledger and
// the pacing.
func BenchmarkEnqueueProvisioned(b *testing.B) {
	benchEnqueue(b, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1<<30)))
}

func benchEnqueue(b *testing.B, bt *batcher.Batcher) {
	if err := bt.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil }).WithMaxBatchSize(100)
	b.ReportAllocs()
	b.SetParallelism(2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := bt.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if err := bt.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if err := bt.Shutdown(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkNewOperation is the floor under BenchmarkEnqueue: only creating
// the operations, from the same number of goroutines. Compare -cpu 1,2.
func BenchmarkNewOperation(b *testing.B) {
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
	b.ReportAllocs()
	b.SetParallelism(2)
	b.RunParallel(func(pb *testing.PB) {
		var keep [64]*batcher.Operation // as if the caller held on to them a while
		i := 0
		for pb.Next() {
			keep[i%len(keep)] = batcher.NewOperation(w, 1, nil, true)
			i++
		}
	})
}
