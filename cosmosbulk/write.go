package cosmosbulk

import (
	"context"
	"sync"

	"github.com/ratebatch/batcher"
)

// A Write is one item's write, as [Loader.Load] returns it: wait on it to
// learn how the write ended. Its operation in the Batcher may come a little
// after Load returns: a key's items are held while the key's first write
// learns which partition key range it is on (see the package doc's Lanes).
//
// Its methods are safe for concurrent use. The zero value is not for use.
type Write struct {
	item  Item
	ready chan struct{} // closed once op (or err) is set

	// Set once, before ready is closed.
	op      *batcher.Operation
	err     error  // Enqueue's refusal of a held item
	rangeID string // the range whose lane op is in; "" the default lane

	doneOnce sync.Once
	done     <-chan struct{}
}

// newWrite returns a Write of item with its operation still to come.
func newWrite(item Item) *Write {
	return &Write{item: item, ready: make(chan struct{})}
}

// set gives w its operation, or the error that refused it, once.
func (w *Write) set(op *batcher.Operation, rangeID string, err error) {
	w.op, w.rangeID, w.err = op, rangeID, err
	close(w.ready)
}

// Item returns the item written.
func (w *Write) Item() Item { return w.item }

// Operation returns the write's operation in the Batcher, or nil while the
// item is held (or if the Batcher refused it: see Err).
func (w *Write) Operation() *batcher.Operation {
	select {
	case <-w.ready:
		return w.op
	default:
		return nil
	}
}

// RangeID returns the partition key range whose throttle lane the item was
// enqueued in: "" for the default lane (keys whose range no answer had
// named yet, or a Loader without partition lanes), or while the item is
// held.
func (w *Write) RangeID() string {
	select {
	case <-w.ready:
		return w.rangeID
	default:
		return ""
	}
}

// Done returns a channel closed when the write has ended: written, failed,
// or refused by the Batcher.
func (w *Write) Done() <-chan struct{} {
	w.doneOnce.Do(func() {
		select {
		case <-w.ready:
			if w.op != nil {
				w.done = w.op.Done()
				return
			}
			ch := make(chan struct{})
			close(ch)
			w.done = ch
			return
		default:
		}
		// Held: close done once the operation, when it comes, ends. The
		// goroutine ends with it (every enqueued operation ends).
		ch := make(chan struct{})
		w.done = ch
		go func() {
			<-w.ready
			if w.op != nil {
				<-w.op.Done()
			}
			close(ch)
		}()
	})
	return w.done
}

// Wait waits until the write has ended and returns nil if the item was
// written, or why not: an [*ItemError], the Batcher's error (retries run
// out, shut down), or the Batcher's refusal of a held item. It returns
// ctx.Err() if ctx ends first.
func (w *Write) Wait(ctx context.Context) error {
	select {
	case <-w.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if w.err != nil {
		return w.err
	}
	return w.op.Wait(ctx)
}

// Err returns how the write ended, as Wait does, or nil while it has not.
func (w *Write) Err() error {
	select {
	case <-w.ready:
	default:
		return nil
	}
	if w.err != nil {
		return w.err
	}
	return w.op.Err()
}
