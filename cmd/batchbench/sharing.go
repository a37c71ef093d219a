package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Figures 8a and 8b: priorities and weights between watchers sharing one
// capacity, in real time (the root package's priority_test.go checks the
// same in a synctest bubble). Capacity C = 1,000 cost units a second,
// operations of cost 1, batches of 10.

const sharingCapacity = 1000

// feedBounded keeps up to max operations for w outstanding in b from a
// goroutine until ctx ends, as a bulk loader with a window does, and
// returns when that goroutine has ended.
func feedBounded(ctx context.Context, b *batcher.Batcher, w *batcher.Watcher, max int) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		var window []*batcher.Operation
		for {
			if len(window) == max {
				select {
				case <-window[0].Done():
				case <-ctx.Done():
					return
				}
				window = window[1:]
			}
			op := batcher.NewOperation(w, 1, nil, true)
			if err := b.EnqueueContext(ctx, op); err != nil {
				return
			}
			window = append(window, op)
		}
	})
	return wg.Wait
}

// priorityResult is one run of 8a.
type priorityResult struct {
	p99      time.Duration // the interactive operations', Enqueue to ProcessBatch
	bulkRate float64       // the bulk's released cost per second
	samples  int
	err      error
}

// measurePriority runs an interactive watcher of priority 1 that sends 20%
// of C (an operation every 5 ms) for d, beside a bulk watcher of priority
// 0 that keeps C saturated if bulk is set, and measures the interactive
// operations' p99 latency and the bulk's released cost per second meanwhile.
func measurePriority(d, settle time.Duration, bulk bool) priorityResult {
	var (
		r        priorityResult
		mu       sync.Mutex
		lats     []time.Duration
		bulkCost int
		from, to time.Time
	)
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(sharingCapacity)).WithBufferSize(20_000)
	if r.err = b.Start(context.Background()); r.err != nil {
		return r
	}
	hi := batcher.NewWatcher(func(_ context.Context, batch []*batcher.Operation) error {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, op := range batch {
			lats = append(lats, now.Sub(op.Payload().(time.Time)))
		}
		return nil
	}).WithPriority(1).WithMaxBatchSize(10)
	lo := batcher.NewWatcher(func(_ context.Context, batch []*batcher.Operation) error {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if !now.Before(from) && now.Before(to) {
			bulkCost += len(batch)
		}
		return nil
	}).WithMaxBatchSize(10)
	ctx, cancel := context.WithCancel(context.Background())
	wait := func() {}
	if bulk {
		wait = feedBounded(ctx, b, lo, 5000)
	}
	time.Sleep(settle) // the bulk load saturates the capacity
	mu.Lock()
	from, to = time.Now(), time.Now().Add(d)
	mu.Unlock()
	n := int(d / (5 * time.Millisecond))
	for k := range n {
		time.Sleep(time.Until(from.Add(time.Duration(k) * 5 * time.Millisecond)))
		if err := b.Enqueue(batcher.NewOperation(hi, 1, time.Now(), true)); err != nil {
			r.err = err
			break
		}
	}
	time.Sleep(time.Second) // the last interactive batches go
	cancel()
	wait()
	b.Close() // the bulk's backlog would take seconds to drain
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lats)
	r.samples = len(lats)
	if len(lats) < n && r.err == nil {
		r.err = fmt.Errorf("%d of %d interactive operations released", len(lats), n)
	}
	if len(lats) > 0 {
		r.p99 = percentile(lats, 0.99)
	}
	r.bulkRate = float64(bulkCost) / d.Seconds()
	return r
}

