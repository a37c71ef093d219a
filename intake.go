package batcher

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The intake lets many goroutines enqueue at once without fighting over the
// Batcher's lock. Each CPU (through a sync.Pool, which is per-P) appends to a
// shard of its own, under the shard's lock, spending buffer slots reserved
// for the shard beforehand (credits), so the buffer's bound stays exact.
//
// The shards are swept into the watchers' queues, many operations at a
// time. An Enqueue that runs out of credits sweeps its own shard when it
// takes the Batcher's lock for more: the operations move on, and the full
// batches they make go to workers, on the CPU whose caches hold them.
// Traffic between the CPUs, more than the work itself, is what limits a
// busy Batcher on a small machine (see the README), so a shard is left to
// its own producers while they are streaming. Besides:
//   - an Enqueue that finds its shard empty kicks the owner goroutine,
//     which sweeps every shard within microseconds, so that a full batch
//     goes at once; unless the shard's producers are streaming (its last
//     sweep was their refill, and found operations), when it asks the
//     owner to sweep the shard only if it still holds operations
//     intakeLinger after that sweep: by then its producers have almost
//     always swept it themselves;
//   - one that wants its operation out at once (eager release, an
//     operation that cannot share a batch) sweeps every shard itself if
//     the Batcher's lock is free, and kicks the owner otherwise;
//   - every flush, Flush, Stats and the like sweep every shard.
type intake struct {
	shards []*shard
	pool   sync.Pool // hands each P its shard
	next   atomic.Uint32
	grant  int // credits a shard takes at a time
}

type shard struct {
	mu      sync.Mutex
	ops     []entry
	spare   []entry // swapped in by a sweep
	credits int     // buffer slots reserved for this shard
	closed  bool    // no more appends: the Batcher is shutting down
	// streaming says that the shard's last sweep was its producers' own,
	// refilling their credits, and found operations: they are likely to
	// sweep it again soon. Written under both locks, read under either.
	streaming bool
	sweptAt   time.Time    // when a sweep last found operations in it; under the Batcher's lock
	_         [64]byte     // n apart: other CPUs read it at every unlock
	n         atomic.Int32 // len(ops), to look without the lock; set when it becomes 1 or 0
	_         [60]byte     // keep shards on cache lines of their own
}

func newIntake(bufferSize int) *intake {
	n := runtime.GOMAXPROCS(0)
	in := &intake{
		shards: make([]*shard, n),
		grant:  min(256, max(bufferSize/(8*n), 1)),
	}
	for i := range in.shards {
		in.shards[i] = &shard{}
	}
	in.pool.New = func() any { return in.shards[int(in.next.Add(1))%len(in.shards)] }
	return in
}

// pending reports whether any shard holds operations.
func (in *intake) pending() bool {
	for _, sh := range in.shards {
		if sh.n.Load() > 0 {
			return true
		}
	}
	return false
}

// tryAppend appends e to the calling P's shard if that shard has a credit,
// and returns the shard either way; whether it was empty before; and, if
// so, whether its producers are streaming.
func (in *intake) tryAppend(e entry) (sh *shard, ok, first, streaming bool) {
	sh = in.pool.Get().(*shard)
	sh.mu.Lock()
	if sh.closed || sh.credits == 0 {
		sh.mu.Unlock()
		in.pool.Put(sh)
		return sh, false, false, false
	}
	sh.credits--
	sh.ops = append(sh.ops, e)
	first = len(sh.ops) == 1
	if first {
		sh.n.Store(1)
		streaming = sh.streaming
	}
	sh.mu.Unlock()
	in.pool.Put(sh)
	return sh, true, first, streaming
}

// intakeLinger is how long after its last sweep a shard whose producers
// are streaming may hold operations before the owner sweeps it, and so the
// most an operation waits there after its Enqueue (see intake). Streaming
// producers sweep their shard every grant of operations, some tens of
// microseconds.
const intakeLinger = time.Millisecond

// EnqueueContext and the sweeping follow.

func (b *Batcher) enqueue(ctx context.Context, op *Operation) error {
	in := b.intake.Load()
	if in == nil {
		return b.admitSlow(ctx, op, nil)
	}
	e := entryOf(op) // reads op's state word once
	sh, ok, first, streaming := in.tryAppend(e)
	if !ok {
		return b.admitSlow(ctx, op, sh)
	}
	urgent := b.cfg.eager || !e.batchable
	switch {
	case urgent && b.mu.TryLock():
		b.unlock()
	case first && streaming && !urgent:
		b.lingerIntake()
	case first:
		b.kickIntake()
	}
	return nil
}

