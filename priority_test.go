package batcher_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Priorities, weights and guaranteed shares between watchers.

// feedBounded keeps up to max operations of cost for w outstanding in b
// from a goroutine until ctx ends, as a bulk loader with a window does:
// unlike feed, it leaves the rest of the buffer to others.
func feedBounded(ctx context.Context, b *batcher.Batcher, w *batcher.Watcher, cost, max int) {
	go func() {
		var window []*batcher.Operation
		for i := 0; ; i++ {
			if len(window) == max {
				select {
				case <-window[0].Done():
				case <-ctx.Done():
					return
				}
				window = window[1:]
			}
			op := batcher.NewOperation(w, cost, i, true)
			if err := b.EnqueueContext(ctx, op); err != nil {
				return
			}
			window = append(window, op)
		}
	}()
}

// costLog records the cost each watcher had released, by when.
type costLog struct {
	mu  sync.Mutex
	rel map[string][]release
}

type release struct {
	at   time.Time
	cost int
}

func (l *costLog) watcher(name string) *batcher.Watcher {
	return batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		cost := 0
		for _, op := range batch {
			cost += op.Cost()
		}
		l.mu.Lock()
		if l.rel == nil {
			l.rel = map[string][]release{}
		}
		l.rel[name] = append(l.rel[name], release{time.Now(), cost})
		l.mu.Unlock()
		return nil
	})
}

// between returns the cost released for name in [from, to).
func (l *costLog) between(name string, from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.rel[name] {
		if !r.at.Before(from) && r.at.Before(to) {
			n += r.cost
		}
	}
	return n
}

func TestWeightsShareTheCapacityInProportion(t *testing.T) {
	// Two backlogged watchers of weights 3 and 1 share a capacity of 1,000:
	// over every 10 s their released cost is 3:1 within 2%.
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000)).WithBufferSize(20_000))
		l := &costLog{}
		heavy := l.watcher("3").WithWeight(3).WithMaxBatchSize(10)
		light := l.watcher("1").WithMaxBatchSize(10)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		feedBounded(ctx, b, heavy, 1, 5000)
		feedBounded(ctx, b, light, 1, 5000)
		t0 := time.Now()
		time.Sleep(41 * time.Second)
		cancel()
		for from := t0.Add(time.Second); from.Add(10 * time.Second).Before(t0.Add(41 * time.Second)); from = from.Add(10 * time.Second) {
			to := from.Add(10 * time.Second)
			h, lt := l.between("3", from, to), l.between("1", from, to)
			if lt == 0 {
				t.Fatalf("%v-%v: the weight-1 watcher got nothing (weight 3 got %d)", from.Sub(t0), to.Sub(t0), h)
			}
			if r := float64(h) / float64(lt); r < 3*0.98 || r > 3*1.02 {
				t.Errorf("%v-%v: released %d and %d, ratio %.3f, want 3 within 2%%", from.Sub(t0), to.Sub(t0), h, lt, r)
			}
		}
	})
}

// priorityLatency runs a bulk watcher that keeps capacity C=1,000 saturated
// (unless bulk is false) and an interactive watcher that sends 20% of C, an
// operation every 5 ms, for 20 s; it returns the interactive operations'
// p99 latency from Enqueue to ProcessBatch, and the bulk's released cost
// per second.
func priorityLatency(t *testing.T, bulk bool, prio int) (p99 time.Duration, bulkRate float64) {
	t.Helper()
	var (
		mu       sync.Mutex
		lats     []time.Duration
		bulkCost int
	)
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000)).WithBufferSize(20_000))
		hi := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			for _, op := range batch {
				lats = append(lats, time.Since(op.Payload().(time.Time)))
			}
			return nil
		}).WithPriority(prio).WithMaxBatchSize(10)
		var from, to time.Time
		lo := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			mu.Lock()
			defer mu.Unlock()
			if now := time.Now(); !now.Before(from) && now.Before(to) {
				bulkCost += len(batch)
			}
			return nil
		}).WithMaxBatchSize(10)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		if bulk {
			feedBounded(ctx, b, lo, 1, 5000)
		}
		time.Sleep(2 * time.Second) // the bulk load saturates the capacity
		mu.Lock()
		from, to = time.Now(), time.Now().Add(20*time.Second)
		mu.Unlock()
		for range 4000 { // 20 s
			if err := b.Enqueue(batcher.NewOperation(hi, 1, time.Now(), true)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Second)
		cancel()
	})
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lats)
	if len(lats) != 4000 {
		t.Fatalf("%d interactive operations released, want 4000", len(lats))
	}
	return lats[len(lats)*99/100], float64(bulkCost) / 20
}

