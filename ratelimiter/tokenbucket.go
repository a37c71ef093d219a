package ratelimiter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ratebatch/batcher"
)

// TokenBucket is a token bucket: it fills at a rate of cost units per second
// up to a burst. As a Batcher's limiter it is a [batcher.Pacer]: the Batcher
// releases only what the bucket holds, so releases follow the bucket's
// shape, while the Batcher still keeps every one-second window within the
// rate (a burst above the rate does not raise that bound). It can also be
// used on its own, with Wait.
//
// Create it with [NewTokenBucket]. It is a thin wrapper over
// golang.org/x/time/rate's Limiter, and safe for concurrent use.
type TokenBucket struct {
	lim       *rate.Limiter
	settings  atomic.Pointer[bucketSettings]
	mu        sync.Mutex // serialises SetRate
	listeners batcher.Listeners
}

type bucketSettings struct{ rate, burst int }

// NewTokenBucket returns a token bucket that fills at ratePerSecond cost
// units per second and holds at most burst. The bucket starts full. Start
// reports a rate or burst below 1.
func NewTokenBucket(ratePerSecond, burst int) *TokenBucket {
	tb := &TokenBucket{lim: rate.NewLimiter(rate.Limit(ratePerSecond), burst)}
	tb.settings.Store(&bucketSettings{ratePerSecond, burst})
	return tb
}

func checkBucket(r, b int) error {
	var errs []error
	if r < 1 {
		errs = append(errs, fmt.Errorf("%w: TokenBucket rate is %d; it must be at least 1", batcher.ErrInvalidSetting, r))
	}
	if b < 1 {
		errs = append(errs, fmt.Errorf("%w: TokenBucket burst is %d; it must be at least 1", batcher.ErrInvalidSetting, b))
	}
	return errors.Join(errs...)
}

// Start checks the settings; TokenBucket has no work of its own.
func (tb *TokenBucket) Start(context.Context) error {
	s := tb.settings.Load()
	return checkBucket(s.rate, s.burst)
}

// SetRate changes the rate and the burst. If either changed, it emits a
// [batcher.CapacityChanged] event with the new rate. Events of SetRate calls
// made at the same time may reach listeners in another order than the calls
// took effect; Capacity is the truth. A rate or burst below 1 is refused,
// and nothing changes, with an error wrapping [batcher.ErrInvalidSetting].
func (tb *TokenBucket) SetRate(ratePerSecond, burst int) error {
	if err := checkBucket(ratePerSecond, burst); err != nil {
		return err
	}
	tb.mu.Lock()
	now := time.Now()
	old := tb.settings.Swap(&bucketSettings{ratePerSecond, burst})
	tb.lim.SetLimitAt(now, rate.Limit(ratePerSecond))
	tb.lim.SetBurstAt(now, burst)
	tb.mu.Unlock()
	if old.rate != ratePerSecond || old.burst != burst {
		tb.listeners.Emit(batcher.Event{Kind: batcher.CapacityChanged, Val: ratePerSecond})
	}
	return nil
}

// Capacity returns the rate, in cost units per second.
func (tb *TokenBucket) Capacity() int { return tb.settings.Load().rate }

// MaxCapacity returns the most one operation may cost: the burst, or the
// rate if that is lower, since no second may hold more than the rate.
func (tb *TokenBucket) MaxCapacity() int {
	s := tb.settings.Load()
	return min(s.burst, s.rate)
}

// GiveMe does nothing: the bucket does not depend on the target.
func (tb *TokenBucket) GiveMe(int) {}

// TokensAt returns the cost the bucket holds at now; it is negative while
// the bucket pays back cost taken beyond what it held.
func (tb *TokenBucket) TokensAt(now time.Time) float64 { return tb.lim.TokensAt(now) }

// Burst returns the most the bucket holds.
func (tb *TokenBucket) Burst() int { return tb.settings.Load().burst }

// TakeAt takes n from the bucket at now, going into debt if it holds less.
// (A Batcher takes more than the bucket holds when an operation's actual
// cost turns out higher than declared.)
func (tb *TokenBucket) TakeAt(now time.Time, n int) {
	// rate.Limiter takes at most its burst at a time.
	for burst := max(tb.lim.Burst(), 1); n > 0; n -= burst {
		tb.lim.ReserveN(now, min(n, burst))
	}
}

// Wait blocks until n units are available and takes them, for use outside a
// Batcher. It returns at once, taking nothing, ctx.Err() if ctx is already
// done, an error wrapping [batcher.ErrTooExpensive] if n exceeds the burst,
// and [ErrWouldExceedDeadline] if ctx's deadline comes before the units
// would be available; and ctx.Err(), giving the units back, if ctx ends
// while it waits.
func (tb *TokenBucket) Wait(ctx context.Context, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
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
