package batcher

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"slices"
	"time"
)

// loop is the owner goroutine: it flushes on the interval, asks the rate
// limiter for capacity, audits, and wakes for pauses that end, retries that
// fall due and capacity that frees up.
func (b *Batcher) loop(ctx context.Context) {
	defer close(b.ownerDone)
	flush := time.NewTicker(b.cfg.flushInterval)
	defer flush.Stop()
	capacity := time.NewTicker(b.cfg.capacityInterval)
	defer capacity.Stop()
	audit := time.NewTicker(b.cfg.auditInterval)
	defer audit.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	linger := time.NewTimer(time.Hour) // for shards that linger
	linger.Stop()
	defer linger.Stop()

	var scratch []*batch // reused between steps
	var evs []Event
	for {
		var tick bool
		select {
		case <-flush.C:
			tick = true
		case <-capacity.C:
			b.askCapacity()
		case <-audit.C:
			evs = append(evs, b.audit())
		case <-timer.C:
		case <-b.kick:
		case <-b.intakeKick:
			b.mu.Lock()
			b.unlock() // sweeps
			continue
		case <-b.lingerKick:
			b.sweepLingering(linger)
			continue
		case <-linger.C:
			b.sweepLingering(linger)
			continue
		case <-b.stopOwner:
			return
		case <-ctx.Done():
			b.abort(fmt.Errorf("%w: the context given to Start ended: %w", ErrClosed, context.Cause(ctx)), true)
			return
		}
		scratch, evs = b.step(timer, tick, scratch[:0], evs)
		clear(scratch)
		clear(evs)
		evs = evs[:0]
	}
}

// sweepLingering sweeps the shards that have held operations for
// intakeLinger since their last sweep, and sets t for the next of the
// others, if any (see lingerIntake).
func (b *Batcher) sweepLingering(t *time.Timer) {
	// Clear the flag before looking at the shards: an Enqueue that finds it
	// set has made its shard non-empty before, so that either this looks
	// after and sees it, or the Enqueue sets the flag and asks again.
	b.lingerArmed.Store(false)
	now := time.Now()
	b.mu.Lock()
	if next := b.sweepLingeringLocked(now); !next.IsZero() {
		b.lingerArmed.Store(true)
		t.Reset(next.Sub(now))
	}
	b.unlockSweeping(false)
}

// step does what is due at now, releases what may go, sets the timer for the
// next wake, and emits evs with the events it adds.
func (b *Batcher) step(timer *time.Timer, tick bool, out []*batch, evs []Event) ([]*batch, []Event) {
	// tick says the flush interval has passed.
	lim := b.cfg.limiter
	var capNow int
	if lim != nil && tick {
		capNow = lim.Capacity()
	}
	now := time.Now()
	b.mu.Lock()
	if lim != nil && tick {
		b.setCapacityLocked(now, capNow)
	}
	// A flush releases what is buffered, within capacity: on the interval,
	// by Flush, or, when the last one found the capacity short and is owed
	// (see formLocked), as soon as the capacity frees.
	interval := tick
	announce := b.cfg.emitFlush && (tick || b.mu.flushWanted)
	flush := tick || b.mu.flushWanted
	explicit := b.mu.flushWanted
	b.mu.flushWanted = false
	if b.mu.paused && !now.Before(b.mu.pausedUntil) {
		b.mu.paused = false
		evs = append(evs, Event{Kind: Resumed})
	}
	evs = b.resumeLanesLocked(now, evs)
	for b.mu.retries.Len() > 0 && !now.Before(b.mu.retries.peek().due) {
		r := heap.Pop(&b.mu.retries).(retryEntry)
		r.q.retrying -= len(r.ops)
		r.q.pushFront(r.ops)
		r.q.sinceAt = time.Time{} // old operations: not held for a fuller batch
		b.readyLocked(r.q)
	}
	b.mu.roomWake = time.Time{}
	b.sweepLocked()
	if announce {
		evs = append(evs, Event{Kind: FlushStarted})
	}
	before := b.mu.stats.Released
	var retired []*worker
	out = b.releaseLocked(now, flush, interval && !explicit, out)
	if announce {
		evs = append(evs, Event{Kind: FlushDone, Val: int(b.mu.stats.Released - before)})
	}
	if interval {
		b.sweepIdleLocked()
		if b.mu.space != nil && b.freeLocked() > 0 {
			// Completions wake blocked Enqueue calls only once a few grants'
			// worth is free; the flush lets them have what there is.
			b.wakeSpaceLocked()
		}
		b.mu.flushes++
		retired = b.retireLocked(false)
	}
	next := b.nextWakeLocked()
	b.mu.armed = next
	b.unlock()

	if next.IsZero() {
		timer.Stop()
	} else {
		timer.Reset(next.Sub(now))
	}
	b.dispatch(out)
	retire(retired)
	b.emitAll(evs)
	return out, evs
}

