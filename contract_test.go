package batcher_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// The contract's corners: what a capacity drop does to operations that come
// back for another attempt, or that are accepted while it happens; what
// Flush waits for; extreme capacities and costs.

// An operation that ProcessBatch sends back (a retry or a throttle, for the
// operation or the whole batch) after the maximum capacity fell below its
// cost could never go out again: it fails with ErrTooExpensive, and the
// operations of its watcher behind it go on (G7, G4).
func TestRetriedOperationAboveALoweredMaxCapacityFails(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer func(big *batcher.Operation) error
	}{
		{"Operation.Retry", func(op *batcher.Operation) error { op.Retry(errors.New("again")); return nil }},
		{"Operation.Throttle", func(op *batcher.Operation) error { op.Throttle(0, errors.New("429")); return nil }},
		{"Retry", func(*batcher.Operation) error { return batcher.Retry(errors.New("again")) }},
		{"Throttle", func(*batcher.Operation) error { return batcher.Throttle(0, errors.New("429")) }},
	} {
		for _, late := range []bool{false, true} {
			name := c.name
			if late {
				name += ", the drop seen after the batch returned"
			}
			t.Run(name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					lim := ratelimiter.NewProvisioned(100)
					b := batcher.NewBatcher().WithRateLimiter(lim)
					ev := &events{}
					b.AddListener(ev.add)
					start(t, b)
					returned := make(chan struct{})
					w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
						if batch[0].Cost() != 80 {
							return nil
						}
						if err := lim.SetCapacity(50); err != nil {
							t.Error(err)
						}
						if !late {
							// The Batcher has read the new maximum before
							// the batch comes back.
							time.Sleep(300 * time.Millisecond)
						}
						defer close(returned)
						return c.answer(batch[0])
					}).WithMaxBatchSize(1)
					big := enqueue(t, b, w, 1, 80)[0]
					<-returned
					small := enqueue(t, b, w, 1, 10)[0]
					if err := waitFor(t, big); !errors.Is(err, batcher.ErrTooExpensive) {
						t.Errorf("the operation of cost 80 ended with %v, want ErrTooExpensive", err)
					}
					if err := waitFor(t, small); err != nil {
						t.Errorf("the operation of cost 10 behind it: %v", err)
					}
					if err := shutdown(t, b); err != nil {
						t.Errorf("Shutdown: %v", err)
					}
					if failed := ev.of(batcher.Failed); len(failed) != 1 || failed[0].Batch[0] != big {
						t.Errorf("failed events %v, want one for the operation of cost 80", failed)
					}
					if st := b.Stats(); st.Failed != 1 || st.Succeeded != 1 || st.Buffered != 0 || st.InFlight != 0 {
						t.Errorf("Stats %+v, want 1 failed, 1 succeeded, nothing left", st)
					}
				})
			})
		}
	}
}

// stallingLimiter is a provisioned capacity whose MaxCapacity, once asked to
// stall, reads the maximum and then takes 10ms to return it: an Enqueue
// that checks an operation's cost against it passes on the old maximum
// while the Batcher applies a new one.
type stallingLimiter struct {
	mu       sync.Mutex
	capacity int
	stall    bool
}

func (l *stallingLimiter) MaxCapacity() int {
	l.mu.Lock()
	c, stall := l.capacity, l.stall
	l.stall = false
	l.mu.Unlock()
	if stall {
		time.Sleep(10 * time.Millisecond)
	}
	return c
}

func (l *stallingLimiter) Capacity() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.capacity
}

func (l *stallingLimiter) set(capacity int, stall bool) {
	l.mu.Lock()
	l.capacity, l.stall = capacity, stall
	l.mu.Unlock()
}

func (l *stallingLimiter) GiveMe(int)                  {}
func (l *stallingLimiter) Start(context.Context) error { return nil }

