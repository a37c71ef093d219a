package ratelimiter_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// What a Batcher relies on: TokenBucket is a rate limiter that paces
// releases, and whose events the Batcher passes on.
var (
	_ batcher.RateLimiter = (*ratelimiter.TokenBucket)(nil)
	_ batcher.Pacer       = (*ratelimiter.TokenBucket)(nil)
	_ batcher.EventSource = (*ratelimiter.TokenBucket)(nil)
)

// t0 is an arbitrary instant for the tests that give explicit times.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func wantTokens(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9*max(1, math.Abs(want)) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func wantSettings(t *testing.T, tb *ratelimiter.TokenBucket, rate, burst int) {
	t.Helper()
	if got := tb.Capacity(); got != rate {
		t.Errorf("Capacity() = %d, want the rate %d", got, rate)
	}
	if got := tb.Burst(); got != burst {
		t.Errorf("Burst() = %d, want %d", got, burst)
	}
	if got, want := tb.MaxCapacity(), min(rate, burst); got != want {
		t.Errorf("MaxCapacity() = %d, want min(burst %d, rate %d) = %d", got, burst, rate, want)
	}
}

func TestTokenBucketSettings(t *testing.T) {
	for _, c := range []struct{ rate, burst int }{
		{1, 1}, {10, 5}, {10, 10}, {10, 50}, {10000, 100}, {5, 10000},
	} {
		t.Run(fmt.Sprintf("rate %d burst %d", c.rate, c.burst), func(t *testing.T) {
			tb := ratelimiter.NewTokenBucket(c.rate, c.burst)
			if err := tb.Start(t.Context()); err != nil {
				t.Fatalf("Start: %v", err)
			}
			wantSettings(t, tb, c.rate, c.burst)
			tb.GiveMe(100 * c.rate) // the target changes nothing
			wantSettings(t, tb, c.rate, c.burst)
			// The bucket starts full.
			wantTokens(t, "TokensAt(t0)", tb.TokensAt(t0), float64(c.burst))
		})
	}
}

// A tokenStep takes take tokens at t0+at, then expects TokensAt(t0+at+look)
// to be want. Steps run in order on one bucket.
type tokenStep struct {
	at   time.Duration
	take int
	look time.Duration
	want float64
}

func runTokenSteps(t *testing.T, tb *ratelimiter.TokenBucket, steps []tokenStep) {
	t.Helper()
	for i, s := range steps {
		if s.take != 0 {
			tb.TakeAt(t0.Add(s.at), s.take)
		}
		what := fmt.Sprintf("step %d: after TakeAt(t0+%v, %d), TokensAt(t0+%v)", i, s.at, s.take, s.at+s.look)
		wantTokens(t, what, tb.TokensAt(t0.Add(s.at+s.look)), s.want)
	}
}

