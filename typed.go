package batcher

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"
)

// ErrNotTyped ends an operation that reached a [TypedWatcher]'s
// ProcessBatch without having been made by [NewTypedOperation]: one made
// with [NewOperation] for the watcher returned by [TypedWatcher.Watcher]. Its
// payload could be of any type, so it is failed rather than handed over.
var ErrNotTyped = errors.New("batcher: operation for a TypedWatcher was not made by NewTypedOperation")

// A TypedOperation is an [Operation] whose payload is of type T. Make it with
// [NewTypedOperation] for a [TypedWatcher] of the same T, enqueue it as
// `b.Enqueue(&op.Operation)`, and read its payload in ProcessBatch with
// [TypedOperation.Payload], which returns a T: no type assertion is written,
// and a payload of the wrong type is a compile error.
//
// It embeds the Operation, so everything an Operation does, it does: Cost,
// Attempt, Done, Wait and Err, and during ProcessBatch the per-operation
// feedback Retry, Throttle, Fail and SetActualCost. Events carry the
// embedded *Operation; [AsTyped] gives the TypedOperation back.
//
// The payload is stored in the TypedOperation itself, so a payload that is
// not a pointer costs no allocation of its own, as it does in an Operation's
// interface-typed payload. The untyped [Operation.Payload] of the embedded
// Operation returns the *TypedOperation[T].
//
// It is safe for concurrent use as an Operation is. The zero value has no
// watcher, and Enqueue refuses it; make one with NewTypedOperation.
type TypedOperation[T any] struct {
	Operation
	value T
}

// NewTypedOperation returns an operation for watcher w that costs cost units
// of the rate limiter's capacity and carries payload. If batchable is false
// it is always released in a batch of its own. It is [NewOperation] with a
// typed payload: Enqueue checks w and cost the same way (a nil w is refused
// with [ErrNoWatcher]).
func NewTypedOperation[T any](w *TypedWatcher[T], cost int, payload T, batchable bool) *TypedOperation[T] {
	op := &TypedOperation[T]{value: payload}
	if w != nil {
		op.watcher = w.w
	}
	// As NewOperation does; typed_internal_test.go checks that the two agree.
	op.cost = int32(cost)
	if cost <= wideCost || cost > math.MaxInt32 {
		op.cost = wideCost
		op.ext.Store(&opExt{cost: cost})
	}
	if !batchable {
		op.state.Store(opSingle)
	}
	op.payload = op // lets the typed processor tell its own operations (see typedOf)
	return op
}

// Payload returns the operation's payload.
func (op *TypedOperation[T]) Payload() T { return op.value }

// AsTyped returns op as the TypedOperation[T] it is, if it was made by
// NewTypedOperation with payload type T; otherwise nil and false. Listeners
// use it to read the payload of a typed operation an [Event] carries.
func AsTyped[T any](op *Operation) (*TypedOperation[T], bool) {
	if op == nil {
		return nil, false
	}
	return typedOf[T](op)
}

// typedOf returns the TypedOperation[T] that op is embedded in, if any. Each
// one's payload points back at it, and nothing else can make an Operation
// whose payload is a *TypedOperation[T] holding that very Operation.
func typedOf[T any](op *Operation) (*TypedOperation[T], bool) {
	t, ok := op.payload.(*TypedOperation[T])
	return t, ok && &t.Operation == op
}

// typedPayload is what the log listener asks a typed operation for when it
// prints payloads.
type typedPayload interface{ typedPayload() any }

func (op *TypedOperation[T]) typedPayload() any { return op.value }

// A TypedProcessor does the work of a batch of operations whose payloads are
// of type T; it is a [Processor] for a [TypedWatcher]. ProcessBatch says how
// the batch went, and may give per-operation feedback, exactly as
// [Processor]'s does; the batch slice is ProcessBatch's to keep.
type TypedProcessor[T any] interface {
	ProcessBatch(ctx context.Context, batch []*TypedOperation[T]) error
}

// TypedProcessorFunc adapts a function to a [TypedProcessor].
type TypedProcessorFunc[T any] func(ctx context.Context, batch []*TypedOperation[T]) error

// ProcessBatch calls f(ctx, batch).
func (f TypedProcessorFunc[T]) ProcessBatch(ctx context.Context, batch []*TypedOperation[T]) error {
	return f(ctx, batch)
}

