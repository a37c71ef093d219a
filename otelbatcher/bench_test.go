package otelbatcher_test

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/otelbatcher"
)

// What the measuring costs on the hot path, against the same path
// unmeasured, with the real SDK behind the Meter: Enqueue (4 producers on 2
// CPUs, batches of 100, as the root package's BenchmarkEnqueue), and a
// wrapped processor called directly with a batch of 100. Alternate the
// sub-benchmarks in one run to compare them.

func BenchmarkEnqueue(b *testing.B) {
	for _, measured := range []bool{false, true} {
		name := "plain"
		if measured {
			name = "measured"
		}
		b.Run(name, func(b *testing.B) {
			provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			defer provider.Shutdown(context.Background())
			bt := batcher.NewBatcher()
			m, err := otelbatcher.New(bt, provider.Meter("bench"))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			fn := func(context.Context, []*batcher.Operation) error { return nil }
			if measured {
				fn = m.Func(fn)
			}
			w := batcher.NewWatcher(fn).WithMaxBatchSize(100)
			enqueue := bt.Enqueue
			if measured {
				enqueue = m.Enqueue
			}
			if err := bt.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(2)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
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
		})
	}
}

func BenchmarkProcessBatch(b *testing.B) {
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer provider.Shutdown(context.Background())
	m, err := otelbatcher.New(batcher.NewBatcher(), provider.Meter("bench"))
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	w := batcher.NewWatcher(nil)
	batch := make([]*batcher.Operation, 100)
	for i := range batch {
		batch[i] = batcher.NewOperation(w, 1, nil, true)
	}
	fn := func(context.Context, []*batcher.Operation) error { return nil }
	for _, c := range []struct {
		name string
		fn   func(context.Context, []*batcher.Operation) error
	}{{"plain", fn}, {"wrapped", m.Func(fn)}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				_ = c.fn(ctx, batch)
			}
		})
	}
}
