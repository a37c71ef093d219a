package batcher_test

import (
	"context"
	"sync"
	"testing"

	"github.com/ratebatch/batcher"
)

// BenchmarkEnqueue measures the hot path with no rate limiter: 4 producers
// per CPU enqueue cost-1 operations for one watcher with batches of 100; the
// time and allocations per operation include creating it and processing it.
func BenchmarkEnqueue(b *testing.B)  { benchEnqueue(b, 2) }
func BenchmarkEnqueue1(b *testing.B) { benchEnqueue(b, 1) }

func benchEnqueue(b *testing.B, par int) {
	bt := batcher.NewBatcher()
	if err := bt.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil }).WithMaxBatchSize(100)
	b.ReportAllocs()
	b.SetParallelism(par)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := bt.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if err := bt.Shutdown(context.Background()); err != nil {
		b.Fatal(err)
	}
}

var _ = sync.Mutex{}
