package memlease_test

import (
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
		MinDuration: 400 * time.Millisecond,
		Grace:       150 * time.Millisecond,
	})
}