// An operation accepted by Enqueue just as the maximum capacity falls below
// its cost, after the Batcher has failed what it held above the new
// maximum, fails with ErrTooExpensive too: it could never go out (G7).
func TestEnqueueRacingACapacityDropFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &stallingLimiter{capacity: 100}
		b := start(t, batcher.NewBatcher().WithRateLimiter(lim).
			WithCapacityInterval(time.Millisecond).WithPauseTime(time.Hour).WithMaxPauseTime(time.Hour))
		b.Pause() // nothing goes out: what is accepted stays buffered
		s := &sink{}
		w := s.watcher()
		early := enqueue(t, b, w, 1, 80)[0]
		lim.set(100, true)
		late := batcher.NewOperation(w, 80, "late", true)
		go func() {
			time.Sleep(time.Millisecond)
			lim.set(50, false) // while Enqueue has read 100
		}()
		if err := b.Enqueue(late); err != nil {
			t.Fatalf("Enqueue: %v (it read the maximum before the drop)", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		for _, op := range []*batcher.Operation{early, late} {
			if err := op.Wait(ctx); !errors.Is(err, batcher.ErrTooExpensive) {
				t.Errorf("%v ended with %v, want ErrTooExpensive", op.Payload(), err)
			}
		}
		if n := b.OperationsInBuffer(); n != 0 {
			t.Errorf("%d operations in the buffer, want none", n)
		}
	})
}

// The same race as it happens, in real time: producers enqueue while the
// capacity falls. Whatever Enqueue accepted ends with ErrTooExpensive; none
// waits for Shutdown.
func TestEnqueueRacingSetCapacityFailsEveryAcceptedOperation(t *testing.T) {
	stuck := 0
	for range 40 {
		lim := ratelimiter.NewProvisioned(100)
		b := start(t, batcher.NewBatcher().WithRateLimiter(lim).
			WithCapacityInterval(time.Millisecond).WithPauseTime(time.Hour).WithMaxPauseTime(time.Hour).
			WithBufferSize(1<<20))
		b.Pause()
		w := (&sink{}).watcher()
		var (
			mu       sync.Mutex
			accepted []*batcher.Operation
			wg       sync.WaitGroup
		)
		var stop atomic.Bool
		for p := range 4 {
			wg.Go(func() {
				for i := 0; !stop.Load(); i++ {
					op := batcher.NewOperation(w, 80, p<<32+i, true)
					if b.Enqueue(op) == nil {
						mu.Lock()
						accepted = append(accepted, op)
						mu.Unlock()
					}
				}
			})
		}
		time.Sleep(time.Millisecond)
		lim.SetCapacity(50)
		time.Sleep(5 * time.Millisecond)
		stop.Store(true)
		wg.Wait()
		// The drop is applied within a capacity interval; a few seconds
		// leave room for a loaded machine.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		for _, op := range accepted {
			if err := op.Wait(ctx); err == context.DeadlineExceeded {
				stuck++
			} else if !errors.Is(err, batcher.ErrTooExpensive) {
				t.Errorf("an accepted operation ended with %v, want ErrTooExpensive", err)
			}
		}
		cancel()
		b.Close()
		if stuck > 0 {
			break
		}
	}
	if stuck > 0 {
		t.Errorf("%d accepted operations were still buffered 5s after the drop", stuck)
	}
}

// Flush waits until every operation enqueued before the call has ended,
// those that a drop of the maximum capacity fails included: when it
// returns, each one's Done is closed (G3).
func TestFlushWaitsForOperationsACapacityDropFails(t *testing.T) {
	for _, drop := range []int{50, 0} {
		t.Run(fmt.Sprintf("to %d", drop), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				lim := ratelimiter.NewProvisioned(100)
				b := batcher.NewBatcher().WithRateLimiter(lim).
					WithPauseTime(time.Hour).WithMaxPauseTime(time.Hour)
				first := true
				b.AddListener(func(e batcher.Event) {
					if e.Kind == batcher.Failed && first {
						// A listener that takes its time (fake time: 1ms)
						// leaves Flush's goroutine the moment to look.
						first = false
						time.Sleep(time.Millisecond)
					}
				})
				start(t, b)
				b.Pause()
				ops := enqueue(t, b, (&sink{}).watcher(), 1000, 60)
				result := make(chan string, 1)
				go func() {
					if err := b.Flush(bounded(t)); err != nil {
						result <- fmt.Sprint("Flush: ", err)
						return
					}
					open := 0
					for _, op := range ops {
						if !isDone(op) {
							open++
						}
					}
					result <- fmt.Sprintf("%d of %d operations not ended", open, len(ops))
				}()
				time.Sleep(time.Millisecond)
				lim.SetCapacity(drop)
				if got, want := <-result, fmt.Sprintf("0 of %d operations not ended", len(ops)); got != want {
					t.Errorf("when Flush returned: %s, want %s", got, want)
				}
			})
		})
	}
}