// measureWeights runs two backlogged watchers of weights 3 and 1 for
// settle plus windows of window, and returns the ratio of their released
// cost in each window.
func measureWeights(settle, window time.Duration, windows int) ([]float64, error) {
	type rel struct {
		at   time.Time
		cost int
	}
	var (
		mu  sync.Mutex
		log = map[int][]rel{}
	)
	watcher := func(weight int) *batcher.Watcher {
		return batcher.NewWatcher(func(_ context.Context, batch []*batcher.Operation) error {
			now := time.Now()
			mu.Lock()
			log[weight] = append(log[weight], rel{now, len(batch)})
			mu.Unlock()
			return nil
		}).WithWeight(weight).WithMaxBatchSize(10)
	}
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(sharingCapacity)).WithBufferSize(20_000)
	if err := b.Start(context.Background()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	t0 := time.Now()
	w3 := feedBounded(ctx, b, watcher(3), 5000)
	w1 := feedBounded(ctx, b, watcher(1), 5000)
	time.Sleep(settle + time.Duration(windows)*window)
	cancel()
	w3()
	w1()
	b.Close()
	mu.Lock()
	defer mu.Unlock()
	between := func(weight int, from, to time.Time) int {
		n := 0
		for _, r := range log[weight] {
			if !r.at.Before(from) && r.at.Before(to) {
				n += r.cost
			}
		}
		return n
	}
	var ratios []float64
	for k := range windows {
		from := t0.Add(settle + time.Duration(k)*window)
		to := from.Add(window)
		h, l := between(3, from, to), between(1, from, to)
		if l == 0 {
			return ratios, fmt.Errorf("window %d: the weight-1 watcher got nothing (weight 3 got %d)", k+1, h)
		}
		ratios = append(ratios, float64(h)/float64(l))
	}
	return ratios, nil
}

// sharingResult is figures 8a and 8b's measurements.
type sharingResult struct {
	alone, loaded  priorityResult
	ratios         []float64
	weightsErr     error
	settle, window time.Duration
}

// measureSharing runs 8a's two runs (d each, after settle) and 8b's
// (windows of window, after settle) concurrently: each uses a capacity of
// 1,000 a second, little CPU.
func measureSharing(cfg config) sharingResult {
	r := sharingResult{settle: cfg.settle, window: cfg.sharingWindow}
	var wg sync.WaitGroup
	wg.Go(func() { r.alone = measurePriority(cfg.sharing, cfg.settle, false) })
	wg.Go(func() { r.loaded = measurePriority(cfg.sharing, cfg.settle, true) })
	wg.Go(func() { r.ratios, r.weightsErr = measureWeights(cfg.settle, cfg.sharingWindow, cfg.sharingWindows) })
	wg.Wait()
	return r
}

func sharingFigures(r sharingResult) []figure {
	a := figure{ID: "8a", Name: "priority: interactive p99 beside a saturating bulk load / alone; bulk's share of C",
		Unit: "ratio, C", Target: "<= 1.10, bulk >= 0.78 C", Seed: "n/a (no priorities)"}
	if err := errors.Join(r.alone.err, r.loaded.err); err != nil {
		a = errorFigure(a, err)
	} else {
		ratio := float64(r.loaded.p99) / float64(r.alone.p99)
		bulk := r.loaded.bulkRate / sharingCapacity
		a.Measured, a.Pass = true, ratio <= 1.10 && bulk >= 0.78
		a.Value = fmt.Sprintf("%.3f (p99 %.1f ms beside, %.1f ms alone), bulk %.3f C",
			ratio, ms(r.loaded.p99), ms(r.alone.p99), bulk)
		a.Values = map[string]float64{"p99_ratio": ratio, "p99_loaded_ms": ms(r.loaded.p99), "p99_alone_ms": ms(r.alone.p99),
			"bulk_share": bulk, "samples": float64(r.loaded.samples)}
		a.Note = fmt.Sprintf("C=%d/s, cost 1, batches of 10; an interactive op (priority 1) every 5 ms, %d of them, alone and beside a bulk watcher (priority 0) keeping 5,000 ops outstanding; real time",
			sharingCapacity, r.loaded.samples)
	}
	b := figure{ID: "8b", Name: fmt.Sprintf("weights 3:1, two backlogged watchers: released cost ratio over each %v", r.window),
		Unit: "ratio", Target: "3 within 2% (2.94-3.06) in every window", Seed: "n/a (no weights)"}
	if r.weightsErr != nil || len(r.ratios) == 0 {
		err := r.weightsErr
		if err == nil {
			err = errors.New("no window measured")
		}
		b = errorFigure(b, err)
	} else {
		lo, hi := slices.Min(r.ratios), slices.Max(r.ratios)
		b.Measured, b.Pass = true, lo >= 3*0.98 && hi <= 3*1.02
		b.Value = fmt.Sprintf("%.3f-%.3f over %d windows", lo, hi, len(r.ratios))
		b.Values = map[string]float64{"ratio_min": lo, "ratio_max": hi, "windows": float64(len(r.ratios))}
		b.Note = fmt.Sprintf("C=%d/s, cost 1, batches of 10, each watcher keeping 5,000 ops outstanding; windows of %v after %v; real time",
			sharingCapacity, r.window, r.settle)
	}
	return []figure{a, b}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
