package batcher_test

import (
	"context"
	"fmt"
	"sync/atomic"
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

// BenchmarkWatchers is BenchmarkEnqueue over W watchers, each producer
// going round them in turn, with the buffer as a second dimension: the
// release scheduler's cost must not grow with W (compare the W rows with
// benchstat). Each operation's time and allocations include creating it.
func BenchmarkWatchers(b *testing.B) {
	for _, c := range []struct{ w, buffer int }{
		{1, 10_000}, {100, 10_000}, {10_000, 10_000}, {10_000, 1_000_000}, {100_000, 1_000_000},
	} {
		b.Run(fmt.Sprintf("W=%d/buffer=%d", c.w, c.buffer), func(b *testing.B) {
			bt := batcher.NewBatcher().WithBufferSize(c.buffer)
			if err := bt.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			ws := make([]*batcher.Watcher, c.w)
			for i := range ws {
				ws[i] = batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil }).WithMaxBatchSize(100)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(2)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1)) * 7919 // producers start apart
				for pb.Next() {
					if err := bt.Enqueue(batcher.NewOperation(ws[i%len(ws)], 1, nil, true)); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			if err := bt.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			st := bt.Stats()
			b.ReportMetric(float64(st.Released)/float64(max(st.Batches, 1)), "ops/batch")
			if err := bt.Shutdown(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
	}
}
