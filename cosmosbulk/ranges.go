package cosmosbulk

import (
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
)

// ranges is what a Loader learned from the service's answers: the
// partition key range of each key, and each range's throttle lane and
// watchers.
type ranges struct {
	mu    sync.Mutex
	keys  map[string]string     // partition key → range id
	lanes map[string]*rangeLane // range id → its lane
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

// watcherOf returns the watcher an item of partition key pk goes to: its
// bucket's watcher in the lane of its range, once an answer named the
// range, or in the default lane (def) until then.
func (l *Loader) watcherOf(pk string, def []*batcher.Watcher) *batcher.Watcher {
	bucket := laneOf(pk, len(def))
	r := &l.ranges
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.keys[pk]
	if !ok {
		return def[bucket]
	}
	rl := r.lanes[id]
	if rl.w[bucket] == nil {
		rl.w[bucket] = l.newWatcher(rl.lane)
	}
	return rl.w[bucket]
}

// learn records that an answer to a request for partition key pk came from
// range id ("": the answer did not say). A key whose range changed (its
// partition split) moves to the new range's lane.
func (l *Loader) learn(pk, id string) {
	if id == "" {
		return
	}
	r := &l.ranges
	r.mu.Lock()
	defer r.mu.Unlock()
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