// nextWakeLocked returns when the owner must next wake, or zero for never.
func (b *Batcher) nextWakeLocked() time.Time {
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if b.mu.paused {
		earliest(b.mu.pausedUntil)
	}
	if b.mu.retries.Len() > 0 {
		earliest(b.mu.retries.peek().due)
	}
	if b.mu.lanes.len() > 0 {
		earliest(b.mu.lanes.peek().pausedUntil)
	}
	if !b.mu.paused {
		earliest(b.mu.roomWake)
	}
	return next
}

// askCapacity tells the rate limiter the demand and reads its capacity.
func (b *Batcher) askCapacity() {
	lim := b.cfg.limiter
	b.mu.Lock()
	b.sweepLocked()
	target := b.mu.target
	changed := target != b.mu.lastTarget
	b.mu.lastTarget = target
	// Operations above the maximum as last read, buffered before the
	// maximum is read below: their Enqueue read it before this does, so
	// if it is below their cost now, it fell. (One buffered after may have
	// read a maximum that rose since: it waits for the next interval.)
	above := b.mu.aboveMax
	b.mu.aboveMax = false
	// The demand, in cost units per second: what waits now, plus what
	// went out in the last second. Under a backlog it exceeds the capacity
	// however small the buffer; at a steady rate under the capacity it is
	// that rate and what one flush holds.
	demand := target
	if !b.mu.unlimited {
		// Saturating: at a capacity near math.MaxInt the sum may not fit.
		used := b.mu.ledger.used(time.Now())
		demand = min(target, math.MaxInt-used) + used
	}
	b.unlock()
	if changed {
		b.emit(Event{Kind: TargetChanged, Val: target})
	}
	if lim == nil {
		return
	}
	if b.cfg.emitRequest {
		b.emit(Event{Kind: CapacityRequested, Val: demand})
	}
	lim.GiveMe(demand)
	c, m := lim.Capacity(), lim.MaxCapacity()
	now := time.Now()
	b.mu.Lock()
	b.setCapacityLocked(now, c)
	var dropped []Event
	if m < b.mu.maxCapacity || above {
		dropped = b.dropAboveLocked(m)
	}
	b.mu.maxCapacity = m
	b.unlock()
	if len(dropped) > 0 && b.gate.enter() {
		defer b.gate.leave()
		b.emitEntered(dropped)
	}
}

