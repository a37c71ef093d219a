package batcher

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// An Operation is one write (or any unit of work) for a [Watcher], with a
// cost in the rate limiter's units (request units, rows, calls). Create it
// with [NewOperation], hand it to [Batcher.Enqueue], and, if you want to know
// how it ended, wait on [Operation.Done] or call [Operation.Wait].
//
// Every enqueued operation ends exactly once: it succeeds, or it fails and
// [Operation.Err] says why (the Batcher also reports the failure with a
// [Failed] event). An operation can be enqueued only once, even after it
// ended; create a new one to write again.
//
// During [Watcher]'s ProcessBatch, the methods Retry, Fail, Throttle and
// SetActualCost tell the Batcher how this operation went, overriding what
// ProcessBatch returns for the batch as a whole. They may be called from any
// goroutine, one at a time for a given operation, until ProcessBatch
// returns.
//
// The accessors and Done, Wait and Err are safe for concurrent use.
type Operation struct {
	// 48 bytes (tested), an allocator size class: every enqueued operation
	// is allocated by its caller, and the bytes allocated per operation set
	// how often the garbage collector runs on the hot path.
	watcher *Watcher
	payload any
	ext     atomic.Pointer[opExt] // made when first needed
	cost    int32                 // the declared cost, or wideCost if it does not fit (then it is in ext)
	actual  uint32                // actual cost + 1 from ProcessBatch, or 0: up to math.MaxInt32 + 1
	state   atomic.Uint32         // see the bits below
	epoch   uint32                // the Flush epoch it was enqueued in; under the Batcher's lock
}

// opExt holds what most operations never need: the channel for Done, the
// failure, the feedback's details, a cost too big for Operation.cost.
type opExt struct {
	mu        sync.Mutex
	done      chan struct{}
	closed    bool
	err       error         // the result, once ended
	feedback  error         // the error given with Retry, Throttle or Fail
	after     time.Duration // the retry-after given with Throttle
	throttles uint32        // attempts that ended in a throttle
	cost      int           // the declared cost, when Operation.cost is wideCost
}

// wideCost in Operation.cost says that the declared cost does not fit in 32
// bits and is in opExt.cost. It is negative, so that Enqueue's check of the
// cost takes its slow path for it.
const wideCost = math.MinInt32

// The bits of Operation.state. The low two are where the operation is; the
// others say what it is (opSingle), who waits for it (opWaiter), what
// ProcessBatch said of it (the verdict) and how many attempts it had before
// the current or last one (the rest).
const (
	opNew        uint32 = 0
	opQueued     uint32 = 1
	opEnding     uint32 = 2 // its result is being written
	opEnded      uint32 = 3
	stateMask    uint32 = 3
	opWaiter     uint32 = 1 << 2 // someone asked for Done
	opSingle     uint32 = 1 << 3 // not batchable; set by NewOperation
	verdictShift        = 4
	verdictMask  uint32 = 3 << verdictShift
	retryShift          = 6
	oneRetry     uint32 = 1 << retryShift // attempts count up to 1<<26, then wrap
)

// verdict is what ProcessBatch said of an operation.
type verdict uint8

const (
	verdictNone     verdict = iota // as the batch goes
	verdictRetry                   // retry after the watcher's back-off
	verdictThrottle                // retry after a pause
	verdictFail                    // failed for good
)

// verdict returns what ProcessBatch said of the operation.
func (op *Operation) verdict() verdict {
	return verdict(op.state.Load() & verdictMask >> verdictShift)
}

// setVerdict records what ProcessBatch said of the operation. Other bits
// of state may change meanwhile (Done sets opWaiter at any time).
func (op *Operation) setVerdict(v verdict) {
	for {
		s := op.state.Load()
		n := s&^verdictMask | uint32(v)<<verdictShift
		if s == n || op.state.CompareAndSwap(s, n) {
			return
		}
	}
}

// NewOperation returns an operation for watcher w that costs cost units of
// the rate limiter's capacity and carries payload for ProcessBatch. If
// batchable is false, the operation is always released in a batch of its own.
// Enqueue checks w and cost: a cost must be at least 0 and at most
// math.MaxInt32 (and the rate limiter's maximum capacity).
func NewOperation(w *Watcher, cost int, payload any, batchable bool) *Operation {
	op := &Operation{watcher: w, payload: payload, cost: int32(cost)}
	if cost <= wideCost || cost > math.MaxInt32 {
		op.cost = wideCost
		op.ext.Store(&opExt{cost: cost})
	}
	if !batchable {
		op.state.Store(opSingle)
	}
	return op
}

// Watcher returns the watcher the operation belongs to.
func (op *Operation) Watcher() *Watcher { return op.watcher }

// Cost returns the operation's declared cost.
func (op *Operation) Cost() int {
	if op.cost == wideCost {
		return op.ext.Load().cost
	}
	return int(op.cost)
}

// Payload returns what the operation carries.
func (op *Operation) Payload() any { return op.payload }

// Batchable reports whether the operation may share a batch with others.
func (op *Operation) Batchable() bool { return op.state.Load()&opSingle == 0 }

// Attempt returns the number of the operation's current or last attempt: 1
// until, and during, its first ProcessBatch call; 2 once ProcessBatch has
// asked for it to be tried again, during its second call; and so on. After
// the operation ended it is the number of ProcessBatch calls it took.
func (op *Operation) Attempt() int { return int(op.state.Load()>>retryShift) + 1 }

// countAttempt counts the attempt that just ended, before another.
func (op *Operation) countAttempt() { op.state.Add(oneRetry) }

