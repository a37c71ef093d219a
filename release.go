package batcher

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// eagerGap is the least time between two batches of a watcher that eager
// release sends before they are full, once operations come in a burst.
const eagerGap = time.Millisecond

// A batch is a group of one watcher's operations released together.
type batch struct {
	q         *queue
	ops       []*Operation // the Batcher's
	cost      int          // declared
	pauses    uint64       // its queue's lane pauses when it went out
	entry     uint64       // its ledger entry, 0 without a limiter
	index     int          // in Batcher.mu.running
	worker    *worker      // the idle worker chosen to run it, or nil for a new one
	err       error        // what ProcessBatch returned
	panicked  bool         // ProcessBatch panicked: err is a *PanicError, and overrides what it said of operations
	abandoned atomic.Bool  // Close or a failed Shutdown ended its operations; set under mu
	skipped   bool         // abandoned before ProcessBatch was called; set by its worker
	released  time.Time    // when ProcessBatch was called; set by its worker
}

// setCapacityLocked records the rate limiter's capacity.
func (b *Batcher) setCapacityLocked(now time.Time, c int) {
	c = max(c, 0)
	if c == b.mu.capacity && !b.mu.pace.last.IsZero() {
		return
	}
	b.mu.capacity = c
	b.mu.pace.set(now, c, b.cfg.flushInterval)
	b.capacityChangedLocked()
}

// releasableLocked reports whether releases may happen at all.
func (b *Batcher) releasableLocked() bool {
	st := b.mu.state
	return (st == stateRunning || st == stateDraining) && !b.mu.paused
}

// slotFreeLocked reports whether the Batcher-wide concurrency allows one
// more batch. (Start sets the limit: 0 becomes the default.)
func (b *Batcher) slotFreeLocked() bool {
	return b.mu.inflight < b.cfg.maxConcurrent
}

// advanceLocked brings the capacity bookkeeping up to now.
func (b *Batcher) advanceLocked(now time.Time) {
	if !b.mu.unlimited && b.pacer == nil {
		b.mu.pace.advance(now)
	}
}

