package batcher

import "time"

// The release scheduler. Its cost per batch does not grow with the number
// of watchers: no release walks the watchers, or the queues that hold
// operations, to find the one that may go.
//
// Each watcher's queue is in at most two rings:
//   - full: queues whose front makes a full batch (MaxBatchSize operations,
//     or any operation that cannot share a batch). Full batches go at once,
//     round the ring, one batch a turn, so a busy watcher does not starve
//     the others.
//   - ready: every queue that holds operations, in the order of its stamp
//     (the moment it entered or last went round). A flush owes a turn, with
//     a batch that may be partial, to the queues stamped before it began;
//     they come first in the ring, so the flush goes round them from the
//     front and is over at the first queue stamped after it. What a flush
//     cannot release at once (no slot, no capacity) it goes on releasing
//     as slots and capacity free, without waiting for the next interval.
//
// While a flush owes turns, the two rings take turns, full first: so a
// flush releases full batches before partial ones, and a watcher that keeps
// making full batches does not starve the partial ones the flush owes.
//
// A queue that cannot go for a reason of its own leaves both rings, and
// comes back when the reason ends: a paused lane (lanes.go) or one that
// eager release holds for a moment (the lane heap, without events); one at
// its watcher's MaxConcurrentBatches (when one of its batches completes);
// one whose next operation costs more than the capacity now (capWait, when
// the capacity changes). A reason shared by all, the Batcher-wide
// concurrency or capacity, stops the pass where it is: the queue at the
// front goes first when slots or capacity free.
//
// Stale entries (a queue that has emptied, or is no longer full) are
// dropped when they reach the front, once for each time they were added.
type sched struct {
	classes []*class // by priority, highest first
	seq     uint64   // the last stamp given
	owed    uint64   // the flush in progress owes a turn to queues stamped up to owed
	// deferring says the flush in progress is the interval's, which may
	// leave a partial batch for a later one while its watcher fills it.
	deferring bool
	capWait   []*queue // queues whose next operation costs more than the capacity now
	shares    bool     // some class has a guaranteed share
	window    int64    // the current share window (see shareWindow), by number
	cur, prev int64    // cost released, all classes, in the current and the previous window
}

// A class holds the queues of the watchers of one priority: its own full
// and ready rings, taking turns as described above. Within a class, queues
// take turns by deficit round robin: a queue at the front of a ring gets a
// credit of its watcher's weight times the class's quantum (the largest
// batch cost seen in the class), releases batches while its credit lasts,
// then goes to the back. With equal weights and batches of one cost, that is
// one batch a turn; in general each backlogged queue gets capacity in
// proportion to its weight.
type class struct {
	prio      int
	full      ring[*queue]
	ready     ring[*queue]
	readyTurn bool // the ready ring's turn is next (the full ring's went last)
	quantum   int
	share     float64 // the largest guaranteed share of its watchers
	cur, prev int64   // cost it released in the current and the previous share window
}

// shareWindow is the span over which guaranteed shares are counted: a
// class's share is its released cost over the current window and the
// previous one, the previous weighted by how much of it is still within a
// window of now.
const shareWindow = time.Second

// why says why formLocked released nothing.
type why uint8

const (
	released why = iota
	notFull      // the batch is partial and may not go now
	noSlot       // the watcher's MaxConcurrentBatches are running
	noRoom       // the capacity is short now; the owner wakes when it is not
	never        // the next operation costs more than the capacity now
	held         // eager release holds it until holdUntil
	paused       // its lane is paused
)

// maxHold is how many flush intervals an interval flush may leave a
// watcher's partial batch for, while its operations arrive fast enough to
// fill the batch by then (see fillingLocked).
const maxHold = 4

// isFull reports whether q's front makes a full batch.
func (q *queue) isFull() bool {
	return q.unbatchable > 0 || (q.w.maxBatchSize > 0 && q.ops.len() >= q.w.maxBatchSize)
}

