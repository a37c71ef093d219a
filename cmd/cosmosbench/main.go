// Command cosmosbench measures the figures of issue 14 ("as fast as the
// datastore really allows") on the embedded Cosmos DB model
// (internal/cosmosmodel, through the real azcosmos SDK): scenarios S1 to S7,
// each run by three loaders one after the other, each on a fresh model:
//
//   - ours: cosmosbulk's Loader (16 lanes, transactional batches per
//     partition key, 429s to the Loader) and a Batcher whose limiter is a
//     ratelimiter.Controller with the configured figure as its ceiling, or,
//     for S7, a cosmosbulk.ThroughputLimiter that reads the container's
//     throughput;
//   - naive: every item at once (-naive-workers at a time), each upserted
//     with the SDK's default retries (three, honouring the retry-after),
//     tried again a second later when those run out;
//   - seed: a seed-like policy: the same Loader with one lane and a fixed
//     capacity (ratelimiter.Provisioned at the configured figure), every
//     429's retry-after made 500ms, so any throttle pauses every release for
//     500ms.
//
// Usage:
//
//	go run ./cmd/cosmosbench [-scenarios S1,S2,...] [-loaders ours,naive,seed]
//	    [-scale 1] [-ru-scale 1] [-runs 1] [-json]
//
// A Batcher loader (ours, seed, lanes) takes a Loader margin of its own
// after @ (-loaders ours@0.05,ours@0.02 compares two margins, alternated in
// one run); -margin sets the others'.
//
// Documents are 1 KB, over -keys partition keys (S5: half of them to one
// key), as many as the loader could write in the scenario's length (60s,
// times -scale) at what the model would serve it. -ru-scale multiplies
// every throughput (the model's, the limiters', the other workload's), for
// machines that cannot carry 10,000 RU/s of 1 KB writes through TLS.
//
// For each run it reports: completion time against the ideal (the RU the
// loader was charged, at what the model would serve it; S5: the busiest
// partition's RU over its budget, or the total over the provisioned
// throughput, whichever is longer), utilization (RU the model served the
// loader / what it would serve it, over the whole seconds of the run or of
// a window), 429s as a share of the loader's requests, the other
// workload's 429s and p99 (S6), the cold partitions' completion and whether
// their writes were in a lane a throttle paused (S5), and when the
// capacity was read and followed a change (S7). With -runs N the loaders
// alternate, N times, and the table gives medians and ranges. The table
// goes to standard output, or JSON with -json; progress to standard error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ratebatch/batcher/cosmosbulk"
)