// formLocked takes a batch from the front of q and records its release, or
// returns nil and why nothing may go now (with held, until when). Without
// tick (a flush owes q a turn), eager release, a drain or a flush owed to q
// when a slot frees, only a full batch may go: MaxBatchSize operations, or
// as many as come before an operation that cannot share a batch.
func (b *Batcher) formLocked(now time.Time, q *queue, tick bool) (*batch, why, time.Time) {
	w := q.w
	if q.throttled() {
		return nil, paused, time.Time{} // resumeLanesLocked puts it back
	}
	if w.maxConcurrent > 0 && q.inflight >= w.maxConcurrent {
		if tick && q.ops.len() > 0 {
			// The flush is owed: the part batch goes when a slot frees,
			// not a flush interval later.
			q.flushOwed = true
		}
		return nil, noSlot, time.Time{}
	}
	pending := q.ops.len()
	if pending == 0 {
		return nil, notFull, time.Time{}
	}
	limit := pending
	if w.maxBatchSize > 0 {
		limit = min(limit, w.maxBatchSize)
	}
	// The candidate: the front operations that may share a batch.
	n, cost := 1, int(q.ops.at(0).cost)
	if q.ops.at(0).batchable {
		for n < limit {
			op := q.ops.at(n)
			if !op.batchable {
				break
			}
			cost += int(op.cost)
			n++
		}
	}
	full := !q.ops.at(0).batchable || n < pending || (w.maxBatchSize > 0 && n == w.maxBatchSize)
	partial := tick || q.flushOwed || b.cfg.eager || b.mu.state == stateDraining
	if !full && !partial {
		return nil, notFull, time.Time{}
	}
	if b.cfg.eager && !full && !tick && b.mu.state != stateDraining && q.burst {
		// Eager release sends a batch that is not full at once unless the
		// watcher is in a burst (its last two batches went within
		// 2*eagerGap) and has just sent one: operations that keep coming
		// faster than one per eagerGap are coalesced, so that a burst of
		// work, or a buffer refilling after capacity came back, makes full
		// batches, not a batch per operation (which would slow the
		// producers down, keep the buffer empty, and go on so). Two
		// operations that merely happen to come close together both go at
		// once: holding the second would cost it a millisecond or more,
		// for an idle Go runtime sleeps at least that long.
		if now.IsZero() {
			now = time.Now()
		}
		if next := q.lastRelease.Add(eagerGap); now.Before(next) {
			return nil, held, next
		}
	}
	if !b.mu.unlimited {
		if int(q.ops.at(0).cost) > b.mu.capacity {
			return nil, never, time.Time{} // until the capacity changes
		}
		f := b.fitLocked(now, q, n)
		// Short of room for the batch (or for as much of it as the capacity
		// can ever hold at once), release what fits now only while
		// draining; when an external pacer is full (waiting would waste
		// what it cannot hold); or at a flush if the last second's releases
		// are what holds it back: the gap they leave would otherwise stay
		// unused second after second, as the ledger repeats their pattern.
		// When it is the pacing that is short, wait for it: it will be
		// there soon, and a part batch would only break the batches up.
		// Otherwise wait for the room.
		ledgerShort := f.room < f.wantCost
		if f.k < f.want && (f.k == 0 || !(b.mu.state == stateDraining || f.paceFull || (tick && ledgerShort))) {
			need := f.wantCost
			if tick && f.k == 0 && ledgerShort {
				// A flush the last second's releases hold back goes when
				// they let go of what they will within half an interval,
				// up to the batch: waiting for the whole batch's room
				// when less than that comes back at once (costs that
				// vary, actual costs below the declared ones) would skip
				// a flush and send two shares at the next.
				soon := now.Add(b.cfg.flushInterval / 2)
				need = min(need, max(f.room+b.mu.ledger.freedBy(now, soon), int(q.ops.at(0).cost)))
			}
			// The room comes at the wake noted here, and with it the
			// flush goes on where it stopped (a little after the flush:
			// timers are late by a little, and the ledger keeps each
			// release a little over a second); waiting for the next flush
			// interval would waste a whole interval's share.
			b.noteRoomLocked(now, need)
			return nil, noRoom, time.Time{}
		}
		n, cost = f.k, f.kCost
	}
	return b.takeLocked(now, q, n, cost), released, time.Time{}
}

// fit says how much of a batch may go now.
type fit struct {
	k, kCost       int  // the first k operations, costing kCost, may go now
	want, wantCost int  // the batch waits for room for the first want operations
	room           int  // what the last second leaves of the capacity
	paceFull       bool // an external pacer holds all it can
}

// fitLocked finds how many of the first n operations of q may go now: as
// many as fit both in the room the last second leaves (the ledger) and in
// the pacing; with an external pacer that is full, as many as fit in the
// room, up to the pacer's burst. The batch waits for all n operations,
// unless they cost more than the capacity or the pacing can ever hold at
// once.
func (b *Batcher) fitLocked(now time.Time, q *queue, n int) fit {
	c := b.mu.capacity
	room := c - b.mu.ledger.used(now) - b.mu.reserve
	var (
		tokens   float64 // external pacer
		paceFull bool
		ceiling  = c // the most one batch can cost, with the pacing not in debt
	)
	if b.pacer != nil {
		tokens = b.pacer.TokensAt(now)
		burst := b.pacer.Burst()
		ceiling = max(min(ceiling, burst), 1)
		paceFull = tokens >= float64(burst)
	} else {
		ceiling = max(min(ceiling, int(b.mu.pace.burst/nano)), 1)
	}
	f := fit{room: room, paceFull: paceFull}
	// The batch to wait for: the candidate, or as much of it as fits under
	// the ceiling (at least one operation).
	f.want, f.wantCost = n, 0
	for i := range n {
		cost := int(q.ops.at(i).cost)
		if i > 0 && f.wantCost+cost > ceiling {
			f.want = i
			break
		}
		f.wantCost += cost
	}
	// What may go now.
	sum := 0
	paced := true // the prefix so far fits the pacing
	for i := range n {
		sum += int(q.ops.at(i).cost)
		if sum > room {
			break
		}
		if b.pacer != nil {
			// An external pacer cannot take more than its burst at once.
			paced = paced && (float64(sum) <= tokens || (paceFull && sum <= ceiling))
		} else {
			paced = paced && b.mu.pace.fits(sum, i == 0)
		}
		if !paced {
			break
		}
		f.k, f.kCost = i+1, sum
	}
	return f
}

