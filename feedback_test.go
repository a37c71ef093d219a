package batcher_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Feedback from the datastore: retries with back-off, throttles that pause
// releases (doubling while they repeat, up to a cap, never under the
// datastore's retry-after), and manual pauses.

// throttler answers the first n calls with a throttle, and records when each
// call came.
type throttler struct {
	mu    sync.Mutex
	n     int
	after time.Duration
	calls []time.Time
}

func (th *throttler) process(ctx context.Context, batch []*batcher.Operation) error {
	th.mu.Lock()
	defer th.mu.Unlock()
	th.calls = append(th.calls, time.Now())
	if len(th.calls) <= th.n {
		return batcher.Throttle(th.after, errors.New("429 too many requests"))
	}
	return nil
}

func (th *throttler) gaps(t0 time.Time) []time.Duration {
	th.mu.Lock()
	defer th.mu.Unlock()
	var out []time.Duration
	prev := t0
	for _, c := range th.calls {
		out = append(out, c.Sub(prev))
		prev = c
	}
	return out
}

func TestThrottlesPauseAndDoubleWhileTheyRepeat(t *testing.T) {
	// Without a retry-after: PauseTime doubling, with jitter, up to the cap
	// (lanes_test.go has the retry-after cases).
	cases := []struct {
		name     string
		maxPause time.Duration
		nominal  []time.Duration // before jitter and the cap
	}{
		{"PauseTime doubling", 30 * time.Second,
			[]time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}},
		{"capped", 3 * time.Second,
			[]time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := batcher.NewBatcher().WithEagerRelease().WithMaxPauseTime(c.maxPause)
				ev := &events{}
				b.AddListener(ev.add)
				start(t, b)
				th := &throttler{n: 5}
				w := batcher.NewWatcher(th.process).WithMaxAttempts(1)
				op := batcher.NewOperation(w, 1, nil, true)
				t0 := time.Now()
				if err := b.Enqueue(op); err != nil {
					t.Fatal(err)
				}
				if err := waitFor(t, op); err != nil {
					t.Fatalf("the throttled operation did not succeed: %v (throttles must not use up attempts)", err)
				}
				gaps := th.gaps(t0)
				if len(gaps) != 6 || gaps[0] != 0 {
					t.Fatalf("calls at gaps %v, want 6 calls, the first at once", gaps)
				}
				for i, d := range c.nominal {
					if lo, hi := jitterBounds(d, c.maxPause); gaps[i+1] < lo || gaps[i+1] > hi {
						t.Errorf("pause #%d lasted %v, want within [%v, %v] (all: %v)", i+1, gaps[i+1], lo, hi, gaps[1:])
					}
				}
				if n := ev.count(batcher.Throttled); n != 5 {
					t.Errorf("%d throttled events, want 5", n)
				}
				if p, r := ev.count(batcher.Paused), ev.count(batcher.Resumed); p != 5 || r != 5 {
					t.Errorf("%d pause and %d resume events, want 5 of each", p, r)
				}
				if op.Attempt() != 6 {
					t.Errorf("Attempt = %d after 6 calls", op.Attempt())
				}
			})
		})
	}
}

func TestThrottleStreakResetsAfterASuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithEagerRelease())
		var mu sync.Mutex
		var calls []time.Time
		throttleNext := true
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, time.Now())
			if throttleNext {
				throttleNext = false
				return batcher.Throttle(0, errors.New("429"))
			}
			throttleNext = true
			return nil
		})
		// Throttle, success, throttle, success...: every pause is the first
		// of its run, PauseTime (with jitter).
		for range 4 {
			op := batcher.NewOperation(w, 1, nil, true)
			if err := b.Enqueue(op); err != nil {
				t.Fatal(err)
			}
			if err := waitFor(t, op); err != nil {
				t.Fatal(err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for i := 1; i < len(calls); i += 2 {
			if lo, hi := jitterBounds(500*time.Millisecond, time.Minute); calls[i].Sub(calls[i-1]) < lo || calls[i].Sub(calls[i-1]) > hi {
				t.Errorf("pause #%d lasted %v, want within [%v, %v]: the run of throttles was broken by a success",
					i/2+1, calls[i].Sub(calls[i-1]), lo, hi)
			}
		}
	})
}

func TestConcurrentThrottlesCountAsOne(t *testing.T) {
	// Four batches in flight when the datastore starts throttling: their
	// four throttles are one event for the pause, not four doublings.
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithEagerRelease())
		var mu sync.Mutex
		var calls []time.Time
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			calls = append(calls, time.Now())
			n := len(calls)
			mu.Unlock()
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
			if n <= 4 {
				return batcher.Throttle(0, errors.New("429"))
			}
			return nil
		}).WithMaxBatchSize(1)
		ops := enqueue(t, b, w, 4, 1)
		for _, op := range ops {
			if err := waitFor(t, op); err != nil {
				t.Fatal(err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		// All four go at 0, throttle at 100ms, pause 500ms (with jitter),
		// and are retried together.
		lo, hi := jitterBounds(500*time.Millisecond, time.Minute)
		for i, c := range calls[4:] {
			if got := c.Sub(calls[0]); got < 100*time.Millisecond+lo || got > 100*time.Millisecond+hi || !c.Equal(calls[4]) {
				t.Errorf("retry %d at %v, want all four at one moment within [%v, %v]: one pause of 500ms",
					i, got, 100*time.Millisecond+lo, 100*time.Millisecond+hi)
			}
		}
	})
}

func TestPausedReleasesWaitAndResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const pause = 2050 * time.Millisecond // off the flush ticks
		b := batcher.NewBatcher().WithPauseTime(pause)
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(5)
		b.Pause()
		enqueue(t, b, w, 12, 1)
		time.Sleep(pause - time.Nanosecond)
		synctest.Wait()
		if n := s.ops(); n != 0 {
			t.Fatalf("%d operations released during the pause", n)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if n := s.ops(); n != 10 {
			t.Fatalf("%d operations released when the pause ended, want the two full batches", n)
		}
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if n := s.ops(); n != 12 {
			t.Fatalf("%d operations released at the next flush, want all 12", n)
		}
		if p, r := ev.count(batcher.Paused), ev.count(batcher.Resumed); p != 1 || r != 1 {
			t.Errorf("%d pause and %d resume events", p, r)
		}
		if e := ev.of(batcher.Paused); e[0].Duration != pause {
			t.Errorf("pause event duration %v", e[0].Duration)
		}
	})
}

func TestRetryBackoffDoublesUpToItsMax(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithEagerRelease())
		th := &throttler{}
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			th.process(ctx, batch)
			return batcher.Retry(errors.New("busy"))
		}).WithMaxAttempts(6).WithRetryBackoff(time.Second, 5*time.Second)
		op := batcher.NewOperation(w, 1, nil, true)
		t0 := time.Now()
		if err := b.Enqueue(op); err != nil {
			t.Fatal(err)
		}
		err := waitFor(t, op)
		if !errors.Is(err, batcher.ErrTooManyAttempts) || err.Error() == "" {
			t.Fatalf("Wait = %v, want ErrTooManyAttempts", err)
		}
		want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
		gaps := th.gaps(t0)
		if len(gaps) != len(want) {
			t.Fatalf("%d calls, want %d", len(gaps), len(want))
		}
		for i := range want {
			if gaps[i] != want[i] {
				t.Errorf("call %d after %v, want %v (all: %v)", i, gaps[i], want[i], gaps)
			}
		}
	})
}

func TestPerOperationFeedbackOverridesTheBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithEagerRelease().WithMaxConcurrentBatches(1))
		var mu sync.Mutex
		calls := map[string]int{}
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			for _, op := range batch {
				name := op.Payload().(string)
				calls[name]++
				switch name {
				case "fail":
					op.Fail(errors.New("bad document"))
				case "retry-once":
					if op.Attempt() == 1 {
						op.Retry(errors.New("conflict"))
					}
				case "throttle-once":
					if calls[name] == 1 {
						op.Throttle(100*time.Millisecond, errors.New("429"))
					}
				}
			}
			return errors.New("the batch as a whole failed") // overridden where said
		}).WithMaxBatchSize(10).WithMaxAttempts(2)
		// A batch-level failure that ops can override only when they say so:
		// "ok" has no verdict, so it fails with the batch.
		names := []string{"fail", "retry-once", "throttle-once", "ok"}
		ops := make([]*batcher.Operation, len(names))
		for i, n := range names {
			ops[i] = batcher.NewOperation(w, 1, n, true)
			if err := b.Enqueue(ops[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		check := func(i int, want string) {
			t.Helper()
			if err := ops[i].Err(); err == nil || err.Error() != want {
				t.Errorf("%s: err %v, want %q", names[i], err, want)
			}
		}
		check(0, "bad document")
		check(3, "the batch as a whole failed")
		// The retried and the throttled ones got the batch's failure on
		// their second call (no verdict of their own then).
		check(1, "the batch as a whole failed")
		check(2, "the batch as a whole failed")
		if calls["retry-once"] != 2 || calls["throttle-once"] != 2 || calls["fail"] != 1 {
			t.Errorf("calls %v", calls)
		}
	})
}

func TestThrottledRetriesStayWithinCapacity(t *testing.T) {
	// Throttles and retries go through the limiter again: the retried cost
	// counts in the window like any other.
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(500)))
		s := &sink{}
		var mu sync.Mutex
		n := 0
		s.handle = func(ctx context.Context, _ []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			n++
			if n%3 == 0 {
				return batcher.Throttle(50*time.Millisecond, errors.New("429"))
			}
			return nil
		}
		enqueue(t, b, s.watcher().WithMaxBatchSize(10), 2000, 1)
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		checkWindows(t, &s.log, 500)
		if st := b.Stats(); st.Succeeded != 2000 {
			t.Errorf("Stats %+v", st)
		}
	})
}