func TestTokenBucketTokensAt(t *testing.T) {
	const ms = time.Millisecond
	for _, c := range []struct {
		rate, burst int
		steps       []tokenStep
	}{
		{4, 8, []tokenStep{
			{0, 0, 0, 8},               // starts full
			{0, 0, time.Hour, 8},       // and stays at the burst
			{0, 8, 0, 0},               // take it all
			{0, 0, 125 * ms, 0.5},      // refills at 4 a second
			{0, 0, 250 * ms, 1},        //
			{0, 0, time.Second, 4},     //
			{0, 0, 2 * time.Second, 8}, // full again
			{0, 0, 5 * time.Second, 8}, // never above the burst
			{2 * time.Second, 3, 0, 5},
			{2 * time.Second, 0, 125 * ms, 5.5},
			{2 * time.Second, 0, 750 * ms, 8},
			{3 * time.Second, 8, 0, 0},  // 5+4 capped at 8, all taken
			{3 * time.Second, 4, 0, -4}, // beyond what there is: in debt
			{3 * time.Second, 0, 500 * ms, -2},
			{3 * time.Second, 0, time.Second, 0}, // the debt is paid
			{3 * time.Second, 0, 1500 * ms, 2},
			{4 * time.Second, 1, 0, -1},
			{4 * time.Second, 1, 0, -2}, // takes at one instant add up
			{4 * time.Second, 0, 250 * ms, -1},
		}},
		{1, 1, []tokenStep{
			{0, 0, 0, 1},
			{0, 1, 0, 0},
			{0, 0, 500 * ms, 0.5},
			{0, 0, time.Second, 1},
			{0, 0, 10 * time.Second, 1},
			{2 * time.Second, 1, 0, 0},
			{2 * time.Second, 0, 999 * ms, 0.999},
			{3 * time.Second, 1, 0, 0},
		}},
		{1000, 100, []tokenStep{
			{0, 30, 0, 70},
			{0, 70, 0, 0},
			{0, 0, 10 * ms, 10},
			{0, 0, 100 * ms, 100},
			{50 * ms, 30, 0, 20},
			{50 * ms, 0, 5 * ms, 25},
			{50 * ms, 0, 80 * ms, 100},
			{time.Second, 100, 0, 0},
			{time.Second, 100, 0, -100},
			{time.Second, 0, 150 * ms, 50},
		}},
	} {
		t.Run(fmt.Sprintf("rate %d burst %d", c.rate, c.burst), func(t *testing.T) {
			runTokenSteps(t, ratelimiter.NewTokenBucket(c.rate, c.burst), c.steps)
		})
	}
}

func TestTokenBucketTakeAtMoreThanBurst(t *testing.T) {
	// A Batcher calls TakeAt with what went out, which can be more than the
	// burst: when ProcessBatch reports an actual cost above the declared one,
	// it takes the difference (release.go). The Pacer contract: "TakeAt
	// records that cost n went out at now". Taking 25 at once must leave the
	// bucket as taking 10, 10 and 5 does.
	split := ratelimiter.NewTokenBucket(100, 10)
	for _, n := range []int{10, 10, 5} {
		split.TakeAt(t0, n)
	}
	wantTokens(t, "after TakeAt 10, 10 and 5, TokensAt", split.TokensAt(t0), -15)

	whole := ratelimiter.NewTokenBucket(100, 10)
	whole.TakeAt(t0, 25)
	wantTokens(t, "after TakeAt(t0, 25) with burst 10, TokensAt(t0)", whole.TokensAt(t0), -15)
	wantTokens(t, "after TakeAt(t0, 25) with burst 10, TokensAt(t0+200ms)", whole.TokensAt(t0.Add(200*time.Millisecond)), 5)
}

func TestTokenBucketSetRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(4, 8)
		var ev eventLog
		tb.AddListener(ev.add)
		tb.TakeAt(time.Now(), 8)
		time.Sleep(time.Second)

		// Faster: the tokens there stay, and the bucket fills at the new
		// rate from now.
		if err := tb.SetRate(8, 8); err != nil {
			t.Fatalf("SetRate(8, 8): %v", err)
		}
		wantSettings(t, tb, 8, 8)
		ev.wantEvents(t, 8)
		now := time.Now()
		wantTokens(t, "TokensAt(now) after SetRate", tb.TokensAt(now), 4)
		wantTokens(t, "TokensAt(now+250ms) after SetRate", tb.TokensAt(now.Add(250*time.Millisecond)), 6)

		// The same settings again: nothing changes, nothing is emitted.
		if err := tb.SetRate(8, 8); err != nil {
			t.Fatalf("SetRate(8, 8) again: %v", err)
		}
		wantSettings(t, tb, 8, 8)
		ev.wantEvents(t, 8)

		// A smaller burst: the bucket never holds more than Burst.
		if err := tb.SetRate(8, 2); err != nil {
			t.Fatalf("SetRate(8, 2): %v", err)
		}
		wantSettings(t, tb, 8, 2)
		wantTokens(t, "TokensAt(now) after the burst fell to 2", tb.TokensAt(now), 2)
		wantTokens(t, "TokensAt(now+1h) after the burst fell to 2", tb.TokensAt(now.Add(time.Hour)), 2)

		// Slower, with a burst above the rate: MaxCapacity is the rate.
		time.Sleep(time.Second)
		if err := tb.SetRate(2, 20); err != nil {
			t.Fatalf("SetRate(2, 20): %v", err)
		}
		wantSettings(t, tb, 2, 20)
		now = time.Now()
		wantTokens(t, "TokensAt(now) after SetRate(2, 20)", tb.TokensAt(now), 2)
		wantTokens(t, "TokensAt(now+1s) after SetRate(2, 20)", tb.TokensAt(now.Add(time.Second)), 4)
		got := ev.all()
		if last := got[len(got)-1]; last.Kind != batcher.CapacityChanged || last.Val != 2 {
			t.Errorf("last event = %v, want CapacityChanged with Val 2", last)
		}
		if err := tb.Start(t.Context()); err != nil {
			t.Errorf("Start after SetRate: %v", err)
		}
	})
}

