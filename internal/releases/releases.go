// Package releases records when cost was released and checks it against a
// capacity over every sliding window. Tests and the benchmark use it.
package releases

import (
	"slices"
	"sync"
	"time"
)

// A Release is cost released at a time.
type Release struct {
	At   time.Time
	Cost int
}

// Log is a mutex-guarded record of releases. The zero value is empty.
type Log struct {
	mu   sync.Mutex
	list []Release
}

// Add records cost released now.
func (l *Log) Add(cost int) { l.AddAt(time.Now(), cost) }

// AddAt records cost released at t.
func (l *Log) AddAt(t time.Time, cost int) {
	l.mu.Lock()
	l.list = append(l.list, Release{t, cost})
	l.mu.Unlock()
}

// All returns a copy of the releases, in time order.
func (l *Log) All() []Release {
	l.mu.Lock()
	out := slices.Clone(l.list)
	l.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Release) int { return a.At.Compare(b.At) })
	return out
}

// Total returns the cost released in all.
func (l *Log) Total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.list {
		n += r.Cost
	}
	return n
}

// MaxWindow returns the most cost released in any half-open window
// [t, t+span), and where the worst window starts. rs must be in time order.
func MaxWindow(rs []Release, span time.Duration) (peak int, at time.Time) {
	sum, j := 0, 0
	for i := range rs {
		// The worst window can be taken to start at a release.
		for j < len(rs) && rs[j].At.Before(rs[i].At.Add(span)) {
			sum += rs[j].Cost
			j++
		}
		if sum > peak {
			peak, at = sum, rs[i].At
		}
		sum -= rs[i].Cost
	}
	return peak, at
}

// Between returns the cost released in [from, to).
func Between(rs []Release, from, to time.Time) int {
	n := 0
	for _, r := range rs {
		if !r.At.Before(from) && r.At.Before(to) {
			n += r.Cost
		}
	}
	return n
}
