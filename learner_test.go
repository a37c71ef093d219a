package batcher_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
)

// learning is a fixed-capacity rate limiter that records the outcomes the
// Batcher tells it of. Its ObserveBatch reads the Batcher's Stats, which
// takes the Batcher's lock: it would deadlock if the Batcher held it.
type learning struct {
	b        *batcher.Batcher
	mu       sync.Mutex
	outcomes []batcher.BatchOutcome
}

func (l *learning) MaxCapacity() int            { return 1000 }
func (l *learning) Capacity() int               { return 1000 }
func (l *learning) GiveMe(int)                  {}
func (l *learning) Start(context.Context) error { return nil }
func (l *learning) ObserveBatch(o batcher.BatchOutcome) {
	_ = l.b.Stats()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.outcomes = append(l.outcomes, o)
}

func (l *learning) all() []batcher.BatchOutcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]batcher.BatchOutcome(nil), l.outcomes...)
}

// The Batcher tells a Learner limiter what each ProcessBatch call showed,
// once per call, with the watcher, the moments of the call, the counts, the
// cost charged (actual costs where reported) and the longest retry-after.
func TestLearnerSeesEachBatchOutcome(t *testing.T) {
	errThrottled := errors.New("429")
	cases := []struct {
		name  string
		first func(batch []*batcher.Operation) error // the first call's answer; later calls succeed
		want  batcher.BatchOutcome                   // the first outcome, without Watcher and times
	}{
		{"success", func([]*batcher.Operation) error { return nil },
			batcher.BatchOutcome{Operations: 3, Cost: 6, Succeeded: 3}},
		{"success with actual costs", func(b []*batcher.Operation) error {
			b[0].SetActualCost(5)
			b[2].SetActualCost(1)
			return nil
		}, batcher.BatchOutcome{Operations: 3, Cost: 8, Succeeded: 3}},
		{"op throttles with retry-after", func(b []*batcher.Operation) error {
			b[1].Throttle(250*time.Millisecond, errThrottled)
			b[2].Throttle(400*time.Millisecond, errThrottled)
			b[2].SetActualCost(0) // a 429 charges nothing
			return nil
		}, batcher.BatchOutcome{Operations: 3, Cost: 4, Succeeded: 1, Throttled: 2, RetryAfter: 400 * time.Millisecond}},
		{"op throttle without retry-after", func(b []*batcher.Operation) error {
			b[0].Throttle(0, errThrottled)
			b[1].Retry(errors.New("timeout"))
			return nil
		}, batcher.BatchOutcome{Operations: 3, Cost: 6, Succeeded: 1, Throttled: 1}},
		{"batch Throttle error", func([]*batcher.Operation) error {
			return batcher.Throttle(300*time.Millisecond, errThrottled)
		}, batcher.BatchOutcome{Operations: 3, Cost: 6, Throttled: 3, RetryAfter: 300 * time.Millisecond}},
		{"batch failure", func([]*batcher.Operation) error {
			return errors.New("bad request")
		}, batcher.BatchOutcome{Operations: 3, Cost: 6}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const work = 10 * time.Millisecond // how long ProcessBatch takes
				lim := &learning{}
				var (
					mu    sync.Mutex
					calls int
				)
				w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
					time.Sleep(work)
					mu.Lock()
					calls++
					n := calls
					mu.Unlock()
					if n == 1 {
						return tc.first(batch)
					}
					return nil
				}).WithRetryBackoff(time.Millisecond, time.Millisecond)
				b := batcher.NewBatcher().WithRateLimiter(lim).WithFlushInterval(100 * time.Millisecond)
				lim.b = b
				t0 := time.Now()
				if err := b.Start(t.Context()); err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					if err := b.Enqueue(batcher.NewOperation(w, 2, i, true)); err != nil {
						t.Fatal(err)
					}
				}
				time.Sleep(time.Second)
				if err := b.Shutdown(context.Background()); err != nil {
					t.Fatal(err)
				}
				got := lim.all()
				mu.Lock()
				n := calls
				mu.Unlock()
				if len(got) != n || n == 0 {
					t.Fatalf("%d outcomes for %d ProcessBatch calls", len(got), n)
				}
				o := got[0]
				if o.Watcher != w {
					t.Errorf("Watcher = %p, want %p", o.Watcher, w)
				}
				if want := t0.Add(100 * time.Millisecond); !o.Released.Equal(want) {
					t.Errorf("Released = %v after start, want the first flush, %v", o.Released.Sub(t0), want.Sub(t0))
				}
				if got := o.Returned.Sub(o.Released); got != work {
					t.Errorf("Returned - Released = %v, want %v", got, work)
				}
				o.Watcher, o.Released, o.Returned = nil, time.Time{}, time.Time{}
				if o != tc.want {
					t.Errorf("outcome\n got %+v\nwant %+v", o, tc.want)
				}
				for _, o := range got[1:] { // the retries, which succeed
					if o.Throttled != 0 || o.Succeeded != o.Operations {
						t.Errorf("a later outcome: %+v", o)
					}
				}
			})
		})
	}
}