// readyLocked puts q, which holds operations, in the rings it belongs in,
// unless its lane is paused or it waits for a slot or capacity.
func (b *Batcher) readyLocked(q *queue) {
	if q.paused || q.parked() {
		return
	}
	if !q.inReady {
		q.inReady = true
		b.mu.sched.seq++
		q.stamp = b.mu.sched.seq
		q.cls.ready.push(q)
	}
	b.fullLocked(q)
}

// fullLocked puts q in the ring of full batches if it has one.
func (b *Batcher) fullLocked(q *queue) bool {
	if q.inFull {
		return true
	}
	if q.throttled() || q.parked() || !q.isFull() {
		return false
	}
	q.inFull = true
	q.cls.full.push(q)
	return true
}

// owesLocked reports whether c has work: a full batch, or (partial set:
// with eager release or while draining) any batch, or a turn a flush owes.
func (b *Batcher) owesLocked(c *class, partial bool) bool {
	return c.full.len() > 0 || (c.ready.len() > 0 && (partial || c.ready.front().stamp <= b.mu.sched.owed))
}

// classLocked returns the class of priority p, making it if need be.
func (b *Batcher) classLocked(p int, share float64) *class {
	s := &b.mu.sched
	k := 0
	for ; k < len(s.classes); k++ {
		if c := s.classes[k]; c.prio == p {
			c.share = max(c.share, share)
			s.shares = s.shares || share > 0
			return c
		} else if c.prio < p {
			break
		}
	}
	c := &class{prio: p, share: share}
	s.shares = s.shares || share > 0
	s.classes = append(s.classes, nil)
	copy(s.classes[k+1:], s.classes[k:])
	s.classes[k] = c
	return c
}

// releaseLocked releases what may go, as long as capacity and slots allow,
// and appends the batches to out: full batches, and, while a flush owes
// queues a turn (or with eager release, or while draining), partial ones,
// taking turns between the two, full first. flush says a flush begins now;
// interval that it is the interval's, not Flush's.
func (b *Batcher) releaseLocked(now time.Time, flush, interval bool, out []*batch) []*batch {
	if !b.releasableLocked() {
		return out
	}
	s := &b.mu.sched
	if flush {
		s.owed = s.seq
		s.deferring = interval && !b.cfg.eager && b.mu.state != stateDraining
		for _, c := range s.classes {
			c.readyTurn = false // a flush releases full batches first
		}
	}
	b.advanceLocked(now)
	all := b.cfg.eager || b.mu.state == stateDraining
	for b.slotFreeLocked() {
		var (
			bt   *batch
			stop bool
		)
		// A class below its guaranteed share goes first; then the
		// highest class with work.
		if s.shares {
			if c := b.shortClassLocked(nowOf(&now), all); c != nil {
				bt, stop = b.nextOfClassLocked(c, now, all)
			}
		}
		for k := 0; bt == nil && !stop && k < len(s.classes); k++ {
			if c := s.classes[k]; b.owesLocked(c, all) {
				bt, stop = b.nextOfClassLocked(c, now, all)
			}
		}
		if bt == nil || stop {
			break
		}
		out = append(out, bt)
	}
	b.mu.pace.backlog = b.mu.buffered > 0
	return out
}

// nextOfClassLocked releases c's next batch, from the ring whose turn it
// is, or else from the other; stop says that capacity is short, and
// nothing else may go.
func (b *Batcher) nextOfClassLocked(c *class, now time.Time, all bool) (bt *batch, stop bool) {
	partial := all || (c.ready.len() > 0 && c.ready.front().stamp <= b.mu.sched.owed)
	b.mu.reserve = 0
	if len(b.mu.sched.classes) > 1 && !b.mu.unlimited {
		b.mu.reserve = b.reserveLocked(c, now)
		defer func() { b.mu.reserve = 0 }()
	}
	if c.readyTurn && partial {
		if bt, stop = b.nextReadyLocked(c, now, all); bt == nil && !stop {
			bt, stop = b.nextFullLocked(c, now)
		} else if bt != nil || c.ready.len() == 0 || c.ready.front().inFull {
			// A stop for capacity keeps the turn for a partial batch, so
			// that full ones cannot take every room that frees before it.
			c.readyTurn = false
		}
	} else {
		if bt, stop = b.nextFullLocked(c, now); bt == nil && !stop && partial {
			bt, stop = b.nextReadyLocked(c, now, all)
		} else if bt != nil {
			c.readyTurn = true
		}
	}
	if bt != nil {
		c.quantum = max(c.quantum, bt.cost)
		if b.mu.sched.shares || len(b.mu.sched.classes) > 1 {
			b.countShareLocked(c, nowOf(&now), bt.cost)
		}
	}
	return bt, stop
}

