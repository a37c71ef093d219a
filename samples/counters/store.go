package counters

import (
	"context"
	"maps"
	"sync"
)

// A Delta is one key's sum from one flush: what a Store adds to the key.
type Delta struct {
	// Key is the counter's key.
	Key string
	// N is the sum of the key's increments in the flush.
	N int64
	// Flush identifies the flush the delta came from, unique to the
	// Counter that made it. A Store applies at most one delta per (Flush,
	// Key), however many times it is asked to.
	Flush string
}

// A Store adds deltas to counters, exactly once per delta.
//
// Apply adds each delta's N to its key, skipping deltas whose (Flush, Key)
// it has already applied, and returns how many it applied. It is called again
// with the same deltas, possibly in other batches, when it returned an error,
// and must then apply each delta no more than once in all: either all of a
// call's deltas are applied or none are, or it skips those applied before.
// It must be safe for concurrent use.
type Store interface {
	Apply(ctx context.Context, deltas []Delta) (applied int, err error)
}

// MemoryStore is a Store in memory, for tests and examples. The zero value is
// not ready: use NewMemoryStore. It is safe for concurrent use.
type MemoryStore struct {
	mu      sync.Mutex
	counts  map[string]int64
	applied map[[2]string]bool
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{counts: map[string]int64{}, applied: map[[2]string]bool{}}
}

// Apply adds the deltas not applied before, all at once.
func (s *MemoryStore) Apply(ctx context.Context, deltas []Delta) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, d := range deltas {
		id := [2]string{d.Flush, d.Key}
		if s.applied[id] {
			continue
		}
		s.applied[id] = true
		s.counts[d.Key] += d.N
		n++
	}
	return n, nil
}

// Get returns key's count.
func (s *MemoryStore) Get(key string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[key]
}

// Counts returns a copy of every count.
func (s *MemoryStore) Counts() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.counts)
}
