// Command batchbench measures the figures the design card promises for
// package batcher on the machine it runs on, and prints them next to their
// targets and the seed's (Microsoft go-batcher v2) figures.
//
// Usage:
//
//	go run ./cmd/batchbench [-quick] [-runs N] [-json | -markdown]
//
// It measures, in three phases:
//
//  1. Throughput and allocations, alone on the machine: 1M operations of
//     cost 1 enqueued by 4 producer goroutines (each creating its operations
//     with NewOperation inside the timed loop) for one watcher with
//     MaxBatchSize 100, no rate limiter and a ProcessBatch that does nothing.
//     The time runs from the start of producing until Flush returns, that is
//     until every operation has ended. Each run uses a fresh Batcher after a
//     runtime.GC(); the figure is the median ops/s of -runs runs (default 5),
//     with the range. Allocations per operation are the runtime.MemStats
//     Mallocs delta over the timed part divided by the operations (median of
//     the runs).
//  2. Batch size at saturation with eager release (WithEagerRelease, batches
//     of 100), after a 1 s warm-up: (i) slots saturated, a watcher with
//     MaxConcurrentBatches 2 whose ProcessBatch sleeps 1 ms, 4 producers
//     flooding for 3 s; (ii) capacity saturated, a Provisioned capacity of
//     100,000 and cost-1 operations, 4 producers flooding for 5 s. The figure
//     is (operations released / batches) / 100 from Batcher.Stats.
//  3. The time-driven scenarios, concurrently (they use little CPU). Peak
//     cost in any 1 s sliding window / C for three real-time backlogs of 30 s,
//     each kept full by a feeder blocked in EnqueueContext, with ProcessBatch
//     recording (time.Now(), cost) into a releases.Log: (a) cost-10
//     operations at C=10,000, batches of 100; (b) cost-5,000 operations at
//     C=10,000, batches of 100; (c) cost-1 operations at C=5, batches of 10.
//     Released cost per second / C in backlog (a): for every whole second from
//     2 s after its start, the cost released in that second over C; the median
//     and the minimum. Latency from the Enqueue call to ProcessBatch at 100
//     operations per second (one in each 10 ms slot, at a random point of
//     it; the payload is the time taken just before Enqueue) for 30 s, as
//     long as the backlogs, no rate limiter, batches of 100: p50 and p99
//     with the default settings, and with WithEagerRelease and
//     WithMaxConcurrentBatches(4).
//
// Then the release scheduler's figures (7a-7f), measured alone after phase
// 1: -runs rounds, each running 1M cost-1 operations (4 producers, each
// going round the watchers in turn from its own start, MaxBatchSize 100, no
// limiter, a fresh Batcher) for W=1 with a buffer of 10,000, then W=100
// (buffer 10,000), W=10,000 (10,000 and 1,000,000) and W=100,000
// (1,000,000); each figure is the median over the rounds of the case's
// ops/s over the same round's W=1 ops/s, with the range, and 7c also the
// mean batch; 7e is allocations per op at W=10,000. 7f enqueues one
// operation for each of 1M new watchers into a Batcher with the default
// settings, waits for them to end and 10 s more, and reports the live heap
// above the baseline taken after Start (after a GC, the Batcher still
// running), with the peak goroutines. -watchers measures only these.
//
// The default run takes about 45 s plus the rounds of figure 7; -quick shortens every phase (a smoke
// test of about 10 s; its figures are rougher). The table goes to standard
// output as fixed-width text, as a Markdown table with -markdown, or as JSON
// with -json; progress goes to standard error. The exit status is 1 if a
// scenario could not run, not if a figure misses its target.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

// config says how long and how much each scenario runs.
type config struct {
	mode      string
	ops       int // operations per throughput run
	runs      int // throughput runs
	producers int

	warmup   time.Duration // before measuring batch sizes
	slots    time.Duration // 6(i), after the warm-up
	capacity time.Duration // 6(ii), after the warm-up

	backlog time.Duration // each window scenario, 3(a)-(c) and 4
	settle  time.Duration // 4 counts whole seconds from this long after the start
	latency time.Duration // each latency scenario, one operation every 10 ms

	onlyWatchers bool // only figures 7a-7f

	churn     int           // 7f: one-op watchers
	churnWait time.Duration // 7f: the wait after the last op before the heap is measured

	sharing        time.Duration // 8a: each run, after settle
	sharingWindow  time.Duration // 8b: the windows the weights' ratio is measured over
	sharingWindows int           // 8b: how many, after settle
}

func defaultConfig() config {
	return config{
		mode:      "default",
		ops:       1_000_000,
		runs:      5,
		producers: 4,
		warmup:    time.Second,
		slots:     3 * time.Second,
		capacity:  5 * time.Second,
		backlog:   30 * time.Second,
		settle:    2 * time.Second,
		latency:   30 * time.Second, // as long as the backlogs it runs beside: 3,000 samples
		churn:     1_000_000,
		churnWait: 10 * time.Second,

		sharing:        20 * time.Second, // 4,000 interactive ops: p99 is the 40th worst
		sharingWindow:  10 * time.Second,
		sharingWindows: 3,
	}
}

func quickConfig() config {
	return config{
		mode:      "quick",
		ops:       250_000,
		runs:      3,
		producers: 4,
		warmup:    300 * time.Millisecond,
		slots:     time.Second,
		capacity:  time.Second,
		backlog:   5 * time.Second,
		settle:    2 * time.Second,
		latency:   3 * time.Second,
		churn:     250_000,
		churnWait: 2 * time.Second,

		sharing:        5 * time.Second,
		sharingWindow:  10 * time.Second,
		sharingWindows: 1,
	}
}

func main() {
	var (
		jsonOut  = flag.Bool("json", false, "print the report as JSON")
		markdown = flag.Bool("markdown", false, "print the table as Markdown")
		quick    = flag.Bool("quick", false, "shorter runs, for a smoke test (every figure still measured)")
		runs     = flag.Int("runs", 0, "throughput repetitions (default 5, or 3 with -quick)")
		watchers = flag.Bool("watchers", false, "measure only the release scheduler's figures (7a-7f, 8a-8b)")
	)
	flag.Parse()
	if *jsonOut && *markdown {
		fmt.Fprintln(os.Stderr, "batchbench: -json and -markdown are exclusive")
		os.Exit(2)
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "batchbench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	cfg := defaultConfig()
	if *quick {
		cfg = quickConfig()
	}
	if *runs < 0 {
		fmt.Fprintln(os.Stderr, "batchbench: -runs must be at least 1")
		os.Exit(2)
	}
	if *runs > 0 {
		cfg.runs = *runs
	}
	cfg.onlyWatchers = *watchers

	r := measure(cfg, os.Stderr)
	var err error
	switch {
	case *jsonOut:
		err = r.writeJSON(os.Stdout)
	case *markdown:
		err = r.writeMarkdown(os.Stdout)
	default:
		err = r.writeText(os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "batchbench:", err)
		os.Exit(1)
	}
	if r.Errors > 0 {
		fmt.Fprintf(os.Stderr, "batchbench: %d figure(s) could not be measured\n", r.Errors)
		os.Exit(1)
	}
}

// progress prints a line about what is being measured.
func progress(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, "batchbench: "+format+"\n", args...)
	}
}