type config struct {
	scenarios     []string
	loaders       []string
	scale         float64
	ruScale       float64
	runs          int
	keys          int
	batch         int
	margin        float64
	naiveWorkers  int
	refresh       time.Duration
	timeoutFactor float64
	json          bool
	trace         io.Writer // ours' and seed's capacity changes and throttles, if set
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("cosmosbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	sc := fs.String("scenarios", "S1,S2,S3,S4,S5,S6,S7", "scenarios to run, comma-separated")
	ld := fs.String("loaders", "ours,naive,seed", "loaders to compare, comma-separated: ours, naive, seed, and the diagnostics lanes (ours' Loader with a fixed capacity, no Controller) and onelane (ours with every item in one throttle lane); all but naive take a margin of their own after @ (ours@0.02), to compare margins in one run")
	fs.Float64Var(&cfg.scale, "scale", 1, "multiplies the scenarios' times (60s each at 1; 0.25 for a quick run)")
	fs.Float64Var(&cfg.ruScale, "ru-scale", 1, "multiplies every throughput (10,000 RU/s at 1)")
	fs.IntVar(&cfg.runs, "runs", 1, "runs of each loader in each scenario, alternated")
	fs.IntVar(&cfg.keys, "keys", 64, "partition keys the items are spread over (S5: besides the hot one)")
	fs.IntVar(&cfg.batch, "batch", 100, "the Loader's MaxBatchSize (ours, seed): items per lane per batch, 1 to 100")
	fs.Float64Var(&cfg.margin, "margin", cosmosbulk.DefaultMargin, "the Loader's margin (ours, seed, lanes, onelane): each write counts this much over its charge")
	fs.IntVar(&cfg.naiveWorkers, "naive-workers", 1000, "the naive loader's writes in flight at once")
	fs.DurationVar(&cfg.refresh, "refresh", 6*time.Second, "S7: how often ours reads the container's throughput")
	fs.Float64Var(&cfg.timeoutFactor, "timeout", 3, "a run gives up after this many times the scenario's ideal, plus 10s")
	fs.BoolVar(&cfg.json, "json", false, "print JSON instead of a table")
	trace := fs.Bool("trace", false, "print the limiters' capacity changes and the Batchers' throttles to standard error")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *trace {
		cfg.trace = stderr
	}
	var errs []error
	all := scenarios(1)
	for _, s := range strings.Split(*sc, ",") {
		s = strings.ToUpper(strings.TrimSpace(s))
		if _, err := findScenario(all, s); err != nil {
			errs = append(errs, fmt.Errorf("-scenarios: %w", err))
		}
		cfg.scenarios = append(cfg.scenarios, s)
	}
	for _, l := range strings.Split(*ld, ",") {
		l = strings.TrimSpace(l)
		if k := kindOf(l); k != ours && k != naive && k != seed && k != lanes && k != onelane {
			errs = append(errs, fmt.Errorf("-loaders: no loader %q (ours, naive, seed, lanes, onelane)", l))
		}
		if kind, m, ok := strings.Cut(l, "@"); ok {
			if v, err := strconv.ParseFloat(m, 64); err != nil || !(v >= 0 && v < 1) || kind == naive {
				errs = append(errs, fmt.Errorf("-loaders: %q: a margin after @ must be 0 or more and less than 1, for any loader but naive", l))
			}
		}
		cfg.loaders = append(cfg.loaders, l)
	}
	if !(cfg.scale > 0 && cfg.scale <= 10) {
		errs = append(errs, fmt.Errorf("-scale is %v; it must be more than 0 and at most 10", cfg.scale))
	}
	if !(cfg.ruScale > 0 && cfg.ruScale <= 10) {
		errs = append(errs, fmt.Errorf("-ru-scale is %v; it must be more than 0 and at most 10", cfg.ruScale))
	}
	if cfg.runs < 1 {
		errs = append(errs, fmt.Errorf("-runs is %d; it must be at least 1", cfg.runs))
	}
	if cfg.keys < 1 {
		errs = append(errs, fmt.Errorf("-keys is %d; it must be at least 1", cfg.keys))
	}
	if cfg.batch < 1 || cfg.batch > 100 {
		errs = append(errs, fmt.Errorf("-batch is %d; it must be 1 to 100", cfg.batch))
	}
	if !(cfg.margin >= 0 && cfg.margin < 1) {
		errs = append(errs, fmt.Errorf("-margin is %v; it must be 0 or more and less than 1", cfg.margin))
	}
	if cfg.naiveWorkers < 1 {
		errs = append(errs, fmt.Errorf("-naive-workers is %d; it must be at least 1", cfg.naiveWorkers))
	}
	if cfg.refresh < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("-refresh is %v; it must be at least 100ms", cfg.refresh))
	}
	if cfg.timeoutFactor < 1 {
		errs = append(errs, fmt.Errorf("-timeout is %v; it must be at least 1", cfg.timeoutFactor))
	}
	return cfg, errors.Join(errs...)
}

// kindOf returns the loader without its margin: ours for ours@0.02.
func kindOf(loader string) string {
	k, _, _ := strings.Cut(loader, "@")
	return k
}

// marginOf returns the Loader's margin for loader: its own after @, or
// -margin.
func marginOf(cfg config, loader string) float64 {
	if _, m, ok := strings.Cut(loader, "@"); ok {
		if v, err := strconv.ParseFloat(m, 64); err == nil {
			return v
		}
	}
	return cfg.margin
}

// report is the JSON output.
type report struct {
	Date    string   `json:"date"`
	Machine string   `json:"machine"`
	Scale   float64  `json:"scale"`
	RUScale float64  `json:"ru_scale"`
	Runs    int      `json:"runs"`
	Results []result `json:"results"`
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cosmosbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := bench(ctx, cfg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cosmosbench:", err)
		os.Exit(1)
	}
	if cfg.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
		return
	}
	printTable(os.Stdout, rep)
}

// bench runs every loader through every scenario, cfg.runs times,
// alternating the loaders.
func bench(ctx context.Context, cfg config, progress io.Writer) (report, error) {
	rep := report{Date: time.Now().UTC().Format(time.RFC3339), Scale: cfg.scale, RUScale: cfg.ruScale, Runs: cfg.runs,
		Machine: fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())}
	all := scenarios(cfg.scale)
	for _, name := range cfg.scenarios {
		sc, _ := findScenario(all, name)
		for run := 1; run <= cfg.runs; run++ {
			for _, l := range cfg.loaders {
				t0 := time.Now()
				r, err := runOne(ctx, cfg, sc, l)
				if err != nil {
					return rep, fmt.Errorf("%s %s: %w", sc.Name, l, err)
				}
				r.Run = run
				rep.Results = append(rep.Results, r)
				fmt.Fprintf(progress, "%s %-5s run %d: %s (%.0fs)\n", sc.Name, l, run, r.summary(), time.Since(t0).Seconds())
			}
		}
	}
	return rep, nil
}