// With capacity × FlushInterval under one unit, a full batch whose first
// operation costs 1 and the others 0 goes out: under synctest, where the
// owner goroutine looping without blocking would stop fake time, the test
// ends, and the batch is released at once (G7).
func TestABatchOfCostsOneAndZeroGoesUnderATinyCapacity(t *testing.T) {
	for _, c := range []struct {
		capacity int
		flush    time.Duration
	}{{1, 100 * time.Millisecond}, {1, time.Millisecond}, {5, 100 * time.Millisecond}} {
		t.Run(fmt.Sprintf("C=%d flush=%v", c.capacity, c.flush), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(c.capacity)).
					WithFlushInterval(c.flush))
				s := &sink{}
				w := s.watcher().WithMaxBatchSize(3)
				t0 := time.Now()
				for round := range 3 {
					// One batch at a time: the intake's shards may reorder
					// operations enqueued together.
					var ops []*batcher.Operation
					for i, cost := range []int{1, 0, 0} {
						op := batcher.NewOperation(w, cost, round*3+i, true)
						if err := b.Enqueue(op); err != nil {
							t.Fatal(err)
						}
						ops = append(ops, op)
					}
					for _, op := range ops {
						if err := waitFor(t, op); err != nil {
							t.Fatal(err)
						}
					}
				}
				// One unit a second: the operations of cost 1 go at 0, 1
				// and 2 seconds (and the ledger's slack). (One of cost 0
				// that the intake put ahead of its batch's cost-1 one may
				// go alone at a flush before it.)
				var paid []time.Duration
				for _, r := range s.log.All() {
					if r.Cost > 0 {
						paid = append(paid, r.At.Sub(t0))
					}
				}
				if want := []time.Duration{0, time.Second + time.Millisecond, 2*time.Second + 2*time.Millisecond}; c.capacity == 1 && !slices.Equal(paid, want) {
					t.Errorf("the operations of cost 1 went at %v, want %v", paid, want)
				}
				checkWindows(t, &s.log, c.capacity)
				if err := shutdown(t, b); err != nil {
					t.Error(err)
				}
			})
		})
	}
}

// At capacity math.MaxInt32, an operation declared at math.MaxInt32 that
// reports an actual cost of math.MaxInt32 fills its second: an operation of
// cost 1 waits until the second has passed (G1).
func TestTheLargestActualCostFillsTheSecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const c = math.MaxInt32
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(c)))
		var log releases.Log // actual costs at the moments of release
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			at, _ := batcher.ReleasedAt(ctx)
			cost := 0
			for _, op := range batch {
				if op.Cost() == c {
					op.SetActualCost(c)
				}
				cost += op.Cost()
			}
			log.AddAt(at, cost)
			return nil
		}).WithMaxBatchSize(1) // each goes at once
		t0 := time.Now()
		big := enqueue(t, b, w, 1, c)[0]
		if err := waitFor(t, big); err != nil {
			t.Fatal(err)
		}
		time.Sleep(990 * time.Millisecond)
		if err := waitFor(t, enqueue(t, b, w, 1, 1)[0]); err != nil {
			t.Fatal(err)
		}
		rs := log.All()
		if len(rs) != 2 || rs[1].At.Sub(t0) < time.Second {
			var at []time.Duration
			for _, r := range rs {
				at = append(at, r.At.Sub(t0))
			}
			t.Errorf("releases at %v after the start, want the cost-1 operation a second after the first", at)
		}
		checkWindows(t, &log, c)
	})
}

// Extreme capacities and costs work: capacity math.MaxInt (or near it),
// operations of cost math.MaxInt32, flush intervals up to a minute. The
// Batcher releases them within capacity and ends (under synctest, a wait
// that overflowed to a moment in the past made the owner loop, and fake
// time stood still).
func TestExtremeCapacitiesAndCostsWork(t *testing.T) {
	for _, c := range []struct {
		capacity int
		flush    time.Duration
	}{
		{math.MaxInt, 10 * time.Second},
		{math.MaxInt, time.Millisecond},
		{math.MaxInt - 1, time.Minute},
		{math.MaxInt / 3, 100 * time.Millisecond},
		{3 * math.MaxInt32, 10 * time.Second},
		{math.MaxInt32, 10 * time.Second},
	} {
		t.Run(fmt.Sprintf("C=%d flush=%v", c.capacity, c.flush), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(c.capacity)).
					WithFlushInterval(c.flush))
				s := &sink{}
				w := s.watcher().WithMaxBatchSize(3)
				ops := enqueue(t, b, w, 20, math.MaxInt32)
				for _, op := range ops {
					if err := waitFor(t, op); err != nil {
						t.Fatal(err)
					}
				}
				checkWindows(t, &s.log, c.capacity)
				if err := shutdown(t, b); err != nil {
					t.Error(err)
				}
			})
		})
	}
}

