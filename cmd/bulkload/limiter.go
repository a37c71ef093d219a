package main

import (
	"context"
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

// newLimiter returns the loader's rate limiter: -capacity provisioned, or,
// with -lease-store, -capacity shared with every loader that uses the same
// store and prefix, plus -reserved of its own. A store that does not answer
// at start is an error (within leasestore.CheckTimeout); one that goes away
// later is survived on the reserved capacity, said once on stderr when it
// goes and once when it answers again, and shown on the progress line
// meanwhile (see storeWatch). The close function closes the lease store's
// client, after the Batcher has shut down.
func newLimiter(ctx context.Context, cfg config, prog *progress) (batcher.RateLimiter, func(), error) {
	if cfg.leaseStore == "" {
		return ratelimiter.NewProvisioned(cfg.capacity), func() {}, nil
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
	prog.setStatus(func(now time.Time) string { return w.status(now, r.Capacity()) })
	return r, closeStore, nil
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
