package memlease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ratebatch/batcher/internal/leasetest"
	"github.com/ratebatch/batcher/internal/memlease"
	"github.com/ratebatch/batcher/ratelimiter"
)

// TestConformance runs the lease-manager suite on real time. Each subtest
// gets its own Store, which stands for a fresh key space.
func TestConformance(t *testing.T) {
	leasetest.Run(t, func(t *testing.T) ratelimiter.LeaseManager {
		return memlease.New()
	}, leasetest.Options{
		// Short, but long enough that a loaded machine (make test runs
		// every package at once, with -race) does not stall past them.
		MinDuration: time.Second,
		Grace:       500 * time.Millisecond,
	})
}

// TestHangHonoursContext checks that a hanging Store returns each call with
// ctx's error when ctx ends, as a store that does not answer should.
func TestHangHonoursContext(t *testing.T) {
	s := memlease.New()
	s.SetHang(true)
	const after = 20 * time.Millisecond
	calls := map[string]func(ctx context.Context) error{
		"Provision": func(ctx context.Context) error { return s.Provision(ctx, 1) },
		"Acquire":   func(ctx context.Context) error { return s.Acquire(ctx, 0, "a", time.Second) },
		"Renew":     func(ctx context.Context) error { return s.Renew(ctx, 0, "a", time.Second) },
		"Release":   func(ctx context.Context) error { return s.Release(ctx, 0, "a") },
		"Announce": func(ctx context.Context) error {
			_, err := s.Announce(ctx, ratelimiter.Demand{Owner: "a", TTL: time.Second})
			return err
		},
	}
	for name, call := range calls {
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), after)
		err := call(ctx)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || took < after || took > after+time.Second {
			t.Errorf("%s on a hanging store with a %v deadline = %v after %v, want DeadlineExceeded soon after the deadline", name, after, err, took)
		}
	}
	s.SetHang(false)
	if err := s.Provision(t.Context(), 1); err != nil {
		t.Fatalf("Provision after SetHang(false): %v", err)
	}
}