// G2 as it holds, in the seconds of any clock (the datastore's): under a
// backlog each period of 1.001 s (a window and the ledger's slack) releases
// the capacity, and the pattern of releases repeats with that period, so it
// slides a millisecond a second against any other clock. A second of that
// clock misses a millisecond of a period: it releases at least the
// capacity less one share, the most released at one moment, which is one
// flush interval's share of the capacity (rounded up to a whole operation)
// or one operation if it costs more, or a token bucket's burst. With
// shares of 1% of the capacity, every second of any clock gets 99%.
func TestG2InTheSecondsOfAnyClock(t *testing.T) {
	for _, c := range []struct {
		name                  string
		capacity, cost, batch int
		flush                 time.Duration
		bucket                int // burst of a token bucket; 0 for a provisioned capacity
		run                   time.Duration
		share                 int // one share, as the docs give it
	}{
		{"the defaults", 10000, 10, 100, 100 * time.Millisecond, 0, 80 * time.Second, 1000},
		{"an odd capacity, no batch size", 12345, 5, 0, 33 * time.Millisecond, 0, 30 * time.Second, 410},
		{"shares of 1%", 10000, 10, 10, 10 * time.Millisecond, 0, 30 * time.Second, 100},
		{"shares of 1% in batches of 10%", 10000, 10, 100, 10 * time.Millisecond, 0, 30 * time.Second, 100},
		{"C=5", 5, 1, 10, 100 * time.Millisecond, 0, 30 * time.Second, 1},
		{"operations of half of C", 10000, 5000, 10, 100 * time.Millisecond, 0, 30 * time.Second, 5000},
		{"a token bucket's burst", 1000, 10, 100, 100 * time.Millisecond, 50, 30 * time.Second, 50},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var lim batcher.RateLimiter = ratelimiter.NewProvisioned(c.capacity)
				if c.bucket > 0 {
					lim = ratelimiter.NewTokenBucket(c.capacity, c.bucket)
				}
				b := start(t, batcher.NewBatcher().WithRateLimiter(lim).WithFlushInterval(c.flush))
				s := &sink{}
				w := s.watcher().WithMaxBatchSize(c.batch)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				t0 := time.Now()
				feed(ctx, b, w, c.cost)
				time.Sleep(c.run)
				cancel()

				checkWindows(t, &s.log, c.capacity)
				whole := c.capacity / c.cost * c.cost // what costs of c.cost can fill
				f := checkUse(t, s.log.All(), t0, c.run, whole)
				if f.share > c.share {
					t.Errorf("a millisecond released %d, more than one share, %d", f.share, c.share)
				}
				if f.second < whole-c.share {
					t.Errorf("a second of some clock released %d, less than the capacity less one share, %d", f.second, whole-c.share)
				}
				if c.share*100 <= c.capacity && f.second*100 < 99*c.capacity {
					t.Errorf("with shares of 1%% a second of some clock released %d, under 99%% of %d", f.second, c.capacity)
				}
			})
		})
	}
}

// An operation accepted after the maximum capacity rose is not failed by a
// capacity interval that read the maximum before it rose: the Batcher
// drops, for having cost more than the maximum it last read, only what was
// buffered before it read the new one.
func TestARiseOfMaxCapacityDuringItsReadFailsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &stallingLimiter{capacity: 50}
		b := start(t, batcher.NewBatcher().WithRateLimiter(lim).
			WithPauseTime(time.Hour).WithMaxPauseTime(time.Hour))
		b.Pause()
		w := (&sink{}).watcher()
		lim.set(50, true) // the next read, the capacity interval's at 100ms, stalls
		time.Sleep(101 * time.Millisecond)
		lim.set(100, false)
		op := enqueue(t, b, w, 1, 80)[0] // checked against 100
		if n := b.OperationsInBuffer(); n != 1 {
			t.Fatalf("%d operations buffered, want 1", n)
		}
		time.Sleep(time.Second) // the stalled read ends with 50, and ten intervals read 100
		if isDone(op) {
			t.Fatalf("the operation of cost 80, accepted under a maximum of 100, ended: %v", op.Err())
		}
	})
}