// noteRoomLocked asks the owner to try again when need fits in capacity.
func (b *Batcher) noteRoomLocked(now time.Time, need int) {
	d, ok := b.mu.ledger.wait(now, b.mu.capacity-b.mu.reserve, need)
	if !ok {
		return // never at this capacity; the capacity interval looks again
	}
	if b.pacer == nil {
		p, ok := b.mu.pace.wait(need)
		if !ok {
			return
		}
		d = max(d, p)
	} else if t := b.pacer.TokensAt(now); float64(need) > t && b.mu.capacity > 0 {
		// Assume the pacer fills at the capacity rate; a wake that comes
		// early, through rounding, just looks again.
		wait := math.Ceil((float64(need) - t) / float64(b.mu.capacity) * float64(time.Second))
		d = max(d, time.Duration(wait))
	}
	if d <= 0 {
		// The batch was refused now, so a wake now would find the same:
		// the owner goroutine would wake again at once, for ever (a whole
		// CPU, and a synctest bubble whose time stands still). fitLocked
		// and the waits agree, so this is a guard: a wake a little later
		// costs that little time, at worst.
		d = minRoomWait
	}
	b.noteWakeLocked(now.Add(d))
}

// minRoomWait is the least wait noteRoomLocked notes.
const minRoomWait = time.Millisecond

// noteWakeLocked asks the owner to try releases again at t.
func (b *Batcher) noteWakeLocked(t time.Time) {
	if b.mu.roomWake.IsZero() || t.Before(b.mu.roomWake) {
		b.mu.roomWake = t
	}
}

// takeLocked takes the first n operations of q, costing cost, as a batch,
// and gives it an idle worker if there is one.
func (b *Batcher) takeLocked(now time.Time, q *queue, n, cost int) *batch {
	// ProcessBatch gets a slice of its own, to change and keep, beside the
	// one the Batcher reads when it returns; that one is reused once the
	// batch has ended. (The batch is new: a worker's timer may still look at
	// it after it ends.)
	ops := b.spareOpsLocked(n)
	if k := q.ops.len() - n; !q.sinceAt.IsZero() && q.lastAt.After(q.sinceAt) {
		// The rate of the stream that filled it, for fillingLocked; and
		// the k left are the newest: their oldest came about k/(n+k) of
		// the span before the last.
		span := q.lastAt.Sub(q.sinceAt)
		q.rate = float64(n+k-1) / float64(span)
		if k > 0 {
			q.sinceAt = q.lastAt.Add(-span / time.Duration(n+k) * time.Duration(k))
		}
	}
	q.popInto(ops)
	bt := &batch{q: q, ops: ops, cost: cost, pauses: q.lanePauses(), worker: b.popIdleLocked()}
	if q.ops.len() == 0 {
		q.flushOwed = false // what the flush owed has gone
	}
	if !b.mu.unlimited {
		bt.entry = b.mu.ledger.add(now, cost)
		if b.pacer != nil {
			b.pacer.TakeAt(now, cost)
		} else {
			b.mu.pace.take(cost)
		}
	}
	b.mu.buffered -= n
	b.mu.target -= cost
	b.mu.inflight++
	q.inflight++
	if b.cfg.eager {
		if now.IsZero() {
			now = time.Now()
		}
		q.burst = !q.lastRelease.IsZero() && now.Sub(q.lastRelease) < 2*eagerGap
		q.lastRelease = now
	}
	bt.index = len(b.mu.running)
	b.mu.running = append(b.mu.running, bt)
	b.mu.stats.Released += int64(n)
	b.mu.stats.Batches++
	return bt
}

