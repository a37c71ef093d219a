package batcher

import (
	"context"
	"math"
	"testing"
	"unsafe"
)

// NewTypedOperation sets up its Operation as NewOperation does, but for the
// payload, which points back at the TypedOperation.
func TestNewTypedOperationMatchesNewOperation(t *testing.T) {
	tw := NewTypedWatcher(func(context.Context, []*TypedOperation[int]) error { return nil })
	for _, cost := range []int{0, 1, 5, -1, math.MaxInt32, math.MaxInt32 + 1, math.MinInt32, math.MinInt32 - 1, math.MaxInt} {
		for _, batchable := range []bool{true, false} {
			typed := NewTypedOperation(tw, cost, 9, batchable)
			plain := NewOperation(tw.w, cost, nil, batchable)
			got, want := &typed.Operation, plain
			if got.watcher != want.watcher || got.cost != want.cost || got.actual != want.actual ||
				got.state.Load() != want.state.Load() || got.epoch != want.epoch {
				t.Errorf("cost %d, batchable %v: typed %+v, untyped %+v", cost, batchable, got, want)
			}
			if (got.ext.Load() == nil) != (want.ext.Load() == nil) {
				t.Errorf("cost %d: typed ext %v, untyped %v", cost, got.ext.Load(), want.ext.Load())
			} else if e := got.ext.Load(); e != nil && e.cost != want.ext.Load().cost {
				t.Errorf("cost %d: typed wide cost %d, untyped %d", cost, e.cost, want.ext.Load().cost)
			}
			if got.Cost() != want.Cost() || got.Batchable() != want.Batchable() {
				t.Errorf("cost %d: typed Cost/Batchable %d/%v, untyped %d/%v", cost, got.Cost(), got.Batchable(), want.Cost(), want.Batchable())
			}
			if got.payload != any(typed) {
				t.Errorf("cost %d: typed payload %v, want the TypedOperation", cost, got.payload)
			}
		}
	}
	// Every field of Operation is compared above; a field added later must
	// be too.
	if n := unsafe.Sizeof(Operation{}); n != 48 {
		t.Errorf("Operation is %d bytes; check that NewTypedOperation sets up its new fields as NewOperation does", n)
	}
}

// The typed layer's own work per batch, without the Batcher: checking each
// operation and handing the slice on, against an untyped ProcessBatch that
// asserts each payload's type itself. Batches of 100; ns/op is per batch.
func BenchmarkTypedLayer(b *testing.B) {
	type row struct {
		ID   int
		Name string
	}
	const n = 100
	b.Run("untyped", func(b *testing.B) {
		w := NewWatcher(nil)
		batch := make([]*Operation, n)
		for i := range batch {
			batch[i] = NewOperation(w, 1, row{ID: i}, true)
		}
		p := ProcessorFunc(func(ctx context.Context, batch []*Operation) error {
			s := 0
			for _, op := range batch {
				s += op.Payload().(row).ID
			}
			benchSum = s
			return nil
		})
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			_ = p.ProcessBatch(ctx, batch)
		}
	})
	b.Run("typed", func(b *testing.B) {
		tw := NewTypedWatcher(func(ctx context.Context, batch []*TypedOperation[row]) error {
			s := 0
			for _, op := range batch {
				s += op.Payload().ID
			}
			benchSum = s
			return nil
		})
		batch := make([]*Operation, n)
		for i := range batch {
			batch[i] = &NewTypedOperation(tw, 1, row{ID: i}, true).Operation
		}
		p := tw.w.p
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			_ = p.ProcessBatch(ctx, batch)
		}
	})
}

var benchSum int
