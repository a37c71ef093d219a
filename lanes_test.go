package batcher_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Throttles per lane: a throttle pauses the watcher it came from (its lane),
// never the others; a retry-after is waited exactly; throttles without one
// back off from PauseTime, doubling with jitter, capped, reset by a success.

// laneCalls records when each ProcessBatch call of a watcher came, and
// answers the first n with a throttle of retry-after after.
type laneCalls struct {
	mu    sync.Mutex
	n     int
	after time.Duration
	calls []time.Time
}

func (l *laneCalls) process(ctx context.Context, batch []*batcher.Operation) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, time.Now())
	if len(l.calls) <= l.n {
		return batcher.Throttle(l.after, errors.New("429 too many requests"))
	}
	return nil
}

func (l *laneCalls) times() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.calls...)
}

func TestThrottlePausesOnlyItsLaneForExactlyTheRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithEagerRelease()
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		hot := &laneCalls{n: 1, after: 730 * time.Millisecond}
		hw := batcher.NewWatcher(hot.process)
		cold := &sink{}
		cw := cold.watcher()

		t0 := time.Now()
		hop := batcher.NewOperation(hw, 1, "hot", true)
		if err := b.Enqueue(hop); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // throttled at once: its lane pauses 730ms

		// The cold watcher's operations go at once while the hot lane waits.
		for i := range 5 {
			time.Sleep(100 * time.Millisecond)
			op := batcher.NewOperation(cw, 1, i, true)
			if err := b.Enqueue(op); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			if n := cold.ops(); n != i+1 {
				t.Fatalf("at %v: %d cold operations released, want %d: a throttle of another watcher held them back",
					time.Since(t0), n, i+1)
			}
		}
		if err := waitFor(t, hop); err != nil {
			t.Fatal(err)
		}
		calls := hot.times()
		if len(calls) != 2 {
			t.Fatalf("%d calls of the throttled watcher, want 2", len(calls))
		}
		if gap := calls[1].Sub(calls[0]); gap != 730*time.Millisecond {
			t.Errorf("the throttled lane was retried after %v, want exactly the retry-after, 730ms", gap)
		}
		// Its pause and resume events name it.
		ps, rs := ev.of(batcher.Paused), ev.of(batcher.Resumed)
		if len(ps) != 1 || len(rs) != 1 {
			t.Fatalf("%d pause and %d resume events, want 1 of each", len(ps), len(rs))
		}
		if ps[0].Watcher != hw || rs[0].Watcher != hw || ps[0].Duration != 730*time.Millisecond || ps[0].Err == nil {
			t.Errorf("pause %v (watcher %p), resume %v (watcher %p); want both for the throttled watcher %p, 730ms",
				ps[0], ps[0].Watcher, rs[0], rs[0].Watcher, hw)
		}
		if th := ev.of(batcher.Throttled); len(th) != 1 || th[0].Watcher != hw {
			t.Errorf("throttled events %v, want one naming the throttled watcher", th)
		}
	})
}

func TestRetryAfterIsWaitedAsGivenNotDoubled(t *testing.T) {
	cases := []struct {
		name     string
		after    time.Duration
		maxPause time.Duration
		want     time.Duration
	}{
		{"as given", 300 * time.Millisecond, 30 * time.Second, 300 * time.Millisecond},
		{"above MaxPauseTime: capped there", time.Hour, 3 * time.Second, 3 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := start(t, batcher.NewBatcher().WithEagerRelease().WithMaxPauseTime(c.maxPause))
				l := &laneCalls{n: 5, after: c.after}
				op := batcher.NewOperation(batcher.NewWatcher(l.process).WithMaxAttempts(1), 1, nil, true)
				if err := b.Enqueue(op); err != nil {
					t.Fatal(err)
				}
				if err := waitFor(t, op); err != nil {
					t.Fatalf("the throttled operation did not succeed: %v", err)
				}
				calls := l.times()
				if len(calls) != 6 {
					t.Fatalf("%d calls, want 6", len(calls))
				}
				for i := 1; i < len(calls); i++ {
					if gap := calls[i].Sub(calls[i-1]); gap != c.want {
						t.Errorf("pause #%d lasted %v, want %v", i, gap, c.want)
					}
				}
			})
		})
	}
}

// jitterBounds is the range of a throttle's pause without a retry-after,
// d = PauseTime × 2^(n-1) for the n-th throttle in a row: min(d, max) ×
// [0.8, 1.2), at most max.
func jitterBounds(d, max time.Duration) (lo, hi time.Duration) {
	return min(d, max) * 8 / 10, min(d*12/10, max)
}