// admitSlow accepts op under the Batcher's lock, waiting for room if need
// be, sweeps sh, and gives it a new grant of credits.
func (b *Batcher) admitSlow(ctx context.Context, op *Operation, sh *shard) error {
	b.mu.Lock()
	for {
		switch b.mu.state {
		case stateNew:
			b.unlock()
			return fmt.Errorf("%w: Enqueue before Start", ErrImproperOrder)
		case stateDraining, stateClosed:
			b.unlock()
			return ErrClosed
		}
		if b.freeLocked() <= 0 {
			b.reclaimLocked()
		}
		if free := b.freeLocked(); free > 0 {
			if sh != nil {
				grant := min(b.intake.Load().grant, free-1)
				sh.mu.Lock()
				if !sh.closed {
					sh.credits += grant
					b.mu.reserved += grant
				}
				sh.mu.Unlock()
			}
			break
		}
		b.pressureFlushLocked()
		if b.cfg.errorOnFull {
			b.unlock()
			return fmt.Errorf("%w: %d operations held", ErrBufferFull, b.cfg.bufferSize)
		}
		if b.mu.space == nil {
			b.mu.space = make(chan struct{})
		}
		space := b.mu.space
		b.unlock()
		select {
		case <-space:
		case <-b.draining:
		case <-ctx.Done():
			return ctx.Err()
		}
		b.mu.Lock()
	}
	if sh != nil {
		// The shard's operations were enqueued before op. Sweeping only
		// this CPU's shard keeps its operations, and the batches they
		// fill, on this CPU (see intake); the others' producers and the
		// owner sweep theirs.
		b.sweepShardLocked(sh, time.Now(), true)
	}
	b.acceptLocked(op)
	if b.unlockSweeping(false) {
		// The batches just released wait for their workers in this P's run
		// queue, behind this goroutine, which would keep the CPU for the
		// rest of its time slice if it goes on enqueueing (the other P
		// steals them only when it runs out of work): let them start now.
		// Enqueue comes here once per grant of credits, not per operation.
		// The throughput program ran faster with this yield in 18 of 22
		// interleaved pairs (see the README).
		runtime.Gosched()
	}
	return nil
}

// freeLocked returns the buffer slots neither held nor reserved.
func (b *Batcher) freeLocked() int {
	return b.cfg.bufferSize - b.mu.outstanding - b.mu.reserved
}

// reclaimLocked takes back the credits the shards have not spent.
func (b *Batcher) reclaimLocked() {
	in := b.intake.Load()
	if in == nil {
		return
	}
	for _, sh := range in.shards {
		sh.mu.Lock()
		b.mu.reserved -= sh.credits
		sh.credits = 0
		sh.mu.Unlock()
	}
}

// closeIntakeLocked stops appends to the shards and takes back their
// credits; what they hold is swept as usual.
func (b *Batcher) closeIntakeLocked() {
	in := b.intake.Load()
	if in == nil {
		return
	}
	for _, sh := range in.shards {
		sh.mu.Lock()
		sh.closed = true
		b.mu.reserved -= sh.credits
		sh.credits = 0
		sh.mu.Unlock()
	}
}

// acceptLocked puts op in its watcher's queue.
func (b *Batcher) acceptLocked(op *Operation) {
	q := b.queueLocked(op.watcher)
	if !b.cfg.eager {
		q.arrived(time.Now())
	}
	q.push(entryOf(op))
	op.epoch = b.mu.epochs.addN(1)
	b.mu.buffered++
	b.mu.outstanding++
	b.mu.target += int(op.cost)
	b.mu.stats.Enqueued++
	b.markLocked(q)
	b.noteCostLocked(int(op.cost))
}

// noteCostLocked notes that an operation costing cost has been buffered.
// Enqueue checked its cost against the rate limiter's maximum capacity, but
// the maximum may have fallen since, after the Batcher failed what it held
// above the new one: if cost is above the maximum as the Batcher last read
// it, the next capacity interval looks at the buffer again (see
// askCapacity).
func (b *Batcher) noteCostLocked(cost int) {
	if cost > b.mu.maxCapacity && !b.mu.unlimited {
		b.mu.aboveMax = true
	}
}

// markLocked notes that q has received operations.
func (b *Batcher) markLocked(q *queue) {
	b.readyLocked(q)
	if !q.touched {
		q.touched = true
		b.mu.touched = append(b.mu.touched, q)
	}
}

// sweepLocked moves what the shards hold into the queues.
func (b *Batcher) sweepLocked() {
	in := b.intake.Load()
	if in == nil {
		return
	}
	for _, sh := range in.shards {
		if sh.n.Load() > 0 {
			b.sweepShardLocked(sh, time.Time{}, false)
		}
	}
}

// sweepLingeringLocked sweeps the shards that have held operations for
// intakeLinger since their last sweep, and returns when the next of the
// others will have (zero if none holds operations).
func (b *Batcher) sweepLingeringLocked(now time.Time) (next time.Time) {
	in := b.intake.Load()
	if in == nil {
		return time.Time{}
	}
	for _, sh := range in.shards {
		if sh.n.Load() == 0 {
			continue
		}
		if due := sh.sweptAt.Add(intakeLinger); now.Before(due) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		b.sweepShardLocked(sh, now, false)
	}
	return next
}