// reserveLocked returns the capacity that releases from c leave free: the
// largest batch of each higher class that released any over the last
// window (see shareWindow), so that, while a lower class would fill every
// window, a higher class's next batch finds room at once instead of
// waiting for some to free; at most the capacity less c's next operation,
// so that c can always go in time. A class below its guaranteed share
// leaves nothing.
func (b *Batcher) reserveLocked(c *class, now time.Time) int {
	s := &b.mu.sched
	if s.classes[0] == c || c.ops() == 0 {
		return 0
	}
	b.rollSharesLocked(now)
	if c.share > 0 {
		f := 1 - float64(now.UnixNano()%int64(shareWindow))/float64(shareWindow)
		total := float64(s.cur) + f*float64(s.prev)
		if float64(c.cur)+f*float64(c.prev) < c.share*total {
			return 0
		}
	}
	above := 0
	for _, h := range s.classes {
		if h == c {
			break
		}
		if h.cur > 0 || h.prev > 0 {
			above += h.quantum
		}
	}
	return max(min(above, b.mu.capacity-c.headCost()), 0)
}

// ops reports whether c has queues in its rings (0 if none).
func (c *class) ops() int { return c.full.len() + c.ready.len() }

// headCost returns the cost of the next operation of the queue at the
// front of c's rings, or 0.
func (c *class) headCost() int {
	for _, r := range []*ring[*queue]{&c.full, &c.ready} {
		if r.len() > 0 && r.front().ops.len() > 0 {
			return int(r.front().ops.at(0).cost)
		}
	}
	return 0
}

// creditLocked gives q, at the front of a ring of c, its turn's credit if
// its last turn's is spent.
func creditLocked(c *class, q *queue) {
	if q.credit <= 0 {
		q.credit += q.w.weight * max(c.quantum, 1)
	}
}

// spendLocked takes bt's cost from q's credit, and reports whether q's
// turn goes on.
func spendLocked(q *queue, bt *batch) bool {
	q.credit -= bt.cost
	if q.ops.len() == 0 {
		q.credit = 0 // a queue that empties starts afresh
	}
	return q.credit > 0
}

// nextFullLocked releases the next full batch round c's full ring, if
// any; stop says that capacity is short, and nothing else may go.
func (b *Batcher) nextFullLocked(c *class, now time.Time) (bt *batch, stop bool) {
	s := &b.mu.sched
	for c.full.len() > 0 {
		q := c.full.front()
		if q.throttled() || q.parked() || !q.isFull() {
			q.inFull = false
			c.full.popFront()
			continue
		}
		creditLocked(c, q)
		bt, why, until := b.formLocked(now, q, q.inReady && q.stamp <= s.owed)
		switch why {
		case released:
			more := spendLocked(q, bt)
			if !q.isFull() {
				q.inFull = false
				c.full.popFront()
			} else if !more {
				c.full.rotate()
			}
			return bt, false
		case noRoom:
			return nil, true
		default:
			q.inFull = false
			c.full.popFront()
			b.parkLocked(q, why, until)
		}
	}
	return nil, false
}

