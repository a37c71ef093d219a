package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// shutdownTimeout bounds every graceful Shutdown; a Batcher that has not
// drained by then is closed.
const shutdownTimeout = 10 * time.Second

// shutdown shuts b down gracefully, or closes it if that takes too long.
func shutdown(b *batcher.Batcher) error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		b.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func nothing(context.Context, []*batcher.Operation) error { return nil }

// throughputRun is one run of figures 1 and 2.
type throughputRun struct {
	OpsPerSec   float64 `json:"ops_per_sec"`
	AllocsPerOp float64 `json:"allocs_per_op"`
	Seconds     float64 `json:"seconds"`
	// FloorOpsPerSec is the same producers only creating the operations,
	// measured right after: what the machine allows before any batching.
	FloorOpsPerSec float64 `json:"floor_ops_per_sec"`
	// MinimalOpsPerSec is the minimal pipeline (minimal.go), measured
	// right after the floor: the least a batcher with per-op results does.
	MinimalOpsPerSec float64 `json:"minimal_ops_per_sec"`
}

// measureThroughput enqueues n cost-1 operations from the given number of
// producers into a fresh Batcher with no limiter, and times it until Flush
// returns.
func measureThroughput(n, producers int) (throughputRun, error) {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		return throughputRun{}, err
	}
	w := batcher.NewWatcher(nothing).WithMaxBatchSize(100)
	flushCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		refused atomic.Int64
		wg      sync.WaitGroup
		m0, m1  runtime.MemStats
	)
	runtime.GC()
	runtime.ReadMemStats(&m0)
	start := time.Now()
	for p := range producers {
		k := share(n, producers, p)
		wg.Go(func() {
			for range k {
				if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
					refused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	flushErr := b.Flush(flushCtx)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&m1)

	stats := b.Stats()
	err := errors.Join(flushErr, shutdown(b))
	if r := refused.Load(); r > 0 {
		err = errors.Join(err, fmt.Errorf("%d operations refused", r))
	}
	if stats.Succeeded != int64(n) {
		err = errors.Join(err, fmt.Errorf("%d of %d operations succeeded by the end of Flush", stats.Succeeded, n))
	}
	return throughputRun{
		OpsPerSec:        float64(n) / elapsed.Seconds(),
		AllocsPerOp:      float64(m1.Mallocs-m0.Mallocs) / float64(n),
		Seconds:          elapsed.Seconds(),
		FloorOpsPerSec:   measureFloor(n, producers, w),
		MinimalOpsPerSec: measureMinimal(n, producers),
	}, err
}

// share returns how many of n operations producer p of producers makes.
func share(n, producers, p int) int {
	k := n / producers
	if p < n%producers {
		k++
	}
	return k
}

// measureFloor times the producers of measureThroughput doing nothing but
// creating their operations (each kept in a small ring, as a caller would
// hold on to them a while), on the same machine moments later.
func measureFloor(n, producers int, w *batcher.Watcher) float64 {
	var wg sync.WaitGroup
	runtime.GC()
	start := time.Now()
	for p := range producers {
		k := share(n, producers, p)
		wg.Go(func() {
			var keep [64]*batcher.Operation
			for i := range k {
				keep[i%len(keep)] = batcher.NewOperation(w, 1, nil, true)
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// backlogResult is what a real-time backlog released.
type backlogResult struct {
	capacity, cost, maxBatch int
	t0, end                  time.Time // the feeder's start, and the end of the measurement
	releases                 []releases.Release
	stats                    batcher.Stats
	err                      error
}

// measureBacklog keeps the buffer of a Batcher with a provisioned capacity
// full of operations of the given cost for d, recording every batch's time
// and cost as ProcessBatch receives it.
func measureBacklog(capacity, cost, maxBatch int, d time.Duration) backlogResult {
	r := backlogResult{capacity: capacity, cost: cost, maxBatch: maxBatch}
	var log releases.Log
	w := batcher.NewWatcher(func(_ context.Context, batch []*batcher.Operation) error {
		now, sum := time.Now(), 0
		for _, op := range batch {
			sum += op.Cost()
		}
		log.AddAt(now, sum)
		return nil
	}).WithMaxBatchSize(maxBatch)
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(capacity))
	if r.err = b.Start(context.Background()); r.err != nil {
		return r
	}
	ctx, cancel := context.WithCancel(context.Background())
	fed := make(chan error, 1)
	r.t0 = time.Now()
	go func() {
		for {
			if err := b.EnqueueContext(ctx, batcher.NewOperation(w, cost, nil, true)); err != nil {
				if ctx.Err() != nil || errors.Is(err, batcher.ErrClosed) {
					err = nil
				}
				fed <- err
				return
			}
		}
	}()
	time.Sleep(d)
	r.end = time.Now()
	cancel()
	b.Close() // the buffer holds seconds of work: abort, do not drain
	r.err = <-fed
	r.stats = b.Stats()
	r.releases = log.All()
	return r
}

// window returns how many releases the one-second window from at holds,
// and the time from its first to its last.
func (r backlogResult) window(at time.Time) (n int, span time.Duration) {
	for _, x := range r.releases {
		if !x.At.Before(at) && x.At.Before(at.Add(time.Second)) {
			n++
			span = x.At.Sub(at)
		}
	}
	return n, span
}

// total returns the cost released in all.
func (r backlogResult) total() int {
	n := 0
	for _, x := range r.releases {
		n += x.Cost
	}
	return n
}

// perSecond returns, for every whole second from settle after the start to
// the end of the measurement, the cost released in it over the capacity.
func (r backlogResult) perSecond(settle time.Duration) []float64 {
	var out []float64
	for s := r.t0.Add(settle); !s.Add(time.Second).After(r.end); s = s.Add(time.Second) {
		out = append(out, float64(releases.Between(r.releases, s, s.Add(time.Second)))/float64(r.capacity))
	}
	return out
}

// latencyResult holds the delays from Enqueue to ProcessBatch.
type latencyResult struct {
	samples []time.Duration // sorted
	stats   batcher.Stats
	err     error
}

// measureLatency enqueues one operation in each interval-long slot for d,
// at a random point of the slot, into a Batcher with no limiter, and
// records, in ProcessBatch, how long ago each was enqueued.
//
// The rate is exactly one per interval, but the arrivals are not locked to
// the Batcher's clock. One operation at every tick of a ticker started with
// the Batcher measures the phase between the two tickers instead: an
// arrival that loses the race with a flush tick waits a whole interval, one
// that wins waits none, and which happens depends on the start-up. Runs of
// that kind gave p99 anywhere from 91.0 to 100.7 ms, for this Batcher and,
// in the same harness, for the seed alike.
func measureLatency(d time.Duration, eager bool) latencyResult {
	const interval = 10 * time.Millisecond
	var (
		r  latencyResult
		mu sync.Mutex
	)
	w := batcher.NewWatcher(func(_ context.Context, batch []*batcher.Operation) error {
		lat := make([]time.Duration, len(batch))
		for i, op := range batch {
			lat[i] = time.Since(op.Payload().(time.Time))
		}
		mu.Lock()
		r.samples = append(r.samples, lat...)
		mu.Unlock()
		return nil
	}).WithMaxBatchSize(100)
	b := batcher.NewBatcher()
	if eager {
		b.WithEagerRelease().WithMaxConcurrentBatches(4)
	}
	if r.err = b.Start(context.Background()); r.err != nil {
		return r
	}
	n := max(int(d/interval), 1)
	rng := rand.New(rand.NewPCG(1, 2)) // the same slots' points in every run
	t0 := time.Now()
	for k := range n {
		due := t0.Add(time.Duration(k)*interval + time.Duration(rng.Int64N(int64(interval))))
		time.Sleep(time.Until(due))
		if err := b.Enqueue(batcher.NewOperation(w, 1, time.Now(), true)); err != nil {
			r.err = errors.Join(r.err, err)
			break
		}
	}
	r.err = errors.Join(r.err, shutdown(b))
	r.stats = b.Stats()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(r.samples)
	if len(r.samples) != n && r.err == nil {
		r.err = fmt.Errorf("%d operations enqueued, %d reached ProcessBatch", n, len(r.samples))
	}
	return r
}

// percentile returns the p-th percentile (nearest rank) of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p-1e-9)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// saturationResult is what a flooded eager Batcher released after its
// warm-up.
type saturationResult struct {
	released, batches int64
	d                 time.Duration // measured for
	meanBuffered      float64       // operations waiting, sampled every sampleEvery
	minBuffered       int64
	err               error
}

// sampleEvery is how often the saturation scenarios look at the buffer, to
// show whether it stayed saturated.
const sampleEvery = 50 * time.Millisecond

// measureSaturation floods an eager Batcher from producers for warmup+d and
// counts the operations released and the batches between the warm-up's end
// and d later. With capacity > 0 the Batcher has a provisioned capacity;
// with slots > 0 the watcher runs at most that many batches at once, each
// taking hold.
func measureSaturation(producers, capacity, slots int, hold, warmup, d time.Duration) saturationResult {
	var r saturationResult
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error {
		if hold > 0 {
			time.Sleep(hold)
		}
		return nil
	}).WithMaxBatchSize(100)
	if slots > 0 {
		w.WithMaxConcurrentBatches(slots)
	}
	b := batcher.NewBatcher().WithEagerRelease()
	if capacity > 0 {
		b.WithRateLimiter(ratelimiter.NewProvisioned(capacity))
	}
	if r.err = b.Start(context.Background()); r.err != nil {
		return r
	}
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg   sync.WaitGroup
		errs = make([]error, producers)
	)
	for p := range producers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := b.EnqueueContext(ctx, batcher.NewOperation(w, 1, nil, true)); err != nil {
					if ctx.Err() == nil {
						errs[p] = err
					}
					return
				}
			}
		})
	}
	time.Sleep(warmup)
	s0, t0 := b.Stats(), time.Now()
	tick, done := time.NewTicker(sampleEvery), time.After(d)
	var sum, samples int64
sampling:
	for {
		select {
		case <-tick.C:
			n := b.Stats().Buffered
			if samples == 0 || n < r.minBuffered {
				r.minBuffered = n
			}
			sum, samples = sum+n, samples+1
		case <-done:
			break sampling
		}
	}
	tick.Stop()
	s1, t1 := b.Stats(), time.Now()
	if samples > 0 {
		r.meanBuffered = float64(sum) / float64(samples)
	}
	cancel()
	wg.Wait()
	r.err = errors.Join(append(errs, shutdown(b))...)
	r.released, r.batches, r.d = s1.Released-s0.Released, s1.Batches-s0.Batches, t1.Sub(t0)
	return r
}