// sweepShardLocked moves what sh holds into the queues; own says that
// sh's producers sweep it, refilling their credits. now may be zero if own
// is not set: the time is then read only if sh is streaming (an eager
// Enqueue sweeps at every operation, and time.Now is not free), and the
// sweep of a shard that is not goes unrecorded, which only makes the owner
// sweep it sooner if it ever lingers. Those operations were already counted
// in reserved.
func (b *Batcher) sweepShardLocked(sh *shard, now time.Time, own bool) {
	sh.mu.Lock()
	ops := sh.ops
	if len(ops) == 0 {
		if own {
			sh.streaming = false // someone else swept what they enqueued
		}
		sh.mu.Unlock()
		return
	}
	sh.ops, sh.spare = sh.spare[:0], nil
	sh.n.Store(0)
	if !own && sh.streaming && now.IsZero() {
		now = time.Now()
	}
	if own {
		sh.streaming = true
	} else if sh.streaming && now.Sub(sh.sweptAt) >= intakeLinger {
		sh.streaming = false // its producers have not swept it lately
	}
	sh.mu.Unlock()
	if !now.IsZero() {
		sh.sweptAt = now
	}
	at := now // when these operations arrived, as the scheduler sees it (see fillingLocked)
	if at.IsZero() && !b.cfg.eager {
		at = time.Now() // once a sweep; eager release holds no batch for fullness
	}

	epoch := b.mu.epochs.addN(len(ops))
	var q *queue
	cost := 0
	var top int32 // the highest cost
	for _, e := range ops {
		if q == nil || e.w != q.w {
			q = b.queueLocked(e.w)
			b.markLocked(q)
			q.arrived(at)
		}
		q.push(e)
		if epoch != 0 {
			// Only once Flush has been called: operations start in
			// epoch 0, and the sweep does not touch them otherwise.
			e.op.epoch = epoch
		}
		cost += int(e.cost)
		top = max(top, e.cost)
	}
	b.noteCostLocked(int(top))
	clear(ops)
	n := len(ops)
	b.mu.reserved -= n
	b.mu.buffered += n
	b.mu.outstanding += n
	b.mu.target += cost
	b.mu.stats.Enqueued += int64(n)

	sh.mu.Lock()
	if sh.spare == nil {
		sh.spare = ops[:0]
	}
	sh.mu.Unlock()
}

// releaseTouchedLocked releases what may go now that queues received
// operations since the last call: the full batches they made (or, with
// eager release or while draining, any), and appends the batches to out.
func (b *Batcher) releaseTouchedLocked(now time.Time, out []*batch) []*batch {
	any := b.cfg.eager || b.mu.state == stateDraining || b.mu.pressure
	b.mu.pressure = false
	for _, q := range b.mu.touched {
		q.touched = false
		if b.fullLocked(q) {
			any = true
		}
	}
	clear(b.mu.touched)
	b.mu.touched = b.mu.touched[:0]
	if !any {
		return out // no full batch: they wait for the flush
	}
	return b.releaseLocked(now, false, false, out)
}

// unlock sweeps the intake, releases what became releasable, unlocks b.mu
// and hands the batches released to their workers, reporting whether there
// were any. Every unlock of b.mu goes through here or unlockNoSweep, but
// one that must be quick. Nothing depends on the sweep, for an Enqueue that
// finds its shard empty kicks the owner goroutine, which sweeps; unlock
// only saves that wake-up.
func (b *Batcher) unlock() bool { return b.unlockSweeping(true) }

// unlockNoSweep is unlock without the sweep, for a worker that has
// completed a batch. Workers take the lock more often than anyone (once a
// batch), and under load the shards they would sweep were just filled on
// other CPUs: each sweep would pull those cache lines across, while the
// lock is held. Enqueue calls sweep their own shard when they refill their
// credits, and the owner sweeps when kicked or when a shard lingers (see
// intake); with that, the worker's sweep saved nothing and cost about a
// seventh of figure 1 (see the README).
func (b *Batcher) unlockNoSweep() { b.unlockSweeping(false) }

func (b *Batcher) unlockSweeping(sweep bool) (released bool) {
	var buf [8]*batch
	out := buf[:0]
	if in := b.intake.Load(); in != nil && (b.mu.state == stateRunning || b.mu.state == stateDraining) {
		if sweep && in.pending() {
			b.sweepLocked()
		}
		if len(b.mu.touched) > 0 || b.mu.pressure {
			var now time.Time
			if !b.mu.unlimited {
				now = time.Now()
			}
			out = b.releaseTouchedLocked(now, out)
		}
	}
	kick := b.wantsKickLocked()
	b.mu.Unlock()
	b.dispatch(out)
	if kick {
		b.kickOwner()
	}
	return len(out) > 0
}

// lingerIntake asks the owner goroutine to sweep the shards that linger
// (see sweepLingeringLocked), unless it has been asked already.
func (b *Batcher) lingerIntake() {
	if !b.lingerArmed.Load() && b.lingerArmed.CompareAndSwap(false, true) {
		select {
		case b.lingerKick <- struct{}{}:
		default:
			// A request is waiting already (sent before the owner's last
			// look, which a timer started): the owner looks again for it.
		}
	}
}

// kickIntake asks the owner goroutine to sweep the intake.
func (b *Batcher) kickIntake() {
	select {
	case b.intakeKick <- struct{}{}:
	default:
	}
}