func TestTokenBucketRefusesBadSettings(t *testing.T) {
	cases := []struct {
		rate, burst int
		setting     string
		value       int
	}{
		{0, 5, "rate", 0},
		{-3, 5, "rate", -3},
		{5, 0, "burst", 0},
		{5, -2, "burst", -2},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("rate %d burst %d", c.rate, c.burst), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tb := ratelimiter.NewTokenBucket(10, 20)
				var ev eventLog
				tb.AddListener(ev.add)
				tb.TakeAt(time.Now(), 5)
				err := tb.SetRate(c.rate, c.burst)
				wantInvalidSetting(t, fmt.Sprintf("SetRate(%d, %d)", c.rate, c.burst), err, c.setting, c.value)
				// A refused change changes nothing and emits nothing.
				wantSettings(t, tb, 10, 20)
				ev.wantEvents(t)
				wantTokens(t, "TokensAt(now) after a refused SetRate", tb.TokensAt(time.Now()), 15)
				wantTokens(t, "TokensAt(now+100ms) after a refused SetRate", tb.TokensAt(time.Now().Add(100*time.Millisecond)), 16)

				bad := ratelimiter.NewTokenBucket(c.rate, c.burst)
				err = bad.Start(t.Context())
				wantInvalidSetting(t, fmt.Sprintf("Start with rate %d burst %d", c.rate, c.burst), err, c.setting, c.value)
				// A Batcher reports it from its own Start.
				b := batcher.NewBatcher().WithRateLimiter(bad)
				err = b.Start(t.Context())
				wantInvalidSetting(t, "Batcher.Start", err, c.setting, c.value)
				b.Close()
			})
		})
	}
}

func TestTokenBucketStartNamesEveryBadSetting(t *testing.T) {
	// STYLE.md: Start "validates everything and returns one error that names
	// each bad setting"; a user who fixes the rate should not then learn
	// that the burst was wrong too.
	err := ratelimiter.NewTokenBucket(0, -4).Start(t.Context())
	wantInvalidSetting(t, "Start with rate 0 burst -4", err, "rate", 0)
	wantInvalidSetting(t, "Start with rate 0 burst -4", err, "burst", -4)
}

func TestTokenBucketListeners(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(1, 10)
		var a, b eventLog
		ida := tb.AddListener(a.add)
		idb := tb.AddListener(b.add)
		if ida == idb {
			t.Fatalf("AddListener returned the same id %d twice", ida)
		}
		tb.SetRate(2, 10)
		tb.RemoveListener(ida)
		tb.SetRate(3, 10)
		tb.RemoveListener(idb)
		tb.SetRate(4, 10)
		a.wantEvents(t, 2)
		b.wantEvents(t, 2, 3)
	})
}

func TestTokenBucketWaitReturnsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(4, 8)
		start := time.Now()
		for _, n := range []int{3, 5} {
			if err := tb.Wait(t.Context(), n); err != nil {
				t.Fatalf("Wait(%d) on a bucket that holds it: %v", n, err)
			}
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Wait took %v of fake time with the tokens there", d)
		}
		// It took them.
		wantTokens(t, "TokensAt(now) after Wait 3 and 5", tb.TokensAt(time.Now()), 0)

		// A deadline that is about to pass does not matter when the tokens
		// are there.
		time.Sleep(250 * time.Millisecond)
		ctx, cancel := context.WithTimeout(t.Context(), time.Nanosecond)
		defer cancel()
		if err := tb.Wait(ctx, 1); err != nil {
			t.Errorf("Wait(1) with a token there and a close deadline: %v", err)
		}
		wantTokens(t, "TokensAt(now) after Wait 1", tb.TokensAt(time.Now()), 0)
	})
}

