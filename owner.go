package batcher

import (
	"container/heap"
	"context"
	"fmt"
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
	flush := tick || b.mu.flushWanted || b.mu.flushOwed
	b.mu.flushWanted, b.mu.flushOwed = false, false
	if b.mu.paused && !now.Before(b.mu.pausedUntil) {
		b.mu.paused = false
		evs = append(evs, Event{Kind: Resumed})
	}
	for b.mu.retries.Len() > 0 && !now.Before(b.mu.retries.peek().due) {
		r := heap.Pop(&b.mu.retries).(retryEntry)
		r.q.retrying -= len(r.ops)
		r.q.pushFront(r.ops)
		if !r.q.inReady {
			r.q.inReady = true
			b.mu.ready.push(r.q)
		}
	}
	b.mu.roomWake = time.Time{}
	b.sweepLocked()
	if announce {
		evs = append(evs, Event{Kind: FlushStarted})
	}
	before := b.mu.stats.Released
	var retired []*worker
	out = b.releaseLocked(now, flush, out)
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
	if !b.mu.paused {
		earliest(b.mu.roomWake)
	}
	return next
}

// askCapacity tells the rate limiter the target and reads its capacity.
func (b *Batcher) askCapacity() {
	lim := b.cfg.limiter
	b.mu.Lock()
	target := b.mu.target
	changed := target != b.mu.lastTarget
	b.mu.lastTarget = target
	b.unlock()
	if changed {
		b.emit(Event{Kind: TargetChanged, Val: target})
	}
	if lim == nil {
		return
	}
	if b.cfg.emitRequest {
		b.emit(Event{Kind: CapacityRequested, Val: target})
	}
	lim.GiveMe(target)
	c := lim.Capacity()
	now := time.Now()
	b.mu.Lock()
	b.setCapacityLocked(now, c)
	b.unlock()
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
			target += q.ops.at(i).cost
		}
	}
	for _, r := range b.mu.retries {
		for _, op := range r.ops {
			buffered++
			target += op.cost
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
// operation belongs to the epoch that was current when it was enqueued; each
// Flush starts a new epoch and waits until no operation of an earlier one
// is left.
type epochs struct {
	base    uint32 // the epoch of counts[0]; epochs wrap around
	counts  []int  // operations not yet ended, per epoch from base to current
	waiters []epochWaiter
}

type epochWaiter struct {
	last uint32 // the newest epoch it waits for
	ch   chan struct{}
}

func (e *epochs) init() { e.counts = []int{0} }

// done counts off an operation of epoch id.
func (e *epochs) done(id uint32, n int) {
	if n == 0 {
		return
	}
	e.counts[id-e.base] -= n
	e.trim()
}

// addN counts n operations in the current epoch and returns the epoch.
func (e *epochs) addN(n int) uint32 {
	e.counts[len(e.counts)-1] += n
	return e.base + uint32(len(e.counts)-1)
}

// barrier starts a new epoch and returns a channel that is closed when the
// earlier ones have no operations left.
//
// A barrier right after another, with no operation enqueued between them,
// shares the other's channel, so Flush called in a loop costs no memory.
func (e *epochs) barrier() <-chan struct{} {
	cur := len(e.counts) - 1
	if n := len(e.waiters); n > 0 && e.counts[cur] == 0 && e.waiters[n-1].last == e.base+uint32(cur)-1 {
		return e.waiters[n-1].ch
	}
	last := e.base + uint32(cur)
	e.counts = append(e.counts, 0)
	ch := make(chan struct{})
	e.waiters = append(e.waiters, epochWaiter{last, ch})
	e.trim()
	return ch
}

// trim drops finished epochs from the front and releases their waiters.
func (e *epochs) trim() {
	for len(e.counts) > 1 && e.counts[0] == 0 {
		e.counts = e.counts[1:]
		e.base++
	}
	for len(e.waiters) > 0 && e.waiters[0].last-e.base >= 1<<31 { // last < base, modulo 2^32
		close(e.waiters[0].ch)
		e.waiters = e.waiters[1:]
	}
}

// releaseAll releases every waiter: nothing is left to wait for.
func (e *epochs) releaseAll() {
	for _, w := range e.waiters {
		close(w.ch)
	}
	e.waiters = nil
	e.counts = []int{0}
}
