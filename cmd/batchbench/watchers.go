package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher"
)

// The release scheduler's figures (7a-7f): throughput over W watchers as a
// ratio to one watcher in the same run, and what a burst of short-lived
// watchers leaves behind.

// watcherCase is one row of figure 7: W watchers, a buffer of Buffer.
type watcherCase struct {
	ID     string
	W      int
	Buffer int
}

var watcherCases = []watcherCase{
	{"W1", 1, 10_000}, // the reference row
	{"7a", 100, 10_000},
	{"7b", 10_000, 10_000},
	{"7c", 10_000, 1_000_000},
	{"7d", 100_000, 1_000_000},
}

// watchersRun is one run of one case.
type watchersRun struct {
	W           int     `json:"w"`
	Buffer      int     `json:"buffer"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	MeanBatch   float64 `json:"mean_batch"`
	AllocsPerOp float64 `json:"allocs_per_op"`
	Seconds     float64 `json:"seconds"`
}

// measureWatchers enqueues n cost-1 operations from the given number of
// producers, each going round the W watchers (MaxBatchSize 100) in turn
// from its own starting point, into a fresh Batcher with no limiter and the
// given buffer, and times it until Flush returns.
func measureWatchers(n, producers, w, buffer int) (watchersRun, error) {
	b := batcher.NewBatcher().WithBufferSize(buffer)
	if err := b.Start(context.Background()); err != nil {
		return watchersRun{}, err
	}
	ws := make([]*batcher.Watcher, w)
	for i := range ws {
		ws[i] = batcher.NewWatcher(nothing).WithMaxBatchSize(100)
	}
	flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
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
		first := p * w / producers
		wg.Go(func() {
			i := first
			for range k {
				if err := b.Enqueue(batcher.NewOperation(ws[i], 1, nil, true)); err != nil {
					refused.Add(1)
				}
				if i++; i == len(ws) {
					i = 0
				}
			}
		})
	}
	wg.Wait()
	flushErr := b.Flush(flushCtx)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&m1)
	st := b.Stats()
	err := errors.Join(flushErr, shutdown(b))
	if r := refused.Load(); r > 0 {
		err = errors.Join(err, fmt.Errorf("%d operations refused", r))
	}
	if st.Succeeded != int64(n) {
		err = errors.Join(err, fmt.Errorf("%d of %d operations succeeded by the end of Flush", st.Succeeded, n))
	}
	return watchersRun{
		W: w, Buffer: buffer,
		OpsPerSec:   float64(n) / elapsed.Seconds(),
		MeanBatch:   float64(st.Released) / float64(max(st.Batches, 1)),
		AllocsPerOp: float64(m1.Mallocs-m0.Mallocs) / float64(n),
		Seconds:     elapsed.Seconds(),
	}, err
}

// churnResult is figure 7f's measurement.
type churnResult struct {
	watchers      int
	peakG         int     // most goroutines seen
	baseG, afterG int     // goroutines before and after
	heapAbove     float64 // bytes of live heap above the baseline, after the wait
	peakHeapAbove float64
	wait          time.Duration
	seconds       float64
	err           error
}

// measureChurn enqueues one operation for each of n new watchers (a
// ProcessBatch that does nothing) from the given number of producers, into
// a Batcher with the default settings, waits for all to end, then wait
// more, and measures the live heap (after a GC) against the baseline taken
// after Start, with the Batcher still running.
func measureChurn(n, producers int, wait time.Duration) churnResult {
	r := churnResult{watchers: n, wait: wait}
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		r.err = err
		return r
	}
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	base := m.HeapAlloc
	r.baseG = runtime.NumGoroutine()

	stop := make(chan struct{})
	var peakG atomic.Int64
	var peakHeap atomic.Uint64
	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if g := int64(runtime.NumGoroutine()); g > peakG.Load() {
				peakG.Store(g)
			}
			if i%50 == 0 { // ReadMemStats stops the world: now and then
				runtime.ReadMemStats(&ms)
				if ms.HeapAlloc > peakHeap.Load() {
					peakHeap.Store(ms.HeapAlloc)
				}
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	var refused atomic.Int64
	for p := range producers {
		k := share(n, producers, p)
		wg.Go(func() {
			for range k {
				w := batcher.NewWatcher(nothing)
				if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
					refused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	flushErr := b.Flush(ctx)
	cancel()
	r.seconds = time.Since(start).Seconds()
	close(stop)
	sampler.Wait()
	time.Sleep(wait)
	runtime.GC()
	runtime.ReadMemStats(&m)
	r.heapAbove = float64(int64(m.HeapAlloc) - int64(base))
	r.peakHeapAbove = float64(int64(peakHeap.Load()) - int64(base))
	r.peakG = int(peakG.Load())
	r.afterG = runtime.NumGoroutine()
	r.err = errors.Join(flushErr, shutdown(b))
	if x := refused.Load(); x > 0 {
		r.err = errors.Join(r.err, fmt.Errorf("%d operations refused", x))
	}
	return r
}

// watcherFigures turns rounds of the cases (each round runs every case,
// one after another, so that each ratio is to the reference row of the
// same round) into figures 7a-7e.
func watcherFigures(rounds [][]watchersRun, err error) []figure {
	figs := []figure{
		{ID: "7a", Name: "ops/s over W=1's: W=100, buffer 10k", Unit: "ratio", Target: ">= 0.8", Seed: "0.17M/0.17M ops/s"},
		{ID: "7b", Name: "ops/s over W=1's: W=10k, buffer 10k", Unit: "ratio", Target: ">= 0.15", Seed: "215k/170k ops/s, batch 2.2"},
		{ID: "7c", Name: "ops/s over W=1's, mean batch: W=10k, buffer 1M", Unit: "ratio, ops", Target: ">= 0.5, batch >= 90", Seed: "2.72M/0.17M ops/s, batch 100"},
		{ID: "7d", Name: "ops/s over W=1's: W=100k, buffer 1M", Unit: "ratio", Target: "completes, >= 0.1", Seed: "n/a"},
		{ID: "7e", Name: "allocations per op at W=10k, buffer 1M (10k)", Unit: "allocs/op", Target: "<= 1.5", Seed: "n/a"},
	}
	if err != nil || len(rounds) == 0 {
		if err == nil {
			err = errors.New("no round ran")
		}
		for i := range figs {
			figs[i] = errorFigure(figs[i], err)
		}
		return figs
	}
	col := func(i int, f func(watchersRun) float64) []float64 {
		var xs []float64
		for _, r := range rounds {
			xs = append(xs, f(r[i]))
		}
		return xs
	}
	ref := col(0, func(r watchersRun) float64 { return r.OpsPerSec })
	refMed := median(ref)
	for i := 1; i < len(watcherCases); i++ {
		var ratios []float64
		for k, r := range rounds {
			ratios = append(ratios, r[i].OpsPerSec/ref[k])
		}
		f := &figs[i-1]
		med, lo, hi := median(ratios), slices.Min(ratios), slices.Max(ratios)
		batch := median(col(i, func(r watchersRun) float64 { return r.MeanBatch }))
		rate := median(col(i, func(r watchersRun) float64 { return r.OpsPerSec }))
		f.Measured = true
		f.Value = fmt.Sprintf("%.3f (%.3f-%.3f)", med, lo, hi)
		f.Values = map[string]float64{"ratio_median": med, "ratio_min": lo, "ratio_max": hi,
			"ops_per_sec_median": rate, "w1_ops_per_sec_median": refMed, "mean_batch_median": batch}
		f.Note = fmt.Sprintf("median of %d rounds, each running W=1 then every case; %s ops/s against W=1's %s; mean batch %.1f",
			len(rounds), mega(rate), mega(refMed), batch)
		switch watcherCases[i].ID {
		case "7a":
			f.Pass = med >= 0.8
		case "7b":
			f.Pass = med >= 0.15
		case "7c":
			f.Value = fmt.Sprintf("%.3f (%.3f-%.3f), batch %.1f", med, lo, hi, batch)
			f.Pass = med >= 0.5 && batch >= 90
		case "7d":
			f.Pass = med >= 0.1
		}
	}
	a1M := median(col(3, func(r watchersRun) float64 { return r.AllocsPerOp }))
	a10k := median(col(2, func(r watchersRun) float64 { return r.AllocsPerOp }))
	f := &figs[4]
	f.Measured, f.Pass = true, a1M <= 1.5
	f.Value = fmt.Sprintf("%.2f (%.2f)", a1M, a10k)
	f.Values = map[string]float64{"buffer_1M": a1M, "buffer_10k": a10k}
	f.Note = fmt.Sprintf("Mallocs delta / ops, creating the op included, median of the rounds; with the 10k buffer batches hold about %.1f ops, and each batch allocates its own (its struct, ProcessBatch's slice, its context)",
		median(col(2, func(r watchersRun) float64 { return r.MeanBatch })))
	return figs
}

func churnFigure(r churnResult) figure {
	f := figure{ID: "7f", Name: fmt.Sprintf("live heap above baseline after %d one-op watchers", r.watchers),
		Unit: "MB", Target: "<= 16 MB", Seed: "n/a"}
	if r.err != nil {
		return errorFigure(f, r.err)
	}
	mb := r.heapAbove / (1 << 20)
	f.Measured, f.Pass = true, mb <= 16
	f.Value = fmt.Sprintf("%.1f MB", mb)
	f.Values = map[string]float64{"heap_above_mb": mb, "peak_heap_above_mb": r.peakHeapAbove / (1 << 20),
		"peak_goroutines": float64(r.peakG), "goroutines_before": float64(r.baseG), "goroutines_after": float64(r.afterG),
		"seconds": r.seconds}
	f.Note = fmt.Sprintf("%v after the last op ended, after a GC, the Batcher still running; peak %.1f MB above; goroutines %d before, peak %d, %d after; %.2f s for the ops",
		r.wait, r.peakHeapAbove/(1<<20), r.baseG, r.peakG, r.afterG, r.seconds)
	return f
}