// nextReadyLocked releases the next batch, partial or not, round c's ready
// ring: to a queue the flush in progress owes a turn, or to any if all is
// set (eager release, draining); stop says that capacity is short, and
// nothing else may go.
func (b *Batcher) nextReadyLocked(c *class, now time.Time, all bool) (bt *batch, stop bool) {
	s := &b.mu.sched
	for c.ready.len() > 0 {
		q := c.ready.front()
		if q.paused || q.parked() || q.ops.len() == 0 {
			q.inReady = false
			c.ready.popFront()
			if q.ops.len() == 0 {
				q.flushOwed = false
				b.noteIdleLocked(q)
			}
			continue
		}
		owed := q.stamp <= s.owed
		if !all && !owed {
			return nil, false // the ring is in stamp order: the flush is over
		}
		if owed && s.deferring && !all && b.fillingLocked(q, nowOf(&now)) {
			b.rotateReadyLocked(q) // its batch fills by a later flush
			continue
		}
		creditLocked(c, q)
		bt, why, until := b.formLocked(now, q, owed)
		switch why {
		case released:
			more := spendLocked(q, bt)
			if q.ops.len() == 0 {
				q.inReady = false
				c.ready.popFront()
			} else if !more {
				b.rotateReadyLocked(q)
			}
			return bt, false
		case noRoom:
			return nil, true
		case notFull:
			return nil, false
		default:
			q.inReady = false
			c.ready.popFront()
			b.parkLocked(q, why, until)
		}
	}
	return nil, false
}

// rotateReadyLocked sends q, at the front of the ready ring, to the back
// with a new stamp.
func (b *Batcher) rotateReadyLocked(q *queue) {
	s := &b.mu.sched
	s.seq++
	q.stamp = s.seq
	q.cls.ready.rotate()
}

// parked reports whether q waits, out of the rings, for a slot of its
// own or for the capacity to change.
func (q *queue) parked() bool { return q.slotWait || q.capWait }

// parkLocked takes q, just taken off a ring, out of the rings until what
// holds it back ends.
func (b *Batcher) parkLocked(q *queue, why why, until time.Time) {
	switch why {
	case noSlot:
		q.slotWait = true // back when one of its batches completes (see slotFreedLocked)
	case never:
		if !q.capWait {
			q.capWait = true
			b.mu.sched.capWait = append(b.mu.sched.capWait, q)
		}
	case held:
		if q.inFull || q.paused {
			return // the full ring still has it: the hold is for partial batches
		}
		q.paused, q.held, q.pausedUntil = true, true, until
		b.mu.lanes.push(q)
	}
}

// throttled reports whether q's lane is paused by a throttle (not held by
// eager release, which holds partial batches only).
func (q *queue) throttled() bool { return q.paused && !q.held }

// slotFreedLocked puts q back in the rings once one of its batches has
// completed, if it waited for a slot of its own. If a flush found it
// waiting, the flush still owes it its turn: it goes first.
func (b *Batcher) slotFreedLocked(q *queue) {
	if !q.slotWait {
		return
	}
	q.slotWait = false
	if q.ops.len() == 0 || q.paused {
		return
	}
	s := &b.mu.sched
	if q.flushOwed && !q.inReady {
		q.inReady = true
		q.stamp = min(q.stamp, s.owed)
		q.cls.ready.pushFront1(q)
	}
	b.readyLocked(q)
}

// capacityChangedLocked puts back the queues that waited for the capacity
// to change; those whose next operation still costs too much come back to
// capWait at their next turn.
func (b *Batcher) capacityChangedLocked() {
	s := &b.mu.sched
	if len(s.capWait) == 0 {
		return
	}
	for _, q := range s.capWait {
		q.capWait = false
		if q.ops.len() > 0 {
			b.readyLocked(q)
		}
	}
	clear(s.capWait)
	s.capWait = s.capWait[:0]
}

