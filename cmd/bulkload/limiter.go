package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/leasestore"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
)

// newLimiter returns the loader's rate limiter. With -limiter fixed it
// grants -capacity; with -limiter controller (the default), a
// ratelimiter.Controller finds what the service really serves, up to
// -capacity (see controlled). With -lease-store, the capacity is -capacity
// shared with every loader that uses the same store and prefix, plus
// -reserved of its own (and a controller keeps within that share). A store
// that does not answer at start is an error (within
// leasestore.CheckTimeout); one that goes away later is survived on the
// reserved capacity, said once on stderr when it goes and once when it
// answers again, and shown on the progress line meanwhile (see
// storeWatch). The close function closes the lease store's client, after
// the Batcher has shut down.
func newLimiter(ctx context.Context, cfg config, prog *progress) (batcher.RateLimiter, func(), error) {
	if cfg.leaseStore == "" {
		if cfg.limiter == limiterFixed {
			return ratelimiter.NewProvisioned(cfg.capacity), func() {}, nil
		}
		c := newController(cfg.capacity)
		prog.setStatus(func(time.Time) string { return "limit " + commas(int64(c.Capacity())) })
		return c, func() {}, nil
	}
	store, err := leasestore.Parse(cfg.leaseStore)
	if err != nil {
		return nil, nil, err
	}
	mgr, closeStore, err := store.Open(ctx, cfg.leasePrefix)
	if err != nil {
		return nil, nil, err
	}
	r := ratelimiter.NewSharedResource().
		WithReservedCapacity(cfg.reserved).
		WithSharedCapacity(cfg.capacity, mgr).
		WithFactor(cfg.factor)
	w := &storeWatch{name: store.String(), reserved: cfg.reserved, unit: cfg.unit(), w: prog.w}
	r.AddListener(w.event)
	var lim batcher.RateLimiter = r
	if cfg.limiter == limiterController {
		lim = newControlled(newController(cfg.capacity+cfg.reserved), r)
	}
	prog.setStatus(func(now time.Time) string { return w.status(now, lim.Capacity()) })
	return lim, closeStore, nil
}

// newController returns the Controller of -limiter controller, which
// starts at half its ceiling rather than the Controller's default 1/32:
// with -capacity right (the default run) it reaches it in one doubling, a
// quarter of a second. Measured alternated with a start at a quarter
// (2026-12-07, 2 runs each, 2% margin): the default run took 6.66-6.73 s
// against 6.83-6.92 s (ideal 6.34 s); issue 14's check (-capacity 20 times
// too high) took 35.6-36.4 s with 23-24 429s of 525-543 requests against
// 39.8 s with 13-14 of 592-607 (ideal 34.3 s). A start at the ceiling
// took 6.54 s and 38.8 s with 31 429s of 599 (5.2%).
func newController(ceiling int) *ratelimiter.Controller {
	return ratelimiter.NewController(ceiling).WithInitial(max(ceiling/2, 1))
}

// The -limiter values.
const (
	limiterController = "controller"
	limiterFixed      = "fixed"
)

// controlled is a Controller kept within another limiter's capacity (a
// share of a lease store's): it grants the lesser of the two, asks the
// other for no more than the Controller grants (so that it leases no share
// it would not use), and tells the Controller how each batch went.
type controlled struct {
	ctrl  *ratelimiter.Controller
	inner batcher.RateLimiter

	mu struct {
		sync.Mutex
		next int
		ids  map[int][2]int // a listener's ids in ctrl and inner
	}
}

func newControlled(ctrl *ratelimiter.Controller, inner batcher.RateLimiter) *controlled {
	c := &controlled{ctrl: ctrl, inner: inner}
	c.mu.ids = map[int][2]int{}
	return c
}

func (c *controlled) MaxCapacity() int { return min(c.ctrl.MaxCapacity(), c.inner.MaxCapacity()) }
func (c *controlled) Capacity() int    { return min(c.ctrl.Capacity(), c.inner.Capacity()) }

func (c *controlled) GiveMe(demand int) {
	c.ctrl.GiveMe(demand)
	c.inner.GiveMe(min(demand, c.ctrl.Capacity()))
}

// Start starts the inner limiter first: a lease store that does not
// answer is an error before the Controller runs.
func (c *controlled) Start(ctx context.Context) error {
	if err := c.inner.Start(ctx); err != nil {
		return err
	}
	if err := c.ctrl.Start(ctx); err != nil {
		if s, ok := c.inner.(batcher.Stopper); ok {
			_ = s.Stop(ctx)
		}
		return err
	}
	return nil
}

func (c *controlled) Stop(ctx context.Context) error {
	err := c.ctrl.Stop(ctx)
	if s, ok := c.inner.(batcher.Stopper); ok {
		err = errors.Join(err, s.Stop(ctx))
	}
	return err
}

func (c *controlled) ObserveBatch(o batcher.BatchOutcome) {
	c.ctrl.ObserveBatch(o)
	if l, ok := c.inner.(batcher.Learner); ok {
		l.ObserveBatch(o)
	}
}

// AddListener listens to both limiters' events.
func (c *controlled) AddListener(fn func(batcher.Event)) int {
	ids := [2]int{c.ctrl.AddListener(fn), -1}
	if s, ok := c.inner.(batcher.EventSource); ok {
		ids[1] = s.AddListener(fn)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.next++
	c.mu.ids[c.mu.next] = ids
	return c.mu.next
}

func (c *controlled) RemoveListener(id int) {
	c.mu.Lock()
	ids, ok := c.mu.ids[id]
	delete(c.mu.ids, id)
	c.mu.Unlock()
	if !ok {
		return
	}
	c.ctrl.RemoveListener(ids[0])
	if s, ok := c.inner.(batcher.EventSource); ok && ids[1] >= 0 {
		s.RemoveListener(ids[1])
	}
}

// storeWatch follows a shared limiter's lease store: whether it answers,
// for the progress line and for one line on stderr at each change.
type storeWatch struct {
	name     string // the store's address, redacted
	reserved int
	unit     string
	w        io.Writer

	mu struct {
		sync.Mutex
		down   bool
		since  time.Time
		errors int
	}
}

// event notes a limiter event: a LimiterError means the store failed; a
// ProvisionDone, the first call of the limiter's round after a failure,
// means it answers again.
func (s *storeWatch) event(e batcher.Event) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch e.Kind {
	case batcher.LimiterError:
		s.mu.errors++
		if !s.mu.down {
			s.mu.down, s.mu.since = true, now
			fmt.Fprintf(s.w, "\nbulkload: lease store %s failed, using the reserved %s %s/s until it answers: %s\n",
				s.name, commas(int64(s.reserved)), s.unit, oneLine(redact.String(e.Err.Error())))
		}
	case batcher.ProvisionDone:
		if s.mu.down {
			s.mu.down = false
			fmt.Fprintf(s.w, "\nbulkload: lease store %s answers again, after %s\n", s.name, now.Sub(s.mu.since).Round(100*time.Millisecond))
		}
	}
}

// status is the progress line's part about the limit: the capacity the
// limiter grants now, and how long the store has been failing if it is.
func (s *storeWatch) status(now time.Time, capacity int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fmt.Sprintf("limit %s", commas(int64(capacity)))
	if s.mu.down {
		st += fmt.Sprintf(" (lease store down %s, on the reserved %s)", now.Sub(s.mu.since).Round(time.Second), commas(int64(s.reserved)))
	}
	return st
}

// oneLine joins a multi-line message (an Azure error's) into one line of
// at most 300 bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:297] + "..."
	}
	return s
}
