// Command spoolbench measures the spool's local log against the in-memory
// Batcher, in one run, and prints the figures that docs/spool.md quotes:
//
//   - throughput: records per second through the local log (sync every
//     10 ms) into a Batcher with a no-op ProcessBatch, over the same records
//     enqueued to the Batcher directly (rounds of A and B alternated; the
//     median ratio and its range);
//   - group commit: records per fsync with sync on every append and 16
//     concurrent producers, beside the disk's own fsyncs per second;
//   - Append latency: p50 and p99 with sync every 10 ms;
//   - memory: the heap in use during a consumer-less run of many appends,
//     at each tenth of the run.
//
// Records are 100 bytes. Usage: go run ./cmd/spoolbench [-json] [-records
// N] [-rounds R] [-memrecords M] [-dir DIR].
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

// Figures are what one run measured.
type Figures struct {
	Records   int `json:"records"`
	Producers int `json:"producers"`
	Rounds    int `json:"rounds"`

	MemoryRecordsPerSec []float64 `json:"memory_records_per_sec"` // in-memory Batcher alone, per round
	SpoolRecordsPerSec  []float64 `json:"spool_records_per_sec"`  // local log, sync every 10 ms, one Append per record, per round
	Ratios              []float64 `json:"ratios"`                 // spool / memory, per pair of rounds
	RatioMedian         float64   `json:"ratio_median"`

	// How long each round's last records waited, once enqueued to the
	// Batcher, for ProcessBatch: a partial last batch waits for the
	// Batcher's next flush (100 ms apart). Included in the rates above.
	MemoryTailMs []float64 `json:"memory_tail_ms"`
	SpoolTailMs  []float64 `json:"spool_tail_ms"`
	// The ratios with each side's last-batch wait taken out of its time:
	// the rates of a steady stream, which has no last batch.
	SteadyRatios      []float64 `json:"steady_ratios"`
	SteadyRatioMedian float64   `json:"steady_ratio_median"`

	// The same with producers that micro-batch: AppendBatch of 100
	// records, as the analytics sample does.
	BatchedRecordsPerSec []float64 `json:"batched_records_per_sec"`
	BatchedRatios        []float64 `json:"batched_ratios"`
	BatchedRatioMedian   float64   `json:"batched_ratio_median"`

	AppendP50Ms float64 `json:"append_p50_ms"` // sync every 10 ms, across the spool rounds
	AppendP99Ms float64 `json:"append_p99_ms"`

	RecordsPerFsync  []float64 `json:"records_per_fsync"` // sync every append, 16 producers, per round
	DiskFsyncsPerSec float64   `json:"disk_fsyncs_per_sec"`

	MemRecords   int       `json:"mem_records"`     // appends of the consumer-less run
	HeapInUseMiB []float64 `json:"heap_in_use_mib"` // at each tenth of it
	DiskMiB      float64   `json:"disk_mib"`        // the log's segments at its end
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("spoolbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the figures as JSON")
	records := fs.Int("records", 1_000_000, "records per throughput round")
	rounds := fs.Int("rounds", 5, "rounds of each side")
	producers := fs.Int("producers", 16, "concurrent producers")
	memRecords := fs.Int("memrecords", 10_000_000, "appends of the consumer-less memory run (0 skips it)")
	dir := fs.String("dir", "", "directory for the logs (default: a temporary one)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *records <= 0 || *rounds <= 0 || *producers <= 0 || *memRecords < 0 {
		fmt.Fprintln(stderr, "spoolbench: -records, -rounds and -producers must be more than 0, -memrecords 0 or more")
		return 2
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "spoolbench")
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	if *cpuprofile != "" {
		pf, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	f, err := measure(*dir, *records, *rounds, *producers, *memRecords, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "spoolbench:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(f)
		return 0
	}
	lo, hi := slices.Min(f.Ratios), slices.Max(f.Ratios)
	fmt.Fprintf(stdout, "records of 100 bytes, %d producers, %d records a round, %d rounds of each side (alternated), %d CPUs\n", f.Producers, f.Records, f.Rounds, runtime.NumCPU())
	fmt.Fprintf(stdout, "in-memory Batcher:            median %.0f records/s\n", median(f.MemoryRecordsPerSec))
	fmt.Fprintf(stdout, "local log, sync every 10 ms:  median %.0f records/s\n", median(f.SpoolRecordsPerSec))
	fmt.Fprintf(stdout, "ratio (target >= 0.5):        median %.2f, range %.2f-%.2f\n", f.RatioMedian, lo, hi)
	fmt.Fprintf(stdout, "last batch's wait once enqueued, ms: in-memory median %.0f (%.0f-%.0f), local log median %.0f (%.0f-%.0f)\n",
		median(f.MemoryTailMs), slices.Min(f.MemoryTailMs), slices.Max(f.MemoryTailMs), median(f.SpoolTailMs), slices.Min(f.SpoolTailMs), slices.Max(f.SpoolTailMs))
	fmt.Fprintf(stdout, "ratio without either side's last-batch wait: median %.2f, range %.2f-%.2f\n", f.SteadyRatioMedian, slices.Min(f.SteadyRatios), slices.Max(f.SteadyRatios))
	fmt.Fprintf(stdout, "micro-batched (AppendBatch of 100): median %.0f records/s, ratio median %.2f, range %.2f-%.2f\n", median(f.BatchedRecordsPerSec), f.BatchedRatioMedian, slices.Min(f.BatchedRatios), slices.Max(f.BatchedRatios))
	fmt.Fprintf(stdout, "Append latency, sync 10 ms:   p50 %.3f ms, p99 %.3f ms (target p99 <= 15 ms)\n", f.AppendP50Ms, f.AppendP99Ms)
	fmt.Fprintf(stdout, "records per fsync, sync every append, %d producers: median %.1f, range %.1f-%.1f (target >= 10); the disk does %.0f fsyncs/s alone\n",
		f.Producers, median(f.RecordsPerFsync), slices.Min(f.RecordsPerFsync), slices.Max(f.RecordsPerFsync), f.DiskFsyncsPerSec)
	if f.MemRecords > 0 {
		fmt.Fprintf(stdout, "consumer-less run of %d appends (%.0f MiB on disk): heap in use at each tenth, MiB: %v\n", f.MemRecords, f.DiskMiB, roundAll(f.HeapInUseMiB))
	}
	return 0
}

func roundAll(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(int(x*10+0.5)) / 10
	}
	return out
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var payload = make([]byte, 100)

// batchSize is both sides' watchers' MaxBatchSize: a full batch goes out at
// once, without waiting for the flush interval.
const batchSize = 1000

func measure(dir string, records, rounds, producers, memRecords int, log io.Writer) (*Figures, error) {
	f := &Figures{Records: records, Producers: producers, Rounds: rounds, MemRecords: memRecords}
	var lat []time.Duration
	for r := range rounds {
		m, mtail, err := memoryRound(records, producers)
		if err != nil {
			return nil, err
		}
		s, l, stail, err := spoolRound(filepath.Join(dir, fmt.Sprintf("tp%d", r)), records, producers, 1)
		if err != nil {
			return nil, err
		}
		sb, _, _, err := spoolRound(filepath.Join(dir, fmt.Sprintf("tpb%d", r)), records, producers, 100)
		if err != nil {
			return nil, err
		}
		f.MemoryTailMs = append(f.MemoryTailMs, float64(mtail)/1e6)
		f.SpoolTailMs = append(f.SpoolTailMs, float64(stail)/1e6)
		steady := func(rate float64, tail time.Duration) float64 {
			return float64(records) / (float64(records)/rate - tail.Seconds())
		}
		f.SteadyRatios = append(f.SteadyRatios, steady(s, stail)/steady(m, mtail))
		lat = append(lat, l...)
		f.MemoryRecordsPerSec = append(f.MemoryRecordsPerSec, m)
		f.SpoolRecordsPerSec = append(f.SpoolRecordsPerSec, s)
		f.Ratios = append(f.Ratios, s/m)
		f.BatchedRecordsPerSec = append(f.BatchedRecordsPerSec, sb)
		f.BatchedRatios = append(f.BatchedRatios, sb/m)
		fmt.Fprintf(log, "round %d: memory %.0f/s (last batch waited %v), local log %.0f/s (ratio %.2f; last batch waited %v), micro-batched %.0f/s (ratio %.2f)\n", r+1, m, mtail.Round(time.Millisecond), s, s/m, stail.Round(time.Millisecond), sb, sb/m)
	}
	f.RatioMedian = median(f.Ratios)
	f.SteadyRatioMedian = median(f.SteadyRatios)
	f.BatchedRatioMedian = median(f.BatchedRatios)
	slices.Sort(lat)
	f.AppendP50Ms = float64(lat[len(lat)/2]) / 1e6
	f.AppendP99Ms = float64(lat[len(lat)*99/100]) / 1e6

	for r := range rounds {
		n := min(records, 20_000)
		l := filelog.New(filepath.Join(dir, fmt.Sprintf("gc%d", r))).WithSync(filelog.SyncEveryAppend)
		if err := l.Open(); err != nil {
			return nil, err
		}
		if _, err := produce(spool.New[[]byte](l, spool.Bytes()), n, producers, nil); err != nil {
			return nil, err
		}
		st := l.Stats()
		l.Close()
		f.RecordsPerFsync = append(f.RecordsPerFsync, float64(st.Records)/float64(st.Syncs))
		fmt.Fprintf(log, "group commit round %d: %d records, %d fsyncs\n", r+1, st.Records, st.Syncs)
	}
	var err error
	if f.DiskFsyncsPerSec, err = diskFsyncs(dir); err != nil {
		return nil, err
	}
	if memRecords > 0 {
		if err := memoryRun(f, filepath.Join(dir, "mem"), memRecords, producers, log); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// memoryRound enqueues records to an in-memory Batcher and returns the
// records per second until ProcessBatch has seen them all, and how long the
// last ones waited after the last Enqueue returned.
func memoryRound(records, producers int) (float64, time.Duration, error) {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		return 0, 0, err
	}
	defer b.Shutdown(context.Background())
	var done atomic.Int64
	all := make(chan struct{})
	var end time.Time
	w := batcher.NewWatcher(func(ctx context.Context, ops []*batcher.Operation) error {
		if done.Add(int64(len(ops))) == int64(records) {
			end = time.Now()
			close(all)
		}
		return nil
	}).WithMaxBatchSize(batchSize)
	start := time.Now()
	var wg sync.WaitGroup
	var ferr atomic.Value
	for p := range producers {
		wg.Go(func() {
			for i := p; i < records; i += producers {
				if err := b.Enqueue(batcher.NewOperation(w, 1, payload, true)); err != nil {
					ferr.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	enqueued := time.Now()
	if err, _ := ferr.Load().(error); err != nil {
		return 0, 0, err
	}
	<-all
	return float64(records) / end.Sub(start).Seconds(), max(end.Sub(enqueued), 0), nil
}

// spoolRound appends records to a local log whose consumer enqueues them to
// a Batcher, and returns the records per second until every record was
// processed and removed, the latencies of the Appends, and how long the
// last records waited for ProcessBatch once the consumer had enqueued them.
func spoolRound(dir string, records, producers, batch int) (float64, []time.Duration, time.Duration, error) {
	l := filelog.New(dir).WithSync(filelog.SyncEvery(10 * time.Millisecond))
	if err := l.Open(); err != nil {
		return 0, nil, 0, err
	}
	sp := spool.New[[]byte](l, spool.Bytes())
	defer sp.Close()
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		return 0, nil, 0, err
	}
	defer b.Shutdown(context.Background())
	var seen atomic.Int64
	var last atomic.Int64 // when ProcessBatch saw the last record, in ns since start
	var start time.Time
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[[]byte]) error {
		if seen.Add(int64(len(batch))) == int64(records) {
			last.Store(int64(time.Since(start)))
		}
		return nil
	}).WithMaxBatchSize(batchSize)
	c := sp.Consumer(b, w)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	start = time.Now()
	go func() { runErr <- c.Run(ctx) }()
	var lat []time.Duration
	var err error
	if batch == 1 {
		lat, err = produce(sp, records, producers, new(bool))
	} else {
		err = produceBatches(sp, records, producers, batch)
	}
	if err != nil {
		cancel()
		return 0, nil, 0, err
	}
	var enqueued time.Duration
	for {
		st := c.Stats()
		if enqueued == 0 && st.Enqueued == int64(records) {
			enqueued = time.Since(start)
		}
		if st.Acked >= int64(records) {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	el := time.Since(start)
	cancel()
	if err := <-runErr; err != nil {
		return 0, nil, 0, err
	}
	return float64(records) / el.Seconds(), lat, max(time.Duration(last.Load())-enqueued, 0), nil
}

// produce appends n records from producers goroutines; with timed set it
// returns every Append's latency.
func produce(sp *spool.Spool[[]byte], n, producers int, timed *bool) ([]time.Duration, error) {
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	var ferr atomic.Value
	for p := range producers {
		wg.Go(func() {
			var lat []time.Duration
			if timed != nil {
				lat = make([]time.Duration, 0, n/producers+1)
			}
			for i := p; i < n; i += producers {
				t0 := time.Now()
				if err := sp.Append(context.Background(), payload); err != nil {
					ferr.Store(err)
					return
				}
				if timed != nil {
					lat = append(lat, time.Since(t0))
				}
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if err, _ := ferr.Load().(error); err != nil {
		return nil, err
	}
	return all, nil
}

// produceBatches appends n records from producers goroutines, batch
// records an AppendBatch.
func produceBatches(sp *spool.Spool[[]byte], n, producers, batch int) error {
	var wg sync.WaitGroup
	var ferr atomic.Value
	for p := range producers {
		wg.Go(func() {
			recs := make([][]byte, 0, batch)
			for i := p; i < n; i += producers {
				recs = append(recs, payload)
				if len(recs) == batch || i+producers >= n {
					if err := sp.AppendBatch(context.Background(), recs); err != nil {
						ferr.Store(err)
						return
					}
					recs = recs[:0]
				}
			}
		})
	}
	wg.Wait()
	if err, _ := ferr.Load().(error); err != nil {
		return err
	}
	return nil
}

// diskFsyncs measures the disk's fsyncs per second: one goroutine writing
// 100 bytes and fsyncing, for a second.
func diskFsyncs(dir string) (float64, error) {
	fl, err := os.Create(filepath.Join(dir, "fsync-probe"))
	if err != nil {
		return 0, err
	}
	defer os.Remove(fl.Name())
	defer fl.Close()
	start := time.Now()
	n := 0
	for time.Since(start) < time.Second {
		fl.Write(payload)
		if err := fl.Sync(); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// memoryRun appends memRecords records with no consumer, and samples the
// heap in use at each tenth.
func memoryRun(f *Figures, dir string, n, producers int, log io.Writer) error {
	l := filelog.New(dir).WithMaxBytes(int64(n)*120 + 64<<20)
	if err := l.Open(); err != nil {
		return err
	}
	sp := spool.New[[]byte](l, spool.Bytes())
	defer sp.Close()
	tenth := n / 10
	start := time.Now()
	for part := range 10 {
		if _, err := produce(sp, tenth, producers, nil); err != nil {
			return err
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		f.HeapInUseMiB = append(f.HeapInUseMiB, float64(ms.HeapInuse)/(1<<20))
		fmt.Fprintf(log, "memory run: %d appended (%.0f/s), heap in use %.1f MiB\n", (part+1)*tenth, float64((part+1)*tenth)/time.Since(start).Seconds(), float64(ms.HeapInuse)/(1<<20))
	}
	f.DiskMiB = float64(l.Stats().Bytes) / (1 << 20)
	return nil
}