// dropAboveLocked takes out of the buffer the operations that cost more
// than max, the rate limiter's new maximum capacity: they could never go
// out, and would hold up the operations behind them. It ends them with
// ErrTooExpensive, counted first (as in complete), and before their epoch
// counts them off, so that a Flush waiting for them returns only once they
// have ended; it returns a Failed event for each, to emit after the lock.
func (b *Batcher) dropAboveLocked(max int) []Event {
	b.sweepLocked()
	var dropped []*Operation
	drop := func(op *Operation) {
		dropped = append(dropped, op)
		b.mu.buffered--
		b.mu.outstanding--
		b.mu.target -= int(op.cost)
	}
	for _, q := range b.mu.queues {
		for range q.ops.len() {
			e := q.ops.popFront()
			if int(e.cost) <= max {
				q.ops.push(e) // in the same order, once round
				continue
			}
			if !e.batchable {
				q.unbatchable--
			}
			drop(e.op)
		}
	}
	for i := range b.mu.retries {
		r := &b.mu.retries[i]
		kept := r.ops[:0:0]
		for _, op := range r.ops {
			if int(op.cost) <= max {
				kept = append(kept, op)
			} else {
				r.q.retrying--
				drop(op)
			}
		}
		r.ops = kept
	}
	if len(dropped) == 0 {
		return nil
	}
	// A queue that waited for capacity behind a dropped operation may go
	// now: each looks again at its next turn.
	b.capacityChangedLocked()
	b.failed.Add(int64(len(dropped)))
	evs := make([]Event, 0, len(dropped))
	for _, op := range dropped {
		err := fmt.Errorf("%w: cost %d, and the rate limiter's maximum capacity is now %d", ErrTooExpensive, op.cost, max)
		if op.end(err) {
			evs = append(evs, Event{Kind: Failed, Batch: []*Operation{op}, Err: err})
		} else {
			b.failed.Add(-1) // something else ended it first
		}
		b.mu.epochs.done(op.epoch, 1)
	}
	b.wakeSpaceLocked()
	b.checkDrainedLocked()
	return evs
}

// audit checks the bookkeeping against the buffer itself, and corrects it.
func (b *Batcher) audit() Event {
	b.mu.Lock()
	defer b.unlock()
	if b.mu.outstanding == 0 && b.mu.target == 0 && b.mu.buffered == 0 && b.mu.inflight == 0 {
		return Event{Kind: AuditSkipped}
	}
	buffered, target := 0, 0
	for _, q := range b.mu.queues {
		for i := range q.ops.len() {
			buffered++
			target += int(q.ops.at(i).cost)
		}
	}
	for _, r := range b.mu.retries {
		for _, op := range r.ops {
			buffered++
			target += int(op.cost)
		}
	}
	inflight, outstanding := len(b.mu.running), buffered
	for _, bt := range b.mu.running {
		outstanding += len(bt.ops)
	}
	var msg string
	check := func(name string, have *int, want int) {
		if *have != want {
			msg += fmt.Sprintf("%s was %d, not %d; ", name, *have, want)
			*have = want
		}
	}
	check("buffered", &b.mu.buffered, buffered)
	check("target", &b.mu.target, target)
	check("inflight", &b.mu.inflight, inflight)
	check("outstanding", &b.mu.outstanding, outstanding)
	if msg != "" {
		return Event{Kind: AuditFailed, Msg: msg[:len(msg)-2]}
	}
	return Event{Kind: AuditPassed, Val: buffered}
}

// retryEntry is a group of operations waiting to be buffered again.
type retryEntry struct {
	due time.Time
	q   *queue
	ops []*Operation
}

// retryQueue is a min-heap of retry entries by due time.
type retryQueue []retryEntry

func (r retryQueue) Len() int           { return len(r) }
func (r retryQueue) Less(i, j int) bool { return r[i].due.Before(r[j].due) }
func (r retryQueue) Swap(i, j int)      { r[i], r[j] = r[j], r[i] }
func (r *retryQueue) Push(x any)        { *r = append(*r, x.(retryEntry)) }
func (r *retryQueue) Pop() any {
	old := *r
	x := old[len(old)-1]
	old[len(old)-1] = retryEntry{}
	*r = old[:len(old)-1]
	return x
}
func (r *retryQueue) push(e retryEntry) { heap.Push(r, e) }
func (r retryQueue) peek() retryEntry   { return r[0] }

// drain empties the queue and returns what it held.
func (r *retryQueue) drain() []retryEntry {
	old := *r
	*r = nil
	return old
}

