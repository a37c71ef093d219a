package batcher

import (
	"math/rand/v2"
	"slices"
	"time"
)

// Lanes. A throttle pauses the operations that share its cause, the lane,
// which is the watcher whose batch was throttled: never the rest of the
// Batcher (an explicit Pause stays Batcher-wide). Each watcher's queue
// carries its lane's state: whether it is paused and until when, and its
// run of throttles. A paused queue leaves the sets of queues to release
// from (see sched) and waits in a timer heap, ordered by the end of its
// pause, so that releases from the other lanes cost the same while any
// number of lanes are paused; the owner goroutine wakes for the earliest
// end and puts the queue back.

// A Lane groups watchers whose operations share one cause of throttles:
// a throttle of any of them pauses them all (see [Watcher.WithLane]).
// Without one, each watcher is a lane of its own. Create it with
// [NewLane]; its zero value is not for use. A Lane may be used by several
// Batchers, and is then a lane of its own in each. It is safe for
// concurrent use.
type Lane struct {
	_ byte // a Lane has an identity: pointers to distinct Lanes differ
}

// NewLane returns a new lane, for watchers whose throttles share one cause,
// such as the physical partition of a datastore that several watchers
// write to.
func NewLane() *Lane { return &Lane{} }

// laneState is a shared lane's state in one Batcher: its queues (those the
// Batcher holds now), and its run of throttles.
type laneState struct {
	queues []*queue
	streak int
	pauses uint64
}

// sharedLaneLocked joins q to its watcher's shared lane, if it has one,
// pausing it if the lane is paused.
func (b *Batcher) sharedLaneLocked(q *queue) {
	if q.w.lane == nil {
		return
	}
	if b.mu.sharedLanes == nil {
		b.mu.sharedLanes = map[*Lane]*laneState{}
	}
	ls := b.mu.sharedLanes[q.w.lane]
	if ls == nil {
		ls = &laneState{}
		b.mu.sharedLanes[q.w.lane] = ls
	}
	for _, o := range ls.queues {
		if o.throttled() {
			b.pauseLaneLocked(q, o.pausedUntil)
			break
		}
	}
	ls.queues = append(ls.queues, q)
	q.shared = ls
}

// leaveLaneLocked takes q, which the Batcher forgets, out of its shared
// lane.
func (b *Batcher) leaveLaneLocked(q *queue) {
	ls := q.shared
	if ls == nil {
		return
	}
	if i := slices.Index(ls.queues, q); i >= 0 {
		ls.queues = slices.Delete(ls.queues, i, i+1)
	}
	if len(ls.queues) == 0 {
		delete(b.mu.sharedLanes, q.w.lane)
	}
	q.shared = nil
}

// throttleJitter is the spread of a pause without a retry-after: the pause
// is its nominal length times a factor drawn uniformly from
// [1-throttleJitter, 1+throttleJitter), so that lanes (and instances) that
// were throttled together do not all come back at the same moment.
const throttleJitter = 0.2

// lanePause computes the pause of a lane after a throttle. retryAfter is
// what the datastore asked for (0 or less: it did not say); streak counts
// the throttles in a row, this one included (at least 1). A retry-after is
// waited exactly, capped at maxPause; without one the pause is pause
// doubled for each throttle in a row after the first, times a jitter
// factor (see throttleJitter), at most maxPause. u is a uniform number in
// [0, 1).
func lanePause(retryAfter time.Duration, streak int, pause, maxPause time.Duration, u float64) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, maxPause)
	}
	d := pause
	for i := 1; i < streak && d < maxPause; i++ {
		d *= 2
	}
	d = min(d, maxPause)
	f := 1 - throttleJitter + 2*throttleJitter*u
	return min(time.Duration(float64(d)*f), maxPause)
}