func TestHigherPriorityGoesFirstWhileCapacityIsShort(t *testing.T) {
	alone, _ := priorityLatency(t, false, 1)
	loaded, bulkRate := priorityLatency(t, true, 1)
	same, _ := priorityLatency(t, true, 0)
	t.Logf("interactive p99 %v beside the bulk load at the same priority", same)
	t.Logf("interactive p99 %v alone, %v beside the bulk load; bulk %.0f/s", alone, loaded, bulkRate)
	if loaded > alone*11/10 {
		t.Errorf("interactive p99 %v beside a bulk load, %v alone: want within 10%%", loaded, alone)
	}
	if bulkRate < 780 {
		t.Errorf("the bulk load got %.0f/s of the 1,000, want the rest (>= 780)", bulkRate)
	}
}

func TestGuaranteedShareKeepsALowClassGoing(t *testing.T) {
	// A high class saturates the capacity; a low class with a guaranteed
	// share of 25% gets at least about that, and without one gets nothing.
	for _, share := range []float64{0, 0.25} {
		synctest.Test(t, func(t *testing.T) {
			b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000)).WithBufferSize(20_000))
			l := &costLog{}
			hi := l.watcher("hi").WithPriority(1).WithMaxBatchSize(10)
			lo := l.watcher("lo").WithGuaranteedShare(share).WithMaxBatchSize(10)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			feedBounded(ctx, b, hi, 1, 5000)
			feedBounded(ctx, b, lo, 1, 5000)
			t0 := time.Now()
			time.Sleep(12 * time.Second)
			cancel()
			h, lw := l.between("hi", t0.Add(2*time.Second), t0.Add(12*time.Second)), l.between("lo", t0.Add(2*time.Second), t0.Add(12*time.Second))
			got := float64(lw) / float64(h+lw)
			switch {
			case share == 0 && lw > 0:
				t.Errorf("without a guaranteed share the low class got %d of %d: a higher class with work goes first", lw, h+lw)
			case share > 0 && (got < share*0.95 || got > share*1.1):
				t.Errorf("low class got %.3f of the released cost (%d of %d), want its guaranteed %.2f", got, lw, h+lw, share)
			}
		})
	}
}

func TestBadPriorityWeightAndShareAreRefusedByName(t *testing.T) {
	b := start(t, batcher.NewBatcher())
	for _, c := range []struct {
		w    *batcher.Watcher
		want string
	}{
		{batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil }).WithWeight(0), "Weight is 0"},
		{batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil }).WithGuaranteedShare(1), "GuaranteedShare is 1"},
		{batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil }).WithGuaranteedShare(-0.1), "GuaranteedShare is -0.1"},
	} {
		err := b.Enqueue(batcher.NewOperation(c.w, 1, nil, true))
		if !errors.Is(err, batcher.ErrInvalidSetting) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Enqueue = %v, want ErrInvalidSetting naming %q", err, c.want)
		}
	}
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
	if w.Priority() != 0 || w.Weight() != 1 || w.GuaranteedShare() != 0 {
		t.Errorf("defaults: priority %d, weight %d, share %v; want 0, 1, 0", w.Priority(), w.Weight(), w.GuaranteedShare())
	}
}
