package batcher_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

func TestAdapterAccessors(t *testing.T) {
	if got := batcher.NewBatcher().BufferSize(); got != batcher.DefaultBufferSize {
		t.Errorf("BufferSize = %d, want the default %d", got, batcher.DefaultBufferSize)
	}
	lim := ratelimiter.NewProvisioned(10)
	b := batcher.NewBatcher().WithBufferSize(7).WithRateLimiter(lim)
	if b.BufferSize() != 7 || b.RateLimiter() != lim {
		t.Errorf("BufferSize, RateLimiter = %d, %v; want 7, the limiter", b.BufferSize(), b.RateLimiter())
	}
	if batcher.NewBatcher().RateLimiter() != nil {
		t.Error("RateLimiter without one is not nil")
	}

	base := errors.New("x")
	retry := fmt.Errorf("wrapped: %w", batcher.Retry(base))
	throttle := fmt.Errorf("wrapped: %w", batcher.Throttle(3*time.Second, base))
	if !batcher.IsRetry(retry) || batcher.IsRetry(throttle) || batcher.IsRetry(base) || batcher.IsRetry(nil) {
		t.Error("IsRetry is wrong")
	}
	if d, ok := batcher.IsThrottle(throttle); !ok || d != 3*time.Second {
		t.Errorf("IsThrottle = %v, %v; want 3s, true", d, ok)
	}
	if _, ok := batcher.IsThrottle(retry); ok {
		t.Error("IsThrottle of a Retry is true")
	}
	if _, ok := batcher.IsThrottle(nil); ok {
		t.Error("IsThrottle(nil) is true")
	}
	op := batcher.NewOperation(batcher.NewWatcher(nil), 5, nil, true)
	if c, ok := op.ActualCost(); ok || c != 0 {
		t.Errorf("ActualCost before SetActualCost = %d, %v", c, ok)
	}
	op.SetActualCost(0)
	if c, ok := op.ActualCost(); !ok || c != 0 {
		t.Errorf("ActualCost after SetActualCost(0) = %d, %v; want 0, true", c, ok)
	}
}
