// Package memlease is an in-memory [ratelimiter.LeaseManager] for tests: one
// Store shared by several SharedResources in one process stands in for Azure
// Blob Storage, Redis or etcd. It reads time.Now, so under testing/synctest
// its leases expire on the fake clock.
//
// A Store can be made to fail (SetErr) or to hang until the caller's context
// ends (SetHang), as a store that is down or unreachable does.
package memlease

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ratebatch/batcher/ratelimiter"
)

// A Store is an in-memory lease store. Its zero value is not usable; call New.
type Store struct {
	mu       sync.Mutex
	n        int
	leases   map[int]lease
	demands  map[string]demand
	err      error
	hang     bool
	calls    int
	acquires int
}

type lease struct {
	owner string
	until time.Time
}

type demand struct {
	d     ratelimiter.Demand
	until time.Time
}

// New returns an empty Store.
func New() *Store {
	return &Store{leases: make(map[int]lease), demands: make(map[string]demand)}
}

var _ ratelimiter.LeaseManager = (*Store)(nil)

// SetErr makes every call fail with err until SetErr(nil).
func (s *Store) SetErr(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

// SetHang makes every call block until its context ends, until
// SetHang(false).
func (s *Store) SetHang(hang bool) {
	s.mu.Lock()
	s.hang = hang
	s.mu.Unlock()
}

// Forget drops every lease and demand, as a store that restarts without
// persistence does.
func (s *Store) Forget() {
	s.mu.Lock()
	clear(s.leases)
	clear(s.demands)
	s.mu.Unlock()
}

// Holder returns the owner of partition p's lease, or "" if nobody holds it.
func (s *Store) Holder(p int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.leases[p]
	if !ok || !time.Now().Before(l.until) {
		return ""
	}
	return l.owner
}

// Held returns how many partitions owner holds.
func (s *Store) Held(owner string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	now := time.Now()
	for _, l := range s.leases {
		if l.owner == owner && now.Before(l.until) {
			n++
		}
	}
	return n
}

// Calls returns how many calls the store has answered or refused.
func (s *Store) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Acquires returns how many Acquire calls the store has seen.
func (s *Store) Acquires() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acquires
}

// enter counts a call, and returns the store's error, or ctx's after
// waiting for it when the store hangs. On nil, s.mu is held.
func (s *Store) enter(ctx context.Context) error {
	s.mu.Lock()
	s.calls++
	if s.hang {
		s.mu.Unlock()
		<-ctx.Done()
		return ctx.Err()
	}
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return err
	}
	if err := ctx.Err(); err != nil {
		s.mu.Unlock()
		return err
	}
	return nil
}

func (s *Store) check(p int) error {
	if p < 0 || p >= s.n {
		return fmt.Errorf("memlease: partition %d out of range [0, %d): call Provision first", p, s.n)
	}
	return nil
}

// Provision implements ratelimiter.LeaseManager.
func (s *Store) Provision(ctx context.Context, n int) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if n < 0 {
		return fmt.Errorf("memlease: Provision(%d): negative partition count", n)
	}
	s.n = max(s.n, n)
	return nil
}

// Acquire implements ratelimiter.LeaseManager.
func (s *Store) Acquire(ctx context.Context, p int, owner string, d time.Duration) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.acquires++
	if err := s.check(p); err != nil {
		return err
	}
	now := time.Now()
	if l, ok := s.leases[p]; ok && l.owner != owner && now.Before(l.until) {
		return fmt.Errorf("memlease: partition %d: %w", p, ratelimiter.ErrLeaseHeld)
	}
	s.leases[p] = lease{owner: owner, until: now.Add(d)}
	return nil
}

// Renew implements ratelimiter.LeaseManager.
func (s *Store) Renew(ctx context.Context, p int, owner string, d time.Duration) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if err := s.check(p); err != nil {
		return err
	}
	now := time.Now()
	l, ok := s.leases[p]
	if !ok || l.owner != owner || !now.Before(l.until) {
		return fmt.Errorf("memlease: partition %d: %w", p, ratelimiter.ErrLeaseLost)
	}
	s.leases[p] = lease{owner: owner, until: now.Add(d)}
	return nil
}

// Release implements ratelimiter.LeaseManager.
func (s *Store) Release(ctx context.Context, p int, owner string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if err := s.check(p); err != nil {
		return err
	}
	if l, ok := s.leases[p]; ok && l.owner == owner {
		delete(s.leases, p)
	}
	return nil
}

// Announce implements ratelimiter.LeaseManager.
func (s *Store) Announce(ctx context.Context, d ratelimiter.Demand) ([]ratelimiter.Demand, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	now := time.Now()
	d.Held = slices.Clone(d.Held)
	s.demands[d.Owner] = demand{d: d, until: now.Add(d.TTL)}
	var out []ratelimiter.Demand
	for owner, dd := range s.demands {
		if !now.Before(dd.until) {
			delete(s.demands, owner)
			continue
		}
		c := dd.d
		c.TTL = 0
		c.Held = slices.Clone(c.Held)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b ratelimiter.Demand) int {
		switch {
		case a.Owner < b.Owner:
			return -1
		case a.Owner > b.Owner:
			return 1
		}
		return 0
	})
	return out, nil
}
