package batcher

import (
	"context"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"
)

// A worker is a goroutine that runs batches one after another. Workers that
// find nothing to run wait, idle, for the next batch, and leave once they
// have been idle for a whole flush interval, so a burst leaves no goroutines
// behind; Shutdown and Close end them all.
type worker struct {
	b      *Batcher
	next   chan *batch // a batch to run, or nil to leave; holds one
	stop   func() bool // stops ending the current batch's context when the Batcher closes
	timer  *time.Timer // ends the current batch's context at its deadline, and reports it
	idleAt uint64      // the flush count when it went idle; under b.mu

	mu    sync.Mutex // guards what follows, for the timer and the Batcher's closing
	cur   *batch     // the batch in ProcessBatch, or nil
	ctx   *batchCtx  // its context: when it started (released) and must end (deadline)
	armed time.Time  // when the timer fires, or zero if it is stopped
}

// dispatch hands each batch to the worker takeLocked chose for it, or to a
// new one.
func (b *Batcher) dispatch(bts []*batch) {
	for _, bt := range bts {
		if w := bt.worker; w != nil {
			w.next <- bt // never blocks: an idle worker's channel is empty
			continue
		}
		w := &worker{b: b, next: make(chan *batch, 1)}
		w.timer = time.AfterFunc(time.Hour, w.overran)
		w.timer.Stop()
		w.stop = context.AfterFunc(b.runCtx, w.closed)
		b.batches.Go(func() { w.loop(bt) })
	}
}

func (w *worker) loop(bt *batch) {
	defer w.stop()
	defer w.timer.Stop()
	for {
		for bt != nil {
			w.process(bt)
			var idle bool
			bt, idle = w.b.complete(bt, w)
			if bt == nil && !idle {
				return
			}
		}
		if bt = <-w.next; bt == nil {
			return
		}
	}
}

// process calls ProcessBatch for bt under the watcher's time limit.
func (w *worker) process(bt *batch) {
	b := w.b
	if b.cfg.emitBatch {
		b.emit(Event{Kind: BatchReleased, Batch: slices.Clone(bt.ops), Val: bt.cost})
	}
	limit := bt.q.w.maxOperationTime
	if limit == 0 {
		limit = b.cfg.maxOperationTime
	}
	// Tell the ledger the batch starts now (see ledger), unless Close has
	// already ended its operations, as late as may be: the ledger counts
	// the batch for a window (and slack) from this moment, and ProcessBatch
	// must start within the slack of it. Anything that may wait (allocating
	// may help the garbage collector) comes before. The same moment is where
	// the deadline counts from, so that ProcessBatch can tell when the batch
	// was released. Without a limiter there is no ledger, and no need for
	// the lock, which the batches of a busy Batcher would otherwise queue
	// for.
	given := slices.Clone(bt.ops) // ProcessBatch's: a copy it may change and keep
	ctx := &batchCtx{values: b.runValues}
	var (
		now       time.Time
		abandoned bool
	)
	if bt.entry == 0 {
		now, abandoned = time.Now(), bt.abandoned.Load()
	} else {
		b.mu.Lock()
		now = time.Now()
		if abandoned = bt.abandoned.Load(); !abandoned {
			b.mu.ledger.started(bt.entry, now)
		}
		b.mu.Unlock() // not b.unlock: no sweep between this and the call
	}
	if abandoned {
		bt.skipped = true // Close ended its operations before it could start
		return
	}

	ctx.released, ctx.deadline = now, now.Add(limit)
	bt.released = now
	w.mu.Lock()
	w.cur, w.ctx = bt, ctx
	// The timer stays set from one batch to the next and is moved only when
	// this batch's deadline comes before it: setting a timer for every batch
	// is a measurable part of the hot path. When it fires for an earlier
	// batch's deadline, overran sets it again for this one.
	if w.armed.IsZero() || w.armed.After(ctx.deadline) {
		w.timer.Reset(limit)
		w.armed = ctx.deadline
	}
	w.mu.Unlock()
	if b.runCtx.Err() != nil {
		ctx.cancel(context.Canceled) // closed before w.ctx was set, so closed missed it
	}
	bt.panicked, bt.err = processBatch(bt.q.w.p, ctx, given)
	ctx.cancel(context.Canceled)

	w.mu.Lock()
	w.cur, w.ctx = nil, nil
	w.mu.Unlock()
}

