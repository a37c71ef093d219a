package main

import (
	"context"
	"fmt"
	"os"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/leasestore"
	"github.com/ratebatch/batcher/ratelimiter"
)

// newLimiter returns the loader's rate limiter: -capacity provisioned, or,
// with -lease-store, -capacity shared with every loader that uses the same
// store and prefix, plus -reserved of its own; the lease store's errors go
// to standard error. The close function closes the lease store's client,
// after the Batcher has shut down.
func newLimiter(ctx context.Context, cfg config) (batcher.RateLimiter, func(), error) {
	if cfg.leaseStore == "" {
		return ratelimiter.NewProvisioned(cfg.capacity), func() {}, nil
	}
	kind, addr, err := leasestore.Parse(cfg.leaseStore)
	if err != nil {
		return nil, nil, err
	}
	mgr, closeStore, err := leasestore.Open(ctx, kind, addr, cfg.leasePrefix)
	if err != nil {
		return nil, nil, fmt.Errorf("-lease-store %s: %w", cfg.leaseStore, err)
	}
	r := ratelimiter.NewSharedResource().
		WithReservedCapacity(cfg.reserved).
		WithSharedCapacity(cfg.capacity, mgr).
		WithFactor(cfg.factor)
	r.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.LimiterError {
			fmt.Fprintf(os.Stderr, "bulkload: lease store %s: %v (using the reserved %d until it answers)\n", cfg.leaseStore, e.Err, cfg.reserved)
		}
	})
	return r, closeStore, nil
}