// complete accounts for what ProcessBatch said of bt, and returns the next
// batch for worker w to run, if any; if there is none, whether w is to wait
// for one (idle) rather than leave.
func (b *Batcher) complete(bt *batch, w *worker) (next *batch, idle bool) {
	if bt.skipped {
		return nil, false // Close has ended everything; the worker leaves
	}
	// Hold the event gate from the first operation ended here to the last
	// event: Shutdown and Close wait for it, so that what they return after
	// is counted and reported. If the gate is shut, Close has finished, and
	// ended this batch's operations itself.
	if !b.gate.enter() {
		return nil, false
	}
	defer b.gate.leave()
	var (
		batchVerdict = verdictNone
		batchErr     = bt.err
		batchAfter   time.Duration
	)
	if bt.err != nil {
		batchVerdict = verdictFail
		if fb, ok := errors.AsType[*feedback](bt.err); ok {
			batchVerdict, batchErr, batchAfter = fb.verdict, fb.err, fb.after
		}
	}

	// Decide each operation's end; set aside what is retried.
	var (
		succeeded       int
		retry, throttle []*Operation
		fails           []Event // one for each operation failed for good
		delta           int     // actual cost minus declared
		after           time.Duration
		retryErr        error
	)
	for _, op := range bt.ops {
		if a, ok := op.actualCost(); ok {
			delta += a - int(op.cost)
		}
		v, err, ra := op.verdict(), batchErr, batchAfter
		if v == verdictNone || bt.panicked {
			v = batchVerdict
		} else {
			ra, err = op.feedback()
		}
		if v == verdictRetry && op.Attempt()-op.throttles() >= bt.q.w.maxAttempts {
			v = verdictFail
			err = fmt.Errorf("%w (%d): %w", ErrTooManyAttempts, op.Attempt(), orFailure(err))
		}
		switch v {
		case verdictNone:
			succeeded++
		case verdictFail:
			fails = append(fails, Event{Kind: Failed, Batch: []*Operation{op}, Err: orFailure(err)})
		case verdictRetry:
			op.clearFeedback()
			op.countAttempt()
			retry = append(retry, op)
			retryErr = err
		case verdictThrottle:
			op.clearFeedback()
			op.countAttempt()
			op.extOrNew().throttles++
			throttle = append(throttle, op)
			after = max(after, ra)
			retryErr = err
		}
		if op.verdict() != v { // no write in the usual case: success, no verdict
			op.setVerdict(v) // the final word, read below under the lock
		}
	}

	// End what succeeded or failed for good, counting each first, so that
	// Stats counts it by the time its Wait returns. One that Close ended
	// first is Close's to count and report.
	if len(fails) > 0 {
		b.failed.Add(int64(len(fails)))
	}
	if succeeded > 0 {
		b.succeeded.Add(int64(succeeded))
		for _, op := range bt.ops {
			if op.verdict() == verdictNone && !op.end(nil) {
				b.succeeded.Add(-1)
			}
		}
	}
	failed := fails[:0]
	for _, e := range fails {
		if e.Batch[0].end(e.Err) {
			failed = append(failed, e)
		} else {
			b.failed.Add(-1)
		}
	}

	var evs []Event
	var now time.Time // only needed with a limiter or retries: time.Now is not free
	if !b.mu.unlimited || len(retry) > 0 || len(throttle) > 0 {
		now = time.Now()
	}
	b.mu.Lock()
	if bt.abandoned.Load() {
		// Close or a failed Shutdown has already ended the rest and taken
		// the batch off the books.
		b.unlock()
		b.emitEntered(failed)
		return nil, false
	}
	nops := len(bt.ops) // for the Learner: bt.ops is reused below
	b.removeRunningLocked(bt)
	b.mu.inflight--
	bt.q.inflight--
	b.slotFreedLocked(bt.q)
	if (len(retry) > 0 || len(throttle) > 0) && !b.mu.unlimited {
		// What costs more than the maximum capacity could never go out
		// again: it fails here, as dropAboveLocked fails what is buffered
		// when the maximum falls.
		retry, failed = b.failAboveMaxLocked(retry, failed)
		throttle, failed = b.failAboveMaxLocked(throttle, failed)
	}
	ended := len(bt.ops) - len(retry) - len(throttle)
	b.mu.outstanding -= ended
	if b.mu.epochs.split {
		for i := 0; i < len(bt.ops); {
			// Operations of a batch mostly share an epoch: count them off
			// in runs.
			ep, n := bt.ops[i].epoch, 0
			for ; i < len(bt.ops) && bt.ops[i].epoch == ep; i++ {
				switch op := bt.ops[i]; op.verdict() {
				case verdictNone, verdictFail:
					n++
				default:
					op.setVerdict(verdictNone) // for its next attempt
				}
			}
			b.mu.epochs.done(ep, n)
		}
	} else {
		// Until the first Flush every operation is in epoch 0: count them
		// off at once, without a pass over the batch under the lock.
		b.mu.epochs.done(0, ended)
		for _, op := range retry {
			op.setVerdict(verdictNone) // for its next attempt
		}
		for _, op := range throttle {
			op.setVerdict(verdictNone)
		}
	}
	b.reuseOpsLocked(bt) // nothing reads bt.ops from here on
	if delta != 0 && !b.mu.unlimited {
		b.mu.ledger.adjust(bt.entry, delta)
		if b.pacer != nil {
			if delta > 0 {
				b.pacer.TakeAt(now, delta)
			}
		} else {
			b.mu.pace.take(delta)
		}
	}
	if len(retry) > 0 {
		b.mu.stats.Retried += int64(len(retry))
		d := bt.q.w.backoff(retry[0].Attempt() - 1) // the attempt that ended
		b.mu.retries.push(retryEntry{due: now.Add(d), q: bt.q, ops: retry})
		bt.q.retrying += len(retry)
		b.bufferAgainLocked(retry)
		evs = append(evs, Event{Kind: Retrying, Batch: retry, Duration: d, Err: retryErr})
	}
	if len(throttle) > 0 {
		b.mu.stats.Throttled++
		d := b.throttledLocked(now, bt, after)
		bt.q.pushFront(throttle)
		bt.q.sinceAt = time.Time{} // old operations: not held for a fuller batch
		b.bufferAgainLocked(throttle)
		b.readyLocked(bt.q) // once its lane resumes
		evs = append(evs, Event{Kind: Throttled, Batch: throttle, Duration: d, Err: retryErr, Watcher: bt.q.w},
			Event{Kind: Paused, Duration: d, Err: retryErr, Watcher: bt.q.w})
	} else if bt.pauses == bt.q.lanePauses() {
		bt.q.laneSucceeded() // released after the lane's last throttle, and not throttled
	}
	if ended > 0 && b.mu.space != nil && (b.freeLocked() >= b.lowWater || b.mu.outstanding == b.mu.buffered) {
		// Room for a few grants; or the last batch running has ended,
		// and the Enqueue calls woken find the buffer full of partial
		// batches, and flush it (see pressureFlushLocked).
		b.wakeSpaceLocked()
	}
	b.checkDrainedLocked()
	b.noteIdleLocked(bt.q)

	// Take the next batch for this worker from what the queues hold; start
	// any others that may go. The intake is left to the others who take
	// the lock (see unlockNoSweep).
	var buf [4]*batch
	out := b.releaseLocked(now, false, false, buf[:0])
	if len(out) > 0 {
		next = out[0]
		if next.worker != nil {
			// takeLocked gave it an idle worker; this one will do.
			b.mu.idleWorkers = append(b.mu.idleWorkers, next.worker)
			next.worker = nil
		}
		out = out[1:]
	} else {
		idle = b.idleLocked(w)
	}
	b.unlockNoSweep()
	if l, ok := b.cfg.limiter.(Learner); ok {
		l.ObserveBatch(BatchOutcome{Watcher: bt.q.w, Released: bt.released, Returned: now,
			Operations: nops, Cost: bt.cost + delta, Succeeded: succeeded, Throttled: len(throttle), RetryAfter: after})
	}
	b.dispatch(out)
	b.emitEntered(failed)
	b.emitEntered(evs)
	return next, idle
}