func TestTokenBucketWaitBlocksExactly(t *testing.T) {
	for _, c := range []struct {
		name   string
		filled time.Duration // time since the bucket was emptied
		n      int
		wait   time.Duration
	}{
		{"one token", 0, 1, 250 * time.Millisecond},
		{"three tokens", 0, 3, 750 * time.Millisecond},
		{"the whole burst", 0, 8, 2 * time.Second},
		{"half a token there", 125 * time.Millisecond, 1, 125 * time.Millisecond},
		{"two and a half there", 625 * time.Millisecond, 4, 375 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tb := ratelimiter.NewTokenBucket(4, 8)
				tb.TakeAt(time.Now(), 8)
				time.Sleep(c.filled)
				done := make(chan error, 1)
				go func() { done <- tb.Wait(t.Context(), c.n) }()

				time.Sleep(c.wait - time.Nanosecond)
				synctest.Wait()
				select {
				case err := <-done:
					t.Fatalf("Wait(%d) returned %v after %v, before the tokens were there", c.n, err, c.wait-time.Nanosecond)
				default:
				}
				time.Sleep(time.Nanosecond)
				synctest.Wait()
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("Wait(%d) = %v, want nil", c.n, err)
					}
				default:
					t.Fatalf("Wait(%d) still waits after %v", c.n, c.wait)
				}
				// It took the tokens: the bucket is empty again.
				wantTokens(t, "TokensAt(now) after Wait", tb.TokensAt(time.Now()), 0)
			})
		})
	}
}

func TestTokenBucketWaitWouldExceedDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(4, 8)
		tb.TakeAt(time.Now(), 8)
		time.Sleep(250 * time.Millisecond) // one token there

		// Three tokens are there in 500ms.
		ctx, cancel := context.WithTimeout(t.Context(), 499*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := tb.Wait(ctx, 3)
		if !errors.Is(err, ratelimiter.ErrWouldExceedDeadline) {
			t.Errorf("Wait(3) with 499ms to go = %v, want ErrWouldExceedDeadline", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Wait took %v before it gave up, want 0", d)
		}
		// It took nothing: the token is still there.
		wantTokens(t, "TokensAt(now) after a Wait that gave up", tb.TokensAt(time.Now()), 1)
		wantTokens(t, "TokensAt(now+1s) after a Wait that gave up", tb.TokensAt(time.Now().Add(time.Second)), 5)

		// With time enough, the same Wait succeeds, after 500ms.
		ctx, cancel = context.WithTimeout(t.Context(), 501*time.Millisecond)
		defer cancel()
		start = time.Now()
		if err := tb.Wait(ctx, 3); err != nil {
			t.Errorf("Wait(3) with 501ms to go = %v, want nil", err)
		}
		if d := time.Since(start); d != 500*time.Millisecond {
			t.Errorf("Wait(3) took %v, want 500ms", d)
		}
	})
}

func TestTokenBucketWaitCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(4, 8)
		tb.TakeAt(time.Now(), 8)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- tb.Wait(ctx, 4) }() // 1s to wait

		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("Wait(4) returned %v after 300ms, want it to wait 1s", err)
		default:
		}
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Wait(4) cancelled = %v, want context.Canceled", err)
			}
		default:
			t.Fatal("Wait(4) still waits after its context was cancelled")
		}
		// The tokens went back: the bucket is as if Wait had not been
		// called, and a token is there for the next caller at once.
		wantTokens(t, "TokensAt(now) after a cancelled Wait", tb.TokensAt(time.Now()), 1.2)
		start := time.Now()
		if err := tb.Wait(t.Context(), 1); err != nil {
			t.Fatalf("Wait(1) after a cancelled Wait: %v", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Wait(1) after a cancelled Wait took %v, want 0: the tokens were not given back", d)
		}
	})
}

func TestTokenBucketWaitAlreadyCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(4, 8)
		tb.TakeAt(time.Now(), 8)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		start := time.Now()
		if err := tb.Wait(ctx, 2); !errors.Is(err, context.Canceled) {
			t.Errorf("Wait(2) with a cancelled context and no tokens = %v, want context.Canceled", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Wait took %v, want 0", d)
		}
		wantTokens(t, "TokensAt(now+500ms)", tb.TokensAt(time.Now().Add(500*time.Millisecond)), 2)
	})
}

func TestTokenBucketWaitTooExpensive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(4, 8)
		start := time.Now()
		err := tb.Wait(t.Context(), 9)
		if !errors.Is(err, batcher.ErrTooExpensive) {
			t.Errorf("Wait(9) with burst 8 = %v, want an error wrapping batcher.ErrTooExpensive", err)
		} else if msg := err.Error(); !strings.Contains(msg, "9") || !strings.Contains(msg, "8") {
			t.Errorf("Wait(9) with burst 8 = %q, want a message with the cost and the burst", msg)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Wait took %v, want 0", d)
		}
		// It took nothing.
		wantTokens(t, "TokensAt(now) after Wait(9)", tb.TokensAt(time.Now()), 8)
		if err := tb.Wait(t.Context(), 8); err != nil {
			t.Errorf("Wait(8) with burst 8: %v", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Wait(8) on a full bucket took %v, want 0", d)
		}
	})
}

func TestTokenBucketConcurrentUse(t *testing.T) {
	// Run with -race: every method from many goroutines at once.
	synctest.Test(t, func(t *testing.T) {
		tb := ratelimiter.NewTokenBucket(1000, 100)
		var ev eventLog
		tb.AddListener(ev.add)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 50 {
					rate, burst := 1000, 100
					if (g+i)%2 == 1 {
						rate, burst = 500, 50
					}
					if err := tb.SetRate(rate, burst); err != nil {
						t.Errorf("SetRate: %v", err)
						return
					}
					time.Sleep(time.Millisecond)
				}
			})
			wg.Go(func() {
				for i := range 50 {
					if err := tb.Wait(t.Context(), 1+i%5); err != nil {
						t.Errorf("Wait: %v", err)
						return
					}
				}
			})
			wg.Go(func() {
				for range 50 {
					now := time.Now()
					if tok := tb.TokensAt(now); tok > 100 {
						t.Errorf("TokensAt = %v, above every burst set", tok)
					}
					if c := tb.Capacity(); c != 500 && c != 1000 {
						t.Errorf("Capacity() = %d, never set", c)
					}
					if m := tb.MaxCapacity(); m < 50 || m > 1000 {
						t.Errorf("MaxCapacity() = %d", m)
					}
					tb.TakeAt(now, 1)
					time.Sleep(time.Millisecond)
				}
			})
		}
		wg.Wait()
		for _, e := range ev.all() {
			if e.Kind != batcher.CapacityChanged || (e.Val != 500 && e.Val != 1000) {
				t.Errorf("unexpected event %v", e)
			}
		}
	})
}

func TestTokenBucketWithBatcher(t *testing.T) {
	for _, burst := range []int{100, 1000} {
		t.Run("burst "+strconv.Itoa(burst), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const rate, run = 1000, 10 * time.Second
				rs, start := runBacklog(t, ratelimiter.NewTokenBucket(rate, burst), rate, 10, 20, run)
				checkBacklog(t, rs, start, run, rate)
				// With a burst below a flush's worth, releases follow the
				// bucket: no 100ms holds more than the burst plus what
				// fills in 100ms.
				if peak, at := releases.MaxWindow(rs, 100*time.Millisecond); peak > burst+rate/10 {
					t.Errorf("the 100ms from %v released %d, more than the burst %d and 100ms of refill", at.Sub(start), peak, burst)
				}
			})
		})
	}
}