// throttledLocked pauses q's lane after a throttle of bt and returns the
// pause. A throttle of a batch released before the lane's current run of
// pauses began (concurrent batches throttled together) does not count as a
// repeat; a longer pause already under way is kept.
func (b *Batcher) throttledLocked(now time.Time, bt *batch, retryAfter time.Duration) time.Duration {
	q := bt.q
	streak, pauses := &q.streak, &q.pauses
	if q.shared != nil {
		streak, pauses = &q.shared.streak, &q.shared.pauses
	}
	if *streak == 0 || bt.pauses == *pauses {
		*streak++
		*pauses++
	}
	d := lanePause(retryAfter, *streak, b.cfg.pauseTime, b.cfg.maxPauseTime, rand.Float64())
	if q.shared == nil {
		b.pauseLaneLocked(q, now.Add(d))
		return d
	}
	for _, o := range q.shared.queues {
		b.pauseLaneLocked(o, now.Add(d))
	}
	return d
}

// lanePauses returns the count of pauses of q's lane.
func (q *queue) lanePauses() uint64 {
	if q.shared != nil {
		return q.shared.pauses
	}
	return q.pauses
}

// laneSucceeded ends the run of throttles of q's lane.
func (q *queue) laneSucceeded() {
	if q.shared != nil {
		q.shared.streak = 0
	} else {
		q.streak = 0
	}
}

// pauseLaneLocked makes sure q's lane releases nothing before until.
func (b *Batcher) pauseLaneLocked(q *queue, until time.Time) {
	if q.paused {
		if until.After(q.pausedUntil) {
			q.pausedUntil = until
			b.mu.lanes.fix(q)
		}
		return
	}
	q.paused, q.pausedUntil = true, until
	b.mu.lanes.push(q)
}

// resumeLanesLocked ends the lane pauses that are over at now, puts their
// queues back among those to release from, and appends a Resumed event for
// each to evs.
func (b *Batcher) resumeLanesLocked(now time.Time, evs []Event) []Event {
	for b.mu.lanes.len() > 0 {
		q := b.mu.lanes.peek()
		if now.Before(q.pausedUntil) {
			break
		}
		b.mu.lanes.pop()
		wasHeld := q.held
		q.paused, q.held = false, false
		if q.ops.len() > 0 {
			b.readyLocked(q)
		} else {
			b.noteIdleLocked(q)
		}
		if !wasHeld {
			evs = append(evs, Event{Kind: Resumed, Watcher: q.w})
		}
	}
	return evs
}

// laneHeap is a min-heap of paused queues by the end of their pause. Each
// queue knows its index (queue.laneAt), so that a pause that lengthens
// moves it in O(log n).
type laneHeap struct{ h []*queue }

func (l *laneHeap) len() int     { return len(l.h) }
func (l *laneHeap) peek() *queue { return l.h[0] }
func (l *laneHeap) less(i, j int) bool {
	return l.h[i].pausedUntil.Before(l.h[j].pausedUntil)
}

func (l *laneHeap) swap(i, j int) {
	l.h[i], l.h[j] = l.h[j], l.h[i]
	l.h[i].laneAt, l.h[j].laneAt = i, j
}

func (l *laneHeap) push(q *queue) {
	q.laneAt = len(l.h)
	l.h = append(l.h, q)
	l.up(q.laneAt)
}

func (l *laneHeap) pop() *queue {
	q := l.h[0]
	last := len(l.h) - 1
	l.swap(0, last)
	l.h[last] = nil
	l.h = l.h[:last]
	if last > 0 {
		l.down(0)
	}
	q.laneAt = -1
	return q
}

// fix restores the order after q's pause changed.
func (l *laneHeap) fix(q *queue) {
	if !l.down(q.laneAt) {
		l.up(q.laneAt)
	}
}

func (l *laneHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !l.less(i, p) {
			return
		}
		l.swap(i, p)
		i = p
	}
}

func (l *laneHeap) down(i0 int) bool {
	i := i0
	for {
		c := 2*i + 1
		if c >= len(l.h) {
			break
		}
		if r := c + 1; r < len(l.h) && l.less(r, c) {
			c = r
		}
		if !l.less(c, i) {
			break
		}
		l.swap(i, c)
		i = c
	}
	return i > i0
}

// clear empties the heap (Close).
func (l *laneHeap) clear() {
	for _, q := range l.h {
		q.laneAt, q.paused, q.held = -1, false, false
	}
	l.h = nil
}