// failAboveMaxLocked ends, with ErrTooExpensive, the operations of ops
// that cost more than the rate limiter's maximum capacity, and returns the
// others, and failed with a Failed event for each it ended. It ends them
// under the lock, before their epoch counts them off, so that a Flush
// waiting for them returns only once they have ended.
func (b *Batcher) failAboveMaxLocked(ops []*Operation, failed []Event) ([]*Operation, []Event) {
	m := b.mu.maxCapacity
	kept := ops[:0]
	for _, op := range ops {
		if int(op.cost) <= m {
			kept = append(kept, op)
			continue
		}
		op.setVerdict(verdictFail)
		err := fmt.Errorf("%w: cost %d, and the rate limiter's maximum capacity is now %d", ErrTooExpensive, op.cost, m)
		b.failed.Add(1)
		if op.end(err) {
			failed = append(failed, Event{Kind: Failed, Batch: []*Operation{op}, Err: err})
		} else {
			b.failed.Add(-1)
		}
	}
	return kept, failed
}

// maxSpareOps bounds how many slices spareOps keeps: enough for the batches
// of a busy Batcher to reuse each other's.
const maxSpareOps = 64

// spareOpsLocked returns a slice of n operations for a batch's own copy,
// reusing an ended batch's if one is big enough.
func (b *Batcher) spareOpsLocked(n int) []*Operation {
	if k := len(b.mu.spareOps); k > 0 {
		s := b.mu.spareOps[k-1]
		b.mu.spareOps[k-1] = nil
		b.mu.spareOps = b.mu.spareOps[:k-1]
		if cap(s) >= n {
			return s[:n]
		}
	}
	return make([]*Operation, n)
}

