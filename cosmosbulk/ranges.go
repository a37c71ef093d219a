package cosmosbulk

import (
	"context"
	"fmt"
	"sync"

	"github.com/ratebatch/batcher"
)

// Bounds of what a Loader learns of partition key ranges (see the package
// doc's Lanes).
const (
	// maxKnownKeys is the most partition keys whose range a Loader
	// remembers; beyond it, an arbitrary one is forgotten for each new one
	// (a forgotten key goes back to the default lane until its next
	// answer).
	maxKnownKeys = 1 << 16
	// maxRanges is the most partition key ranges with lanes of their own;
	// the keys of further ranges stay in the default lane. A container has
	// one range per physical partition, about one per 10,000 RU/s or 50 GB.
	maxRanges = 1024
	// maxHeld is the most items a Loader holds while their keys' first
	// writes learn the keys' ranges; beyond it, items of such keys go to
	// the default lane at once.
	maxHeld = 1 << 16
)

// ranges is what a Loader learned from the service's answers: the
// partition key range of each key, and each range's throttle lane and
// watchers.
type ranges struct {
	mu       sync.Mutex
	keys     map[string]string     // partition key → range id
	lanes    map[string]*rangeLane // range id → its lane
	learning map[string]*learning  // partition key → its first write in flight
	held     int                   // items held in learning's pending lists
	// noRangeIDs is set by an answer that named no range: the service does
	// not tell ranges, so nothing is held any more.
	noRangeIDs bool
}

// learning is a key whose first write is in flight, in the default lane,
// to learn the key's range; the key's further items wait in pending.
type learning struct {
	learned chan struct{} // closed once an answer has spoken for the key
	closed  bool
	pending []*Write
}

// route is where Load puts an item: in watcher w (of range rangeID's lane,
// or the default lane if ""), or held (the Write is in its key's pending
// list); learner is set if the item is its key's first write in flight.
type route struct {
	w       *batcher.Watcher
	rangeID string
	held    bool
	learner *learning
}

// rangeLane is one partition key range's throttle lane and its watchers,
// one per bucket of keys, created when first needed.
type rangeLane struct {
	lane *batcher.Lane
	w    []*batcher.Watcher
}

// newWatcher returns a watcher with the Loader's settings in lane.
func (l *Loader) newWatcher(lane *batcher.Lane) *batcher.Watcher {
	return batcher.NewWatcherFor(l).WithMaxBatchSize(l.maxBatchSize).WithMaxAttempts(l.maxAttempts).WithLane(lane)
}

// route returns where Load puts w, an item of partition key pk: its
// bucket's watcher in its range's lane once an answer named the range; held
// while the key's first write is in flight; or, as that first write, or
// when ranges are off, unknown or too many are held, in the default lane
// (def).
func (l *Loader) route(pk string, def []*batcher.Watcher, w *Write) route {
	bucket := laneOf(pk, len(def))
	if !l.rangeLanes {
		return route{w: def[bucket]}
	}
	r := &l.ranges
	r.mu.Lock()
	defer r.mu.Unlock()
	if id, ok := r.keys[pk]; ok {
		return route{w: l.rangeWatcherLocked(id, bucket), rangeID: id}
	}
	if r.noRangeIDs {
		return route{w: def[bucket]}
	}
	if lr := r.learning[pk]; lr != nil {
		if r.held >= maxHeld {
			return route{w: def[bucket]}
		}
		lr.pending = append(lr.pending, w)
		r.held++
		return route{held: true}
	}
	if r.learning == nil {
		r.learning = map[string]*learning{}
	}
	lr := &learning{learned: make(chan struct{})}
	r.learning[pk] = lr
	return route{w: def[bucket], learner: lr}
}

// rangeWatcherLocked returns the watcher of bucket in range id's lane.
func (l *Loader) rangeWatcherLocked(id string, bucket int) *batcher.Watcher {
	rl := l.ranges.lanes[id]
	if rl.w[bucket] == nil {
		rl.w[bucket] = l.newWatcher(rl.lane)
	}
	return rl.w[bucket]
}

// awaitRange waits until an answer has spoken for key pk, whose first
// write is op, or until op has ended (without an answer: refused, retries
// run out, shut down), then releases the items held for the key.
func (l *Loader) awaitRange(pk string, lr *learning, op *batcher.Operation) {
	select {
	case <-lr.learned:
	case <-op.Done():
	}
	l.releaseHeld(pk, lr)
}

// releaseHeld enqueues the items held for key pk, whose first write was
// lr: in its range's lane if an answer named it, or in the default lane.
// The key is no longer learning: if its range is still unknown, its next
// item is a first write again.
func (l *Loader) releaseHeld(pk string, lr *learning) {
	r := &l.ranges
	r.mu.Lock()
	pending := lr.pending
	lr.pending = nil
	r.held -= len(pending)
	if r.learning[pk] == lr {
		delete(r.learning, pk)
	}
	r.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	bucket := laneOf(pk, len(l.w))
	for _, w := range pending {
		wt, id := l.w[bucket], ""
		r.mu.Lock()
		if known, ok := r.keys[pk]; ok {
			wt, id = l.rangeWatcherLocked(known, bucket), known
		}
		r.mu.Unlock()
		op := batcher.NewOperation(wt, l.declare(w.item), w.item, true)
		// No deadline: the wait for room ends when the buffer drains or
		// the Batcher shuts down, which refuses the item.
		if err := l.b.EnqueueContext(context.Background(), op); err != nil {
			w.set(nil, "", fmt.Errorf("cosmosbulk: item %q: %w", w.item.ID, err))
			continue
		}
		w.set(op, id, nil)
	}
}

// learn records that an answer to a request for partition key pk came from
// range id ("": the answer did not say, or there was no answer if answered
// is false). A key whose range changed (its partition split) moves to the
// new range's lane. An answer that names no range tells that the service
// does not name them: the Loader then holds no more items.
func (l *Loader) learn(pk, id string, answered bool) {
	if !l.rangeLanes || (id == "" && !answered) {
		return
	}
	r := &l.ranges
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.spokenLocked(pk)
	if id == "" {
		r.noRangeIDs = true
		return
	}
	old, known := r.keys[pk]
	if known && old == id {
		return
	}
	if r.lanes == nil {
		r.keys, r.lanes = map[string]string{}, map[string]*rangeLane{}
	}
	if r.lanes[id] == nil {
		if len(r.lanes) >= maxRanges {
			return
		}
		r.lanes[id] = &rangeLane{lane: batcher.NewLane(), w: make([]*batcher.Watcher, l.lanes)}
	}
	if !known && len(r.keys) >= maxKnownKeys {
		for k := range r.keys {
			delete(r.keys, k)
			break
		}
	}
	r.keys[pk] = id
}

// spokenLocked wakes the first write in flight of key pk, if any, to
// release the items held for the key.
func (r *ranges) spokenLocked(pk string) {
	if lr := r.learning[pk]; lr != nil && !lr.closed {
		lr.closed = true
		close(lr.learned)
	}
}

// answered reports whether err, the error of a request, came with the
// service's answer (nil, or a status code), rather than without one (a
// reset, a timeout, a cancelled context).
func answered(err error) bool { return err == nil || StatusCode(err) != 0 }