// A TypedWatcher is a [Watcher] whose operations all carry a payload of type
// T: it takes operations made by [NewTypedOperation] for it, and hands its
// ProcessBatch a []*TypedOperation[T]. It is a thin layer over a Watcher,
// which [TypedWatcher.Watcher] returns; the Batcher treats it as any other.
//
// Create it with [NewTypedWatcher] or [NewTypedWatcherFor] and configure it
// with the With* methods, which set the Watcher's settings (see [Watcher] for
// their defaults) and, as the Watcher's do, panic once the watcher's first
// operation has been enqueued. It is safe for concurrent use after that. The
// zero value is not usable.
type TypedWatcher[T any] struct {
	w *Watcher
}

// NewTypedWatcher returns a watcher whose batches are processed by fn. A nil
// fn makes a watcher whose operations Enqueue refuses, as [NewWatcher] does.
func NewTypedWatcher[T any](fn func(ctx context.Context, batch []*TypedOperation[T]) error) *TypedWatcher[T] {
	var p TypedProcessor[T]
	if fn != nil {
		p = TypedProcessorFunc[T](fn)
	}
	return NewTypedWatcherFor(p)
}

// NewTypedWatcherFor returns a watcher whose batches are processed by p.
func NewTypedWatcherFor[T any](p TypedProcessor[T]) *TypedWatcher[T] {
	var up Processor // nil for a nil p: the Watcher reports it at Enqueue
	if p != nil {
		up = typedProcessor[T]{p}
	}
	return &TypedWatcher[T]{NewWatcherFor(up)}
}

// Watcher returns the untyped Watcher under w, for its accessors and for
// settings that TypedWatcher has no With* method for. Operations made for it
// with [NewOperation] are failed with [ErrNotTyped].
func (w *TypedWatcher[T]) Watcher() *Watcher { return w.w }

// WithMaxAttempts is [Watcher.WithMaxAttempts].
func (w *TypedWatcher[T]) WithMaxAttempts(n int) *TypedWatcher[T] {
	w.w.WithMaxAttempts(n)
	return w
}

// WithMaxBatchSize is [Watcher.WithMaxBatchSize].
func (w *TypedWatcher[T]) WithMaxBatchSize(n int) *TypedWatcher[T] {
	w.w.WithMaxBatchSize(n)
	return w
}

// WithMaxOperationTime is [Watcher.WithMaxOperationTime].
func (w *TypedWatcher[T]) WithMaxOperationTime(d time.Duration) *TypedWatcher[T] {
	w.w.WithMaxOperationTime(d)
	return w
}

// WithMaxConcurrentBatches is [Watcher.WithMaxConcurrentBatches].
func (w *TypedWatcher[T]) WithMaxConcurrentBatches(n int) *TypedWatcher[T] {
	w.w.WithMaxConcurrentBatches(n)
	return w
}

// WithRetryBackoff is [Watcher.WithRetryBackoff].
func (w *TypedWatcher[T]) WithRetryBackoff(base, max time.Duration) *TypedWatcher[T] {
	w.w.WithRetryBackoff(base, max)
	return w
}

// typedProcessor is the Processor of a TypedWatcher's Watcher.
type typedProcessor[T any] struct{ p TypedProcessor[T] }

// ProcessBatch hands the batch to the typed processor as a
// []*TypedOperation[T] without copying it: once every operation has been
// checked to be the Operation embedded at the start of a TypedOperation[T],
// the slice of *Operation is a slice of *TypedOperation[T] (the same
// pointers, each to a TypedOperation[T]). An operation that is not one is
// failed with ErrNotTyped and left out.
func (a typedProcessor[T]) ProcessBatch(ctx context.Context, batch []*Operation) error {
	for i, op := range batch {
		if _, ok := typedOf[T](op); !ok {
			batch = dropUntyped[T](batch, i)
			break
		}
	}
	if len(batch) == 0 {
		return nil // every operation failed with ErrNotTyped
	}
	typed := unsafe.Slice((**TypedOperation[T])(unsafe.Pointer(unsafe.SliceData(batch))), len(batch))
	return a.p.ProcessBatch(ctx, typed)
}

// dropUntyped fails the operations of batch, from index i on, that are not
// typed, and returns batch without them (it is ProcessBatch's to change).
func dropUntyped[T any](batch []*Operation, i int) []*Operation {
	var zero T
	err := fmt.Errorf("%w (payload type %T)", ErrNotTyped, zero)
	keep := batch[:i]
	for _, op := range batch[i:] {
		if _, ok := typedOf[T](op); ok {
			keep = append(keep, op)
		} else {
			op.Fail(err)
		}
	}
	clear(batch[len(keep):])
	return keep
}

// The layout the unsafe conversion in ProcessBatch relies on: the Operation
// is the first field, so a *TypedOperation[T] and a pointer to its Operation
// are the same address.
var _ [0]struct{} = [unsafe.Offsetof(TypedOperation[int]{}.Operation)]struct{}{}
