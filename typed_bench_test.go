package batcher_test

import (
	"context"
	"testing"

	"github.com/ratebatch/batcher"
)

// The typed layer against the untyped path it is built on, as
// BenchmarkEnqueue measures it (4 producers on 2 CPUs, batches of 100, a
// ProcessBatch that reads every payload), with a payload that is a value (a
// 24-byte struct, which the untyped Operation boxes in its interface) and
// one that is a pointer (which it does not). Alternate the two in one run to
// compare them:
//
//	go test -run '^$' -bench 'Payload/(typed|untyped)/value' -count 10

var benchRow = &row{ID: 1, Name: "n"}

func BenchmarkPayload(b *testing.B) {
	b.Run("untyped/value", func(b *testing.B) {
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			n := 0
			for _, op := range batch {
				n += op.Payload().(row).ID
			}
			sinkInt(n)
			return nil
		}).WithMaxBatchSize(100)
		benchOps(b, func(i int) *batcher.Operation {
			return batcher.NewOperation(w, 1, row{ID: i, Name: "n"}, true)
		})
	})
	b.Run("typed/value", func(b *testing.B) {
		w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[row]) error {
			n := 0
			for _, op := range batch {
				n += op.Payload().ID
			}
			sinkInt(n)
			return nil
		}).WithMaxBatchSize(100)
		benchOps(b, func(i int) *batcher.Operation {
			return &batcher.NewTypedOperation(w, 1, row{ID: i, Name: "n"}, true).Operation
		})
	})
	b.Run("untyped/pointer", func(b *testing.B) {
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			n := 0
			for _, op := range batch {
				n += op.Payload().(*row).ID
			}
			sinkInt(n)
			return nil
		}).WithMaxBatchSize(100)
		benchOps(b, func(int) *batcher.Operation { return batcher.NewOperation(w, 1, benchRow, true) })
	})
	b.Run("typed/pointer", func(b *testing.B) {
		w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[*row]) error {
			n := 0
			for _, op := range batch {
				n += op.Payload().ID
			}
			sinkInt(n)
			return nil
		}).WithMaxBatchSize(100)
		benchOps(b, func(int) *batcher.Operation { return &batcher.NewTypedOperation(w, 1, benchRow, true).Operation })
	})
}

var benchSink int

//go:noinline
func sinkInt(n int) { benchSink = n }

func benchOps(b *testing.B, newOp func(i int) *batcher.Operation) {
	bt := batcher.NewBatcher()
	if err := bt.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if err := bt.Enqueue(newOp(i)); err != nil {
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