// reuseOpsLocked keeps bt's own copy of its operations, cleared, for another
// batch. Only complete calls it, once it no longer needs bt.ops: the
// worker's timer and Close read bt.ops only while bt runs, and events carry
// copies.
func (b *Batcher) reuseOpsLocked(bt *batch) {
	if len(b.mu.spareOps) < maxSpareOps {
		clear(bt.ops)
		b.mu.spareOps = append(b.mu.spareOps, bt.ops)
	}
	bt.ops = nil
}

// removeRunningLocked takes bt off the list of running batches.
func (b *Batcher) removeRunningLocked(bt *batch) {
	last := len(b.mu.running) - 1
	moved := b.mu.running[last]
	b.mu.running[bt.index], moved.index = moved, bt.index
	b.mu.running[last] = nil
	b.mu.running = b.mu.running[:last]
}

// bufferAgainLocked puts operations that will be retried back on the books.
func (b *Batcher) bufferAgainLocked(ops []*Operation) {
	for _, op := range ops {
		b.mu.target += int(op.cost)
	}
	b.mu.buffered += len(ops)
}

// noteIdleLocked marks q to be forgotten at the next flush if it stays idle.
func (b *Batcher) noteIdleLocked(q *queue) {
	if q.isIdle() && !q.inIdle {
		q.inIdle = true
		b.mu.idle = append(b.mu.idle, q)
	}
}

// sweepIdleLocked forgets the queues of watchers that have gone idle.
func (b *Batcher) sweepIdleLocked() {
	for _, q := range b.mu.idle {
		q.inIdle = false
		if q.isIdle() && !q.inReady && !q.inFull && !q.paused && !q.parked() && b.mu.queues[q.w] == q {
			b.dropQueueLocked(q)
			b.leaveLaneLocked(q)
		}
	}
	clear(b.mu.idle)
	b.mu.idle = b.mu.idle[:0]
}

func orFailure(err error) error {
	if err == nil {
		return errNilFailure
	}
	return err
}