func TestThrottleWithoutRetryAfterBacksOffWithJitterCappedAndReset(t *testing.T) {
	for _, after := range []time.Duration{0, -time.Second} { // negative: none given
		t.Run(after.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const pause, maxPause = 500 * time.Millisecond, 5 * time.Second
				b := start(t, batcher.NewBatcher().WithEagerRelease().WithPauseTime(pause).WithMaxPauseTime(maxPause))
				l := &laneCalls{n: 7, after: after}
				w := batcher.NewWatcher(l.process)
				op := batcher.NewOperation(w, 1, nil, true)
				if err := b.Enqueue(op); err != nil {
					t.Fatal(err)
				}
				if err := waitFor(t, op); err != nil {
					t.Fatal(err)
				}
				// A success resets the lane: its next throttle pauses PauseTime again.
				l.mu.Lock()
				l.n = len(l.calls) + 1
				l.mu.Unlock()
				op2 := batcher.NewOperation(w, 1, nil, true)
				if err := b.Enqueue(op2); err != nil {
					t.Fatal(err)
				}
				if err := waitFor(t, op2); err != nil {
					t.Fatal(err)
				}
				calls := l.times()
				if len(calls) != 10 {
					t.Fatalf("%d calls, want 10", len(calls))
				}
				gaps := make([]time.Duration, 0, 9)
				for i := 1; i < len(calls); i++ {
					gaps = append(gaps, calls[i].Sub(calls[i-1]))
				}
				nominal := pause
				for i := range 7 {
					lo, hi := jitterBounds(nominal, maxPause)
					if g := gaps[i]; g < lo || g > hi {
						t.Errorf("pause #%d lasted %v, want within [%v, %v] (all: %v)", i+1, g, lo, hi, gaps)
					}
					nominal *= 2
				}
				// gaps[7] is op2's first call, released at once after op's success.
				if lo, hi := jitterBounds(pause, maxPause); gaps[8] < lo || gaps[8] > hi {
					t.Errorf("the first pause after a success lasted %v, want within [%v, %v]: the lane's run was not reset", gaps[8], lo, hi)
				}
				// Jitter: the pauses are not all exactly the nominal ones.
				exact := 0
				nominal = pause
				for i := range 4 {
					if gaps[i] == nominal {
						exact++
					}
					nominal *= 2
				}
				if exact == 4 {
					t.Errorf("pauses %v carry no jitter", gaps[:4])
				}
			})
		})
	}
}

func TestExplicitPauseStaysGlobal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithEagerRelease().WithPauseTime(time.Second))
		s1, s2 := &sink{}, &sink{}
		b.Pause()
		enqueue(t, b, s1.watcher(), 1, 1)
		enqueue(t, b, s2.watcher(), 1, 1)
		time.Sleep(time.Second - time.Nanosecond)
		synctest.Wait()
		if s1.ops()+s2.ops() != 0 {
			t.Fatalf("released during a Batcher-wide pause")
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if s1.ops() != 1 || s2.ops() != 1 {
			t.Fatalf("released %d and %d when the pause ended, want 1 and 1", s1.ops(), s2.ops())
		}
	})
}

func TestManyThrottledLanesStayWithinCapacity(t *testing.T) {
	// 40 watchers share a capacity of 2,000; about a third of their batches
	// are throttled, with and without a retry-after. Whatever the lanes
	// do, no one-second window carries more than the capacity, and the
	// unthrottled lanes keep the capacity used.
	synctest.Test(t, func(t *testing.T) {
		const capacity = 2000
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(capacity)).
			WithPauseTime(50*time.Millisecond).WithMaxPauseTime(time.Second))
		s := &sink{}
		var mu sync.Mutex
		rng := rand.New(rand.NewPCG(1, 2))
		s.handle = func(ctx context.Context, _ []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			switch rng.IntN(6) {
			case 0:
				return batcher.Throttle(time.Duration(rng.IntN(400))*time.Millisecond, errors.New("429"))
			case 1:
				return batcher.Throttle(0, errors.New("429"))
			}
			return nil
		}
		t0 := time.Now()
		var ops []*batcher.Operation
		for i := range 40 {
			ops = append(ops, enqueue(t, b, s.watcher().WithMaxBatchSize(5+i%7), 250, 1+i%3)...)
		}
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		checkWindows(t, &s.log, capacity)
		for _, op := range ops {
			if op.Err() != nil {
				t.Fatalf("an operation failed: %v", op.Err())
			}
		}
		// While most lanes still have work, the lanes' pauses must not stop
		// the others from using the capacity: the first 80% of the cost
		// released (throttled attempts count too) goes within 1.02x its
		// ideal (one lane for all 40 watchers: 1.05-1.07x). The last few lanes to drain are left out: which of them a
		// throttle hits last, and how long its doubling pause then leaves
		// the capacity unused, depends on the order of the calls.
		rs := s.log.All()
		slices.SortFunc(rs, func(a, b releases.Release) int { return a.At.Compare(b.At) })
		total := 0
		for _, r := range rs {
			total += r.Cost
		}
		part, at := 0, t0
		for _, r := range rs {
			if part += r.Cost; part >= total*8/10 {
				at = r.At
				break
			}
		}
		if d, ideal := at.Sub(t0), time.Duration(part)*time.Second/capacity; d > ideal*102/100+100*time.Millisecond {
			t.Errorf("released 80%% of the cost (%d) in %v, ideal %v: throttled lanes held the others back", part, d, ideal)
		}
	})
}

func TestWatchersOfASharedLanePauseTogether(t *testing.T) {
	// Two watchers in one lane, a third on its own: a throttle of the first
	// pauses the second for the same retry-after, not the third.
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithEagerRelease())
		lane := batcher.NewLane()
		hot := &laneCalls{n: 1, after: 500 * time.Millisecond}
		s2, s3 := &sink{}, &sink{}
		w1 := batcher.NewWatcher(hot.process).WithLane(lane)
		w2 := s2.watcher().WithLane(lane)
		w3 := s3.watcher()
		enqueue(t, b, w1, 1, 1)
		synctest.Wait() // throttled: the lane pauses 500ms
		t0 := time.Now()
		enqueue(t, b, w2, 1, 1)
		enqueue(t, b, w3, 1, 1)
		synctest.Wait()
		if s2.ops() != 0 || s3.ops() != 1 {
			t.Fatalf("released %d of the lane's other watcher and %d of the unrelated one, want 0 and 1", s2.ops(), s3.ops())
		}
		time.Sleep(500*time.Millisecond - time.Nanosecond)
		synctest.Wait()
		if s2.ops() != 0 {
			t.Fatalf("the lane's other watcher went at %v, during the pause", time.Since(t0))
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if s2.ops() != 1 || len(hot.times()) != 2 {
			t.Errorf("when the lane's pause ended: %d of the other watcher, %d calls of the throttled one; want 1 and 2", s2.ops(), len(hot.times()))
		}
	})
}