// epochs lets Flush wait for the operations enqueued before it. Every
// operation belongs to the epoch that was current when it was enqueued; a
// Flush starts a new epoch and waits until no operation of the earlier ones
// is left.
//
// Epochs are kept as segments: runs of consecutive epoch numbers counted
// together. A boundary between segments is kept only while a Flush waits on
// it: a Flush whose context ends takes its wait back, and its boundary
// merges away. So memory follows the Flush calls waiting now, however many
// came and went, even while an operation that never ends holds back every
// epoch after it. A Flush right after another, with nothing enqueued
// between them, shares its wait.
type epochs struct {
	segs    []epochSeg // oldest first; the last holds the current epoch
	cur     uint32     // the current epoch; epochs wrap around
	split   bool       // a barrier has begun a new epoch: operations may be in different ones
	waiters []*epochWaiter
}

// An epochSeg counts the operations not yet ended of the epochs from start
// up to the next segment's start.
type epochSeg struct {
	start uint32
	count int
}

// An epochWaiter is the wait of one or more Flush calls.
type epochWaiter struct {
	last uint32 // the newest epoch it waits for
	ch   chan struct{}
	refs int // Flush calls waiting on ch
}

func (e *epochs) init() { e.segs = []epochSeg{{start: e.cur}} }

// before reports whether epoch a comes before epoch b, modulo 2^32.
func before(a, b uint32) bool { return a-b >= 1<<31 }

// addN counts n operations in the current epoch and returns the epoch.
func (e *epochs) addN(n int) uint32 {
	e.segs[len(e.segs)-1].count += n
	return e.cur
}

// done counts off n operations of epoch id.
func (e *epochs) done(id uint32, n int) {
	if n == 0 {
		return
	}
	i := len(e.segs) - 1
	for i > 0 && before(id, e.segs[i].start) {
		i--
	}
	e.segs[i].count -= n
	e.trim()
}

// barrier returns a wait that ends once the operations enqueued so far have
// ended; release it if the caller stops waiting first.
func (e *epochs) barrier() *epochWaiter {
	last := e.cur
	if e.segs[len(e.segs)-1].count == 0 && len(e.segs) > 1 && e.segs[len(e.segs)-1].start == e.cur {
		last = e.cur - 1 // nothing enqueued since the last barrier
	} else {
		e.cur++
		e.split = true
		e.segs = append(e.segs, epochSeg{start: e.cur})
	}
	if n := len(e.waiters); n > 0 && e.waiters[n-1].last == last {
		e.waiters[n-1].refs++
		return e.waiters[n-1]
	}
	w := &epochWaiter{last: last, ch: make(chan struct{}), refs: 1}
	e.waiters = append(e.waiters, w)
	e.trim()
	return w
}

// release takes back one Flush's wait on w, if it has not ended, and merges
// away the boundary no one waits on any more.
func (e *epochs) release(w *epochWaiter) {
	w.refs--
	if w.refs > 0 {
		return
	}
	i := slices.Index(e.waiters, w)
	if i < 0 {
		return // it ended
	}
	e.waiters = slices.Delete(e.waiters, i, i+1)
	// The boundary after w.last is the start of the segment after the one
	// holding w.last; merge that segment into its predecessor.
	for k := 1; k < len(e.segs); k++ {
		if e.segs[k].start == w.last+1 {
			e.segs[k-1].count += e.segs[k].count
			e.segs = slices.Delete(e.segs, k, k+1)
			break
		}
	}
	e.trim()
}

// trim drops finished segments from the front and ends the waits that are
// over.
func (e *epochs) trim() {
	for len(e.segs) > 1 && e.segs[0].count == 0 {
		e.segs = e.segs[1:]
	}
	for len(e.waiters) > 0 && before(e.waiters[0].last, e.segs[0].start) {
		close(e.waiters[0].ch)
		e.waiters = e.waiters[1:]
	}
}

// releaseAll ends every wait: nothing is left to wait for.
func (e *epochs) releaseAll() {
	for _, w := range e.waiters {
		close(w.ch)
	}
	e.waiters = nil
	e.cur++
	e.segs = []epochSeg{{start: e.cur}}
}