// processBatch calls p.ProcessBatch and recovers a panic in it, which it
// returns as a *PanicError, with panicked set: a long-lived Batcher has no
// caller to hand the panic to, and letting it go would end the process and
// every operation buffered with it (as net/http recovers a handler's).
func processBatch(p Processor, ctx context.Context, ops []*Operation) (panicked bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack(), in: "ProcessBatch"}
			panicked = true
		}
	}()
	return false, p.ProcessBatch(ctx, ops)
}

// closed runs when the Batcher's run context ends (Close): it ends the
// current batch's context.
func (w *worker) closed() {
	w.mu.Lock()
	ctx := w.ctx
	w.mu.Unlock()
	if ctx != nil {
		ctx.cancel(context.Canceled)
	}
}

// overran runs on the timer. If the current batch has run for its limit, it
// ends the batch's context with DeadlineExceeded and reports the batch; if
// the timer was set for an earlier batch's deadline, it sets it again for
// the current one.
func (w *worker) overran() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = time.Time{}
	bt, ctx := w.cur, w.ctx
	if bt == nil {
		return // the next batch sets the timer
	}
	if left := time.Until(ctx.deadline); left > 0 {
		w.timer.Reset(left)
		w.armed = ctx.deadline
		return
	}
	limit := ctx.deadline.Sub(ctx.released)
	ctx.cancel(context.DeadlineExceeded)
	ops := slices.Clone(bt.ops) // while w.cur holds bt, its batch is not done
	b := w.b
	b.mu.Lock()
	abandoned := bt.abandoned.Load()
	if !abandoned {
		b.mu.stats.TimedOut++
	}
	b.unlock()
	if !abandoned {
		b.emit(Event{Kind: TimedOut, Batch: ops, Duration: limit,
			Err: fmt.Errorf("batcher: ProcessBatch ran longer than %v", limit)})
	}
}

// idleLocked parks w until it gets a batch, and reports whether it may park
// (not once the Batcher has finished).
func (b *Batcher) idleLocked(w *worker) bool {
	if b.mu.state != stateRunning && b.mu.state != stateDraining {
		return false
	}
	w.idleAt = b.mu.flushes
	b.mu.idleWorkers = append(b.mu.idleWorkers, w)
	return true
}

// popIdleLocked returns an idle worker, the most recently idle, or nil.
func (b *Batcher) popIdleLocked() *worker {
	n := len(b.mu.idleWorkers)
	if n == 0 {
		return nil
	}
	w := b.mu.idleWorkers[n-1]
	b.mu.idleWorkers[n-1] = nil
	b.mu.idleWorkers = b.mu.idleWorkers[:n-1]
	return w
}

// retireLocked takes the workers idle since before the previous flush (all
// of them if all is set) off the idle list; the caller sends them nil.
func (b *Batcher) retireLocked(all bool) []*worker {
	k := 0
	for k < len(b.mu.idleWorkers) && (all || b.mu.idleWorkers[k].idleAt+1 < b.mu.flushes) {
		k++
	}
	if k == 0 {
		return nil
	}
	out := slices.Clone(b.mu.idleWorkers[:k])
	n := copy(b.mu.idleWorkers, b.mu.idleWorkers[k:])
	clear(b.mu.idleWorkers[n:])
	b.mu.idleWorkers = b.mu.idleWorkers[:n]
	return out
}

func retire(ws []*worker) {
	for _, w := range ws {
		w.next <- nil
	}
}