func (r result) summary() string {
	done := fmt.Sprintf("%.2fx ideal", r.Ratio)
	if !r.Finished {
		done = fmt.Sprintf("UNFINISHED %d/%d", r.Written, r.Items)
	}
	s := fmt.Sprintf("%d items in %.1fs (ideal %.1fs, %s), utilization %.3f, 429s %.2f%% of %d requests",
		r.Items, r.Elapsed, r.Ideal, done, r.Utilization, 100*r.Share429, r.Requests)
	for _, w := range r.Windows {
		s += fmt.Sprintf("; %s: %.3f, 429s %.2f%%", w.Name, w.Utilization, 100*w.Share429)
	}
	if o := r.Other; o != nil {
		s += fmt.Sprintf("; other: 429s %.2f%% of %d, p99 %.0fms", 100*o.Share429, o.Requests, o.P99)
	}
	if h := r.Hot; h != nil {
		s += fmt.Sprintf("; cold: %.1fs (ideal %.1fs), cold 429s %d, lanes paused %d, cold items in paused lanes %d of %d", h.ColdElapsed, h.ColdIdeal, h.ColdThrottled, h.LanesPaused, h.ColdInPaused, h.ColdItems)
	}
	if d := r.Discovery; d != nil {
		s += fmt.Sprintf("; capacity read %.3fs after Start, change followed after %.2fs (refresh %.0fs), capacities %v", d.FirstRead, d.Followed, d.Refresh, d.Capacities)
	}
	return s
}

// printTable prints, per scenario and loader, the medians of the runs and
// their ranges.
func printTable(w io.Writer, rep report) {
	fmt.Fprintf(w, "cosmosbench %s on %s; times x%g, throughputs x%g; %d run(s) each, medians [ranges]\n\n", rep.Date, rep.Machine, rep.Scale, rep.RUScale, rep.Runs)
	fmt.Fprintf(w, "| scenario | loader | completion / ideal | utilization (run) | 429s of requests | windows: utilization, 429s | other |\n|---|---|---|---|---|---|---|\n")
	var order []string
	groups := map[string][]result{}
	for _, r := range rep.Results {
		k := r.Scenario + " " + r.Loader
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	for _, k := range order {
		rs := groups[k]
		f := func(get func(result) float64, format string) string { return stat(rs, get, format) }
		comp := f(func(r result) float64 { return r.Ratio }, "%.2f")
		unfinished := 0
		for _, r := range rs {
			if !r.Finished {
				unfinished++
			}
		}
		if unfinished > 0 {
			comp += fmt.Sprintf(" (%d unfinished)", unfinished)
		}
		var ws []string
		for i, win := range rs[0].Windows {
			ws = append(ws, fmt.Sprintf("%s: %s, %s%%", win.Name,
				f(func(r result) float64 { return r.Windows[i].Utilization }, "%.3f"),
				f(func(r result) float64 { return 100 * r.Windows[i].Share429 }, "%.2f")))
		}
		other := ""
		switch {
		case rs[0].Other != nil:
			other = fmt.Sprintf("429s %s%%, p99 %sms",
				f(func(r result) float64 { return 100 * r.Other.Share429 }, "%.2f"),
				f(func(r result) float64 { return r.Other.P99 }, "%.0f"))
		case rs[0].Hot != nil:
			other = fmt.Sprintf("cold done %s x their ideal, cold 429s %s, cold items in paused lanes %s of %d",
				f(func(r result) float64 { return r.Hot.ColdElapsed / max(r.Hot.ColdIdeal, 1e-9) }, "%.2f"),
				f(func(r result) float64 { return float64(r.Hot.ColdThrottled) }, "%.0f"),
				f(func(r result) float64 { return float64(r.Hot.ColdInPaused) }, "%.0f"), rs[0].Hot.ColdItems)
		case rs[0].Discovery != nil:
			other = fmt.Sprintf("read after %ss, change followed after %ss (refresh %.0fs)",
				f(func(r result) float64 { return r.Discovery.FirstRead }, "%.3f"),
				f(func(r result) float64 { return r.Discovery.Followed }, "%.2f"), rs[0].Discovery.Refresh)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s%% | %s | %s |\n", rs[0].Scenario, rs[0].Loader, comp,
			f(func(r result) float64 { return r.Utilization }, "%.3f"),
			f(func(r result) float64 { return 100 * r.Share429 }, "%.2f"),
			strings.Join(ws, "; "), other)
	}
}

// stat formats the median of get over rs, with the range if there are
// several.
func stat(rs []result, get func(result) float64, format string) string {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = get(r)
	}
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	s := fmt.Sprintf(format, med)
	if len(v) > 1 {
		s += " [" + fmt.Sprintf(format, v[0]) + "-" + fmt.Sprintf(format, v[len(v)-1]) + "]"
	}
	return s
}
