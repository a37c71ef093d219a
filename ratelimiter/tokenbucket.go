package ratelimiter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/ratebatch/batcher"
)

// TokenBucket is a token bucket: it fills at a rate of cost units per second
// up to a burst. As a Batcher's limiter it is a [batcher.Pacer]: the Batcher
// releases only what the bucket holds, so releases follow the bucket's
// shape, while the Batcher still keeps every one-second window within the
// rate. It can also be used on its own, with Wait.
//
// Create it with [NewTokenBucket]. It is a thin wrapper over
// golang.org/x/time/rate's Limiter, and safe for concurrent use.
type TokenBucket struct {
	mu        sync.Mutex // serialises changes, for their events
	lim       *rate.Limiter
	rate      int
	burst     int
	listeners batcher.Listeners
}

// NewTokenBucket returns a token bucket that fills at ratePerSecond cost
// units per second and holds at most burst. The bucket starts full. Start
// reports a rate or burst below 1.
func NewTokenBucket(ratePerSecond, burst int) *TokenBucket {
	return &TokenBucket{
		lim:   rate.NewLimiter(rate.Limit(ratePerSecond), burst),
		rate:  ratePerSecond,
		burst: burst,
	}
}

func (tb *TokenBucket) check(r, b int) error {
	switch {
	case r < 1:
		return fmt.Errorf("%w: TokenBucket rate is %d; it must be at least 1", batcher.ErrInvalidSetting, r)
	case b < 1:
		return fmt.Errorf("%w: TokenBucket burst is %d; it must be at least 1", batcher.ErrInvalidSetting, b)
	}
	return nil
}

// Start checks the settings; TokenBucket has no work of its own.
func (tb *TokenBucket) Start(context.Context) error {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.check(tb.rate, tb.burst)
}

// SetRate changes the rate and the burst and emits a
// [batcher.CapacityChanged] event. A rate or burst below 1 is refused with an
// error wrapping [batcher.ErrInvalidSetting].
func (tb *TokenBucket) SetRate(ratePerSecond, burst int) error {
	if err := tb.check(ratePerSecond, burst); err != nil {
		return err
	}
	tb.mu.Lock()
	now := time.Now()
	changed := ratePerSecond != tb.rate
	tb.rate, tb.burst = ratePerSecond, burst
	tb.lim.SetLimitAt(now, rate.Limit(ratePerSecond))
	tb.lim.SetBurstAt(now, burst)
	tb.mu.Unlock()
	if changed {
		tb.listeners.Emit(batcher.Event{Kind: batcher.CapacityChanged, Val: ratePerSecond})
	}
	return nil
}

// Capacity returns the rate, in cost units per second.
func (tb *TokenBucket) Capacity() int { return int(tb.lim.Limit()) }

// MaxCapacity returns the most one operation may cost: the burst, or the
// rate if that is lower, since no second may hold more than the rate.
func (tb *TokenBucket) MaxCapacity() int { return min(tb.lim.Burst(), int(tb.lim.Limit())) }

// GiveMe does nothing: the bucket does not depend on the target.
func (tb *TokenBucket) GiveMe(int) {}

// TokensAt returns the cost the bucket holds at now.
func (tb *TokenBucket) TokensAt(now time.Time) float64 { return tb.lim.TokensAt(now) }

// Burst returns the most the bucket holds.
func (tb *TokenBucket) Burst() int { return tb.lim.Burst() }

// TakeAt takes n from the bucket at now. The Batcher calls it only for what
// TokensAt allowed.
func (tb *TokenBucket) TakeAt(now time.Time, n int) { tb.lim.ReserveN(now, n) }

// Wait blocks until n units are available and takes them, for use outside a
// Batcher. It returns at once, taking nothing, an error wrapping
// [batcher.ErrTooExpensive] if n exceeds the burst, and
// [ErrWouldExceedDeadline] if ctx's deadline comes before the units would be
// available; and ctx.Err(), giving the units back, if ctx ends while it
// waits.
func (tb *TokenBucket) Wait(ctx context.Context, n int) error {
	now := time.Now()
	r := tb.lim.ReserveN(now, n)
	if !r.OK() {
		return fmt.Errorf("%w: %d, burst %d", batcher.ErrTooExpensive, n, tb.lim.Burst())
	}
	d := r.DelayFrom(now)
	if d == 0 {
		return nil
	}
	if deadline, ok := ctx.Deadline(); ok && deadline.Before(now.Add(d)) {
		r.CancelAt(now)
		return ErrWouldExceedDeadline
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

// AddListener adds a listener for rate changes and returns its id.
func (tb *TokenBucket) AddListener(fn func(batcher.Event)) int { return tb.listeners.AddListener(fn) }

// RemoveListener removes the listener with the given id.
func (tb *TokenBucket) RemoveListener(id int) { tb.listeners.RemoveListener(id) }