// fillingLocked reports whether an interval flush at now may leave q's
// partial batch for a later flush: its operations come in a stream (they
// have come over at least a quarter of a flush interval, or its last batch
// filled from one, and the last came within the last half interval), fast
// enough that at the stream's rate the batch is at least half full before
// its oldest operation has waited maxHold flush intervals, and the next
// flush is within that. The batch then goes when it fills, or at the last
// flush within maxHold intervals: cutting it short at the first flush
// would send batches of a fraction of that (a quarter, with maxHold 4),
// each costing a release, a ProcessBatch call and a round trip to the
// datastore. So at light load (a stream that would not fill half a batch
// by then), or after a burst, every operation goes at the next flush; under
// load batches stay full, or as full as maxHold intervals of the stream
// make them, and no operation waits more than maxHold flush intervals.
func (b *Batcher) fillingLocked(q *queue, now time.Time) bool {
	n := q.w.maxBatchSize
	if n == 0 || q.sinceAt.IsZero() || q.ops.len() < 2 {
		return false
	}
	iv := b.cfg.flushInterval
	deadline := q.sinceAt.Add(maxHold * iv)
	if now.Add(iv).After(deadline) || now.Sub(q.lastAt) > iv/2 {
		return false
	}
	rate := q.rate // the stream's, from its last batch
	if span := q.lastAt.Sub(q.sinceAt); span >= iv/4 {
		rate = float64(q.ops.len()-1) / float64(span) // operations per nanosecond
	}
	return float64(q.ops.len())+rate*float64(deadline.Sub(now)) >= float64(n)/2
}

// arrivedLocked notes that a sweep at now (zero if it did not read the
// clock) brought operations to q, for fillingLocked; call it before
// pushing them.
func (q *queue) arrived(now time.Time) {
	if q.ops.len() == 0 {
		q.sinceAt = now
	}
	q.lastAt = now
}

// resetSchedLocked empties the scheduler (Close).
func (b *Batcher) resetSchedLocked() {
	cs := b.mu.sched.classes
	for _, c := range cs {
		*c = class{prio: c.prio, share: c.share}
	}
	b.mu.sched = sched{classes: cs, shares: b.mu.sched.shares}
	b.mu.lanes.clear()
}

// rollSharesLocked brings the share windows up to now.
func (b *Batcher) rollSharesLocked(now time.Time) {
	s := &b.mu.sched
	w := now.UnixNano() / int64(shareWindow)
	if w == s.window {
		return
	}
	keep := w == s.window+1 // the current window becomes the previous one
	for _, c := range s.classes {
		c.prev = 0
		if keep {
			c.prev = c.cur
		}
		c.cur = 0
	}
	s.prev = 0
	if keep {
		s.prev = s.cur
	}
	s.cur = 0
	s.window = w
}

// countShareLocked counts cost released by c at now.
func (b *Batcher) countShareLocked(c *class, now time.Time, cost int) {
	b.rollSharesLocked(now)
	c.cur += int64(cost)
	b.mu.sched.cur += int64(cost)
}

// shortClassLocked returns the first class, by priority, with work and a
// guaranteed share that it has not had over the last window, or nil.
func (b *Batcher) shortClassLocked(now time.Time, all bool) *class {
	s := &b.mu.sched
	b.rollSharesLocked(now)
	f := 1 - float64(now.UnixNano()%int64(shareWindow))/float64(shareWindow) // of the previous window still within one of now
	total := float64(s.cur) + f*float64(s.prev)
	if total <= 0 {
		return nil
	}
	for _, c := range s.classes {
		if c.share > 0 && b.owesLocked(c, all) && float64(c.cur)+f*float64(c.prev) < c.share*total {
			return c
		}
	}
	return nil
}

// pressureFlushLocked is a flush for a full buffer: when Enqueue finds no
// room, no full batch waits and none runs (whose end would free room), the
// buffer holds only partial batches, which would otherwise wait for the
// flush interval while their producers wait for room; it releases them
// now, within capacity and slots, and the flush goes on as those free. It releases nothing itself: the unlock
// that follows does (see releaseTouchedLocked).
func (b *Batcher) pressureFlushLocked() {
	s := &b.mu.sched
	b.sweepLocked() // what other CPUs' shards hold is in the buffer too
	if b.mu.outstanding > b.mu.buffered || !b.releasableLocked() {
		return // running batches will free room
	}
	for _, c := range s.classes {
		if c.full.len() > 0 {
			return // full batches wait
		}
	}
	s.owed, s.deferring = s.seq, false
	b.mu.pressure = true
}

// nowOf returns *t, reading the clock into it first if it is zero.
func nowOf(t *time.Time) time.Time {
	if t.IsZero() {
		*t = time.Now()
	}
	return *t
}