// Retry asks, during ProcessBatch, for the operation to be tried again after
// its watcher's back-off, because of err. Once it has been attempted
// MaxAttempts times it fails instead, with an error wrapping
// [ErrTooManyAttempts] and err.
func (op *Operation) Retry(err error) {
	op.setVerdict(verdictRetry)
	op.extOrNew().feedback = err
}

// Throttle says, during ProcessBatch, that the datastore refused the
// operation for now ("too many requests") and asked for a wait of after (0
// or less if it did not say). The Batcher pauses the releases of the
// operation's watcher, its lane, as [Throttle] describes (other watchers go
// on), and retries the operation; throttles do not count towards
// MaxAttempts. A batch whose operations give different retry-afters pauses
// its lane for the longest.
func (op *Operation) Throttle(after time.Duration, err error) {
	op.setVerdict(verdictThrottle)
	e := op.extOrNew()
	e.feedback, e.after = err, after
}

// Fail says, during ProcessBatch, that the operation failed for good because
// of err (nil is replaced by a generic error). It is not retried.
func (op *Operation) Fail(err error) {
	op.setVerdict(verdictFail)
	op.extOrNew().feedback = err
}

// SetActualCost reports, during ProcessBatch, what the operation really cost
// (Cosmos DB returns the request charge of each call). The Batcher accounts
// the difference from the declared cost against the moment the batch was
// released. A cost below 0 counts as 0, and one above math.MaxInt32, the
// most an operation may cost, as math.MaxInt32.
func (op *Operation) SetActualCost(cost int) {
	op.actual = uint32(min(max(cost, 0), math.MaxInt32)) + 1
}

// actualCost returns the reported actual cost, if any.
func (op *Operation) actualCost() (int, bool) { return int(op.actual) - 1, op.actual != 0 }

// feedback returns the retry-after and error given with Retry, Throttle or
// Fail.
func (op *Operation) feedback() (time.Duration, error) {
	if e := op.ext.Load(); e != nil {
		return e.after, e.feedback
	}
	return 0, nil
}

// throttles returns how many attempts ended in a throttle.
func (op *Operation) throttles() int {
	if e := op.ext.Load(); e != nil {
		return int(e.throttles)
	}
	return 0
}

// clearFeedback forgets what ProcessBatch said, before another attempt.
func (op *Operation) clearFeedback() {
	op.setVerdict(verdictNone)
	op.actual = 0
	if e := op.ext.Load(); e != nil {
		e.feedback, e.after = nil, 0
	}
}

func (op *Operation) extOrNew() *opExt {
	if e := op.ext.Load(); e != nil {
		return e
	}
	e := new(opExt)
	if !op.ext.CompareAndSwap(nil, e) {
		e = op.ext.Load()
	}
	return e
}

// closedChan is returned by Done for operations that ended before anyone
// asked.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Done returns a channel that is closed when the operation has ended.
func (op *Operation) Done() <-chan struct{} {
	if op.state.Load()&stateMask == opEnded {
		return closedChan
	}
	e := op.extOrNew()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done == nil {
		e.done = make(chan struct{})
	}
	if old := op.state.Or(opWaiter); old&stateMask == opEnded {
		e.closeLocked() // it ended before the ender could see a waiter
	}
	return e.done
}

func (e *opExt) closeLocked() {
	if e.done != nil && !e.closed {
		close(e.done)
		e.closed = true
	}
}

// Err returns nil if the operation succeeded or has not ended yet, and the
// reason it failed otherwise. Wait for Done first to tell the two apart.
func (op *Operation) Err() error {
	if op.state.Load()&stateMask != opEnded {
		return nil
	}
	if e := op.ext.Load(); e != nil {
		return e.err
	}
	return nil
}

// Wait blocks until the operation ends and returns nil if it succeeded or
// the reason it failed. If ctx ends first, Wait returns ctx.Err(); the
// operation is not affected. If the operation has already ended, Wait
// returns its result even when ctx is done.
func (op *Operation) Wait(ctx context.Context) error {
	if op.state.Load()&stateMask != opEnded {
		done := op.Done()
		select {
		case <-done:
		case <-ctx.Done():
			select {
			case <-done:
			default:
				return ctx.Err()
			}
		}
	}
	return op.Err()
}

// end ends the operation with err and reports whether it was still running;
// only the first call has any effect.
func (op *Operation) end(err error) bool {
	for {
		s := op.state.Load()
		if s&stateMask != opQueued {
			return false
		}
		if err == nil {
			if !op.state.CompareAndSwap(s, s|opEnded) {
				continue
			}
			if s&opWaiter != 0 {
				op.ext.Load().closeDone()
			}
			return true
		}
		if !op.state.CompareAndSwap(s, s&^stateMask|opEnding) {
			continue
		}
		op.extOrNew().err = err
		if old := op.state.Or(opEnded); old&opWaiter != 0 {
			op.ext.Load().closeDone()
		}
		return true
	}
}

func (e *opExt) closeDone() {
	e.mu.Lock()
	e.closeLocked()
	e.mu.Unlock()
}

// claim marks a new operation as enqueued, and reports whether it was new.
func (op *Operation) claim() bool {
	for {
		s := op.state.Load()
		if s&stateMask != opNew {
			return false
		}
		if op.state.CompareAndSwap(s, s|opQueued) {
			return true
		}
	}
}

// unclaim undoes claim, for an operation Enqueue refused.
func (op *Operation) unclaim() { op.state.And(^stateMask) }
