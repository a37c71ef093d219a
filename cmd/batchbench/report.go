package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ratebatch/batcher/internal/releases"
)

// A figure is one row of the report.
type figure struct {
	ID       string             `json:"id"`
	Name     string             `json:"name"`
	Measured bool               `json:"measured"`
	Value    string             `json:"value"`            // for people, with units
	Values   map[string]float64 `json:"values,omitempty"` // for machines
	Unit     string             `json:"unit"`
	Target   string             `json:"target"`
	Pass     bool               `json:"pass"`
	Seed     string             `json:"seed"`
	Note     string             `json:"note,omitempty"`
	Error    string             `json:"error,omitempty"`
}

type machine struct {
	CPU        string `json:"cpu"`
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	Date       string `json:"date"`
	LoadStart  string `json:"load_average_start,omitempty"` // from /proc/loadavg: other work on the machine
	LoadEnd    string `json:"load_average_end,omitempty"`
}

type report struct {
	Machine  machine           `json:"machine"`
	Mode     string            `json:"mode"`
	Settings map[string]string `json:"settings"`
	Seconds  float64           `json:"elapsed_seconds"`
	Figures  []figure          `json:"figures"`
	Passed   int               `json:"passed"`
	Errors   int               `json:"errors"` // figures that could not be measured
	Runs     []throughputRun   `json:"throughput_runs"`
	// WatcherRounds holds figure 7's runs: each round runs every case of
	// watcherCases, the first (W=1) being the reference.
	WatcherRounds [][]watchersRun `json:"watcher_rounds"`
}

// measure runs every scenario of cfg and returns the report, printing
// progress to w (which may be nil).
func measure(cfg config, w io.Writer) *report {
	start := time.Now()
	r := &report{
		Machine: machine{
			CPU:        cpuModel(),
			NumCPU:     runtime.NumCPU(),
			GOMAXPROCS: runtime.GOMAXPROCS(0),
			GoVersion:  runtime.Version(),
			OS:         runtime.GOOS,
			Arch:       runtime.GOARCH,
			Date:       start.Format("2006-01-02 15:04:05 MST"),
			LoadStart:  loadAverage(),
		},
		Mode: cfg.mode,
		Settings: map[string]string{
			"throughput": fmt.Sprintf("%d runs of %d ops, %d producers", cfg.runs, cfg.ops, cfg.producers),
			"saturation": fmt.Sprintf("%v warm-up, then %v (slots) and %v (capacity)", cfg.warmup, cfg.slots, cfg.capacity),
			"backlogs":   fmt.Sprintf("%v each, concurrently; per-second counts from %v", cfg.backlog, cfg.settle),
			"latency":    fmt.Sprintf("%v each, one op in each 10ms slot, at a random point of it", cfg.latency),
			"watchers":   fmt.Sprintf("%d rounds of W=1 and each case, %d ops each, %d producers", cfg.runs, cfg.ops, cfg.producers),
			"churn":      fmt.Sprintf("%d one-op watchers, then %v", cfg.churn, cfg.churnWait),
			"sharing":    fmt.Sprintf("priority runs of %v, weights over %d windows of %v, each after %v", cfg.sharing, cfg.sharingWindows, cfg.sharingWindow, cfg.settle),
		},
	}

	// Phase 1: throughput, alone.
	var runErr error
	for i := range cfg.runs {
		if cfg.onlyWatchers {
			break
		}
		progress(w, "throughput run %d/%d: %d ops, %d producers", i+1, cfg.runs, cfg.ops, cfg.producers)
		run, err := measureThroughput(cfg.ops, cfg.producers)
		if err != nil {
			runErr = fmt.Errorf("run %d: %w", i+1, err)
			break
		}
		r.Runs = append(r.Runs, run)
	}

	// Phase 1b: the release scheduler over many watchers, alone; each
	// round runs the reference (W=1) and every case, so that each ratio
	// is of one round.
	var wErr error
	for i := range cfg.runs {
		var round []watchersRun
		for _, c := range watcherCases {
			progress(w, "watchers round %d/%d: W=%d, buffer %d, %d ops", i+1, cfg.runs, c.W, c.Buffer, cfg.ops)
			run, err := measureWatchers(cfg.ops, cfg.producers, c.W, c.Buffer)
			if err != nil {
				wErr = fmt.Errorf("round %d, W=%d, buffer %d: %w", i+1, c.W, c.Buffer, err)
				break
			}
			round = append(round, run)
		}
		if wErr != nil {
			break
		}
		r.WatcherRounds = append(r.WatcherRounds, round)
	}
	progress(w, "watcher churn: %d one-op watchers, then %v", cfg.churn, cfg.churnWait)
	churn := measureChurn(cfg.churn, cfg.producers, cfg.churnWait)

	if cfg.onlyWatchers {
		progress(w, "priorities and weights (%v, %d x %v), concurrently", cfg.sharing, cfg.sharingWindows, cfg.sharingWindow)
		sh := measureSharing(cfg)
		r.Figures = append(r.Figures, watcherFigures(r.WatcherRounds, wErr)...)
		r.Figures = append(r.Figures, churnFigure(churn))
		r.Figures = append(r.Figures, sharingFigures(sh)...)
		return r.finish(start)
	}

	// Phase 2: saturation; it keeps the CPUs busy, so one at a time.
	progress(w, "batch size, slots saturated: %v + %v", cfg.warmup, cfg.slots)
	satSlots := measureSaturation(cfg.producers, 0, 2, time.Millisecond, cfg.warmup, cfg.slots)
	progress(w, "batch size, capacity saturated: %v + %v", cfg.warmup, cfg.capacity)
	satCap := measureSaturation(cfg.producers, 100_000, 0, 0, cfg.warmup, cfg.capacity)

	// Phase 3: the time-driven scenarios, concurrently.
	progress(w, "backlogs (%v), latency (%v), priorities and weights (%v, %d x %v), concurrently",
		cfg.backlog, cfg.latency, cfg.sharing, cfg.sharingWindows, cfg.sharingWindow)
	var (
		wg               sync.WaitGroup
		blA, blB, blC    backlogResult
		latDef, latEager latencyResult
		sh               sharingResult
	)
	wg.Go(func() { sh = measureSharing(cfg) })
	wg.Go(func() { blA = measureBacklog(10_000, 10, 100, cfg.backlog) })
	wg.Go(func() { blB = measureBacklog(10_000, 5_000, 100, cfg.backlog) })
	wg.Go(func() { blC = measureBacklog(5, 1, 10, cfg.backlog) })
	wg.Go(func() { latDef = measureLatency(cfg.latency, false) })
	wg.Go(func() { latEager = measureLatency(cfg.latency, true) })
	wg.Wait()

	r.Figures = append(r.Figures, throughputFigures(r.Runs, cfg, runErr)...)
	r.Figures = append(r.Figures,
		windowFigure("3a", "peak 1 s window / C: cost 10, C=10000", "1.10", blA),
		windowFigure("3b", "peak 1 s window / C: cost 5000, C=10000", "5.5", blB),
		windowFigure("3c", "peak 1 s window / C: cost 1, C=5", "nothing released", blC),
		utilizationFigure(blA, cfg),
		latencyFigure("5i", "latency Enqueue->ProcessBatch, default", latDef, false),
		latencyFigure("5ii", "latency Enqueue->ProcessBatch, eager, 4 slots", latEager, true),
		batchFigure("6i", "mean batch / max, eager, slots saturated", satSlots),
		batchFigure("6ii", "mean batch / max, eager, capacity saturated", satCap),
	)
	r.Figures = append(r.Figures, watcherFigures(r.WatcherRounds, wErr)...)
	r.Figures = append(r.Figures, churnFigure(churn))
	r.Figures = append(r.Figures, sharingFigures(sh)...)
	return r.finish(start)
}

// finish counts the figures and closes the report.
func (r *report) finish(start time.Time) *report {
	for _, f := range r.Figures {
		if f.Pass {
			r.Passed++
		}
		if !f.Measured {
			r.Errors++
		}
	}
	r.Machine.LoadEnd = loadAverage()
	r.Seconds = time.Since(start).Seconds()
	return r
}

func errorFigure(f figure, err error) figure {
	f.Measured, f.Pass = false, false
	f.Value = "not measured"
	f.Error = err.Error()
	return f
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	switch {
	case n == 0:
		return 0
	case n%2 == 1:
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func throughputFigures(runs []throughputRun, cfg config, err error) []figure {
	thr := figure{ID: "1", Name: "throughput, no limiter, 4 producers", Unit: "ops/s",
		Target: ">= 10M ops/s", Seed: "0.15-0.2M ops/s"}
	alloc := figure{ID: "2", Name: "allocations per op", Unit: "allocs/op",
		Target: "<= 1.1", Seed: "2.1"}
	if err != nil {
		return []figure{errorFigure(thr, err), errorFigure(alloc, err)}
	}
	var rates, allocs, floors, minimal []float64
	for _, r := range runs {
		rates = append(rates, r.OpsPerSec)
		allocs = append(allocs, r.AllocsPerOp)
		floors = append(floors, r.FloorOpsPerSec)
		minimal = append(minimal, r.MinimalOpsPerSec)
	}
	med, lo, hi := median(rates), slices.Min(rates), slices.Max(rates)
	thr.Measured, thr.Pass = true, med >= 10e6
	thr.Value = fmt.Sprintf("%s ops/s (%s-%s)", mega(med), mega(lo), mega(hi))
	floor, least := median(floors), median(minimal)
	thr.Values = map[string]float64{"median": med, "min": lo, "max": hi, "floor_median": floor, "minimal_median": least}
	thr.Note = fmt.Sprintf("median of %d runs of %d ops each, with the range; time until Flush returned. "+
		"Right after each run, the same producers only creating the ops: median %s ops/s (the Batcher runs at %.0f%% of that floor); "+
		"and the minimal pipeline (cmd/batchbench/minimal.go: shards, batches of 100, a compare-and-swap to end each op, nothing else): median %s ops/s (the Batcher runs at %.0f%% of it)",
		len(runs), cfg.ops, mega(floor), 100*med/floor, mega(least), 100*med/least)

	am := median(allocs)
	alloc.Measured, alloc.Pass = true, am <= 1.1
	alloc.Value = fmt.Sprintf("%.2f", am)
	alloc.Values = map[string]float64{"median": am, "min": slices.Min(allocs), "max": slices.Max(allocs)}
	alloc.Note = fmt.Sprintf("median of the same runs (range %.2f-%.2f); Mallocs delta / ops, creating the op included",
		slices.Min(allocs), slices.Max(allocs))
	return []figure{thr, alloc}
}

func mega(x float64) string { return fmt.Sprintf("%.2fM", x/1e6) }

func windowFigure(id, name, seed string, r backlogResult) figure {
	f := figure{ID: id, Name: name, Unit: "ratio", Target: "<= 1.000", Seed: seed}
	if r.err != nil {
		return errorFigure(f, r.err)
	}
	peak, at := releases.MaxWindow(r.releases, time.Second)
	total := r.total()
	ratio := float64(peak) / float64(r.capacity)
	f.Measured = true
	f.Pass = peak <= r.capacity && total > 0
	f.Value = fmt.Sprintf("%.3f", ratio)
	if total == 0 {
		f.Value += " (nothing released)"
	}
	f.Values = map[string]float64{"peak_over_capacity": ratio, "peak": float64(peak),
		"capacity": float64(r.capacity), "released": float64(total)}
	f.Note = fmt.Sprintf("peak %d of C=%d over %.0f s; %d released in %d batches",
		peak, r.capacity, r.end.Sub(r.t0).Seconds(), total, len(r.releases))
	if n, span := r.window(at); n > 1 {
		f.Note += fmt.Sprintf("; the worst window, from t0+%.3f s, holds %d batches, first to last %.3f ms",
			at.Sub(r.t0).Seconds(), n, float64(span)/float64(time.Millisecond))
	}
	return f
}

func utilizationFigure(r backlogResult, cfg config) figure {
	f := figure{ID: "4", Name: fmt.Sprintf("released per second / C, %.0f s backlog", cfg.backlog.Seconds()),
		Unit: "ratio", Target: ">= 0.99 (median and min)", Seed: "1.00"}
	if r.err != nil {
		return errorFigure(f, r.err)
	}
	secs := r.perSecond(cfg.settle)
	if len(secs) == 0 {
		return errorFigure(f, fmt.Errorf("no whole second from %v after the start to the end", cfg.settle))
	}
	med, lo := median(secs), slices.Min(secs)
	f.Measured, f.Pass = true, med >= 0.99 && lo >= 0.99
	f.Value = fmt.Sprintf("median %.3f, min %.3f", med, lo)
	f.Values = map[string]float64{"median": med, "min": lo, "max": slices.Max(secs), "seconds": float64(len(secs))}
	f.Note = fmt.Sprintf("scenario 3a; %d whole seconds from t0+%v", len(secs), cfg.settle)
	return f
}

func latencyFigure(id, name string, r latencyResult, eager bool) figure {
	f := figure{ID: id, Name: name, Unit: "ms", Seed: "p50 50 ms, p99 100 ms"}
	if eager {
		f.Target = "p99 <= 1 ms"
		f.Seed += " (no eager mode)"
	} else {
		f.Target = "p50 <= 50 ms, p99 <= 100 ms"
	}
	if r.err != nil {
		return errorFigure(f, r.err)
	}
	p50, p99 := percentile(r.samples, 0.50), percentile(r.samples, 0.99)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	f.Measured = true
	if eager {
		f.Pass = p99 <= time.Millisecond
	} else {
		f.Pass = p50 <= 50*time.Millisecond && p99 <= 100*time.Millisecond
	}
	f.Value = fmt.Sprintf("p50 %s, p99 %s", fmtMs(ms(p50)), fmtMs(ms(p99)))
	f.Values = map[string]float64{"p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(r.samples[len(r.samples)-1]),
		"samples": float64(len(r.samples))}
	f.Note = fmt.Sprintf("%d samples, max %s, %d batches", len(r.samples), fmtMs(ms(r.samples[len(r.samples)-1])), r.stats.Batches)
	return f
}

// fmtMs prints milliseconds with about three significant digits.
func fmtMs(ms float64) string {
	switch {
	case ms < 1:
		return fmt.Sprintf("%.3f ms", ms)
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.1f ms", ms)
}

func batchFigure(id, name string, r saturationResult) figure {
	f := figure{ID: id, Name: name, Unit: "ratio", Target: ">= 0.9", Seed: "n/a"}
	if r.err != nil {
		return errorFigure(f, r.err)
	}
	if r.batches == 0 {
		return errorFigure(f, fmt.Errorf("no batch released after the warm-up"))
	}
	ratio := float64(r.released) / float64(r.batches) / 100
	f.Measured, f.Pass = true, ratio >= 0.9
	f.Value = fmt.Sprintf("%.3f", ratio)
	f.Values = map[string]float64{"ratio": ratio, "released": float64(r.released), "batches": float64(r.batches)}
	f.Note = fmt.Sprintf("%d ops in %d batches in %v after the warm-up (%.0f ops/s); buffered ops sampled every %v: mean %.0f, min %d",
		r.released, r.batches, r.d.Round(time.Millisecond), float64(r.released)/r.d.Seconds(), sampleEvery, r.meanBuffered, r.minBuffered)
	f.Values["mean_buffered"], f.Values["min_buffered"] = r.meanBuffered, float64(r.minBuffered)
	return f
}

// cpuModel returns the CPU's model name from /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "model name", "Hardware", "cpu model":
			if v := strings.TrimSpace(val); v != "" {
				return v
			}
		}
	}
	return "unknown"
}

// loadAverage returns the 1, 5 and 15 minute load averages, or "".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func result(f figure) string {
	switch {
	case !f.Measured:
		return "ERROR"
	case f.Pass:
		return "pass"
	}
	return "FAIL"
}

var columns = []string{"#", "Figure", "Measured", "Target", "Result", "Seed (v2)"}

func (f figure) cells() []string {
	return []string{f.ID, f.Name, f.Value, f.Target, result(f), f.Seed}
}

func (r *report) headerLines() []string {
	m := r.Machine
	return []string{
		"batchbench: github.com/ratebatch/batcher against its targets and the seed (Microsoft go-batcher v2)",
		fmt.Sprintf("machine: %s; NumCPU %d; GOMAXPROCS %d; %s %s/%s; %s; load average %s at start, %s at end",
			m.CPU, m.NumCPU, m.GOMAXPROCS, m.GoVersion, m.OS, m.Arch, m.Date, orNA(m.LoadStart), orNA(m.LoadEnd)),
		fmt.Sprintf("mode: %s; throughput %s; saturation %s; backlogs %s; latency %s",
			r.Mode, r.Settings["throughput"], r.Settings["saturation"], r.Settings["backlogs"], r.Settings["latency"]),
		fmt.Sprintf("result: %d of %d figures meet their targets; took %.1f s", r.Passed, len(r.Figures), r.Seconds),
	}
}

func orNA(s string) string {
	if s == "" {
		return "n/a"
	}
	return s
}

func (r *report) noteLines() []string {
	var out []string
	for _, f := range r.Figures {
		switch {
		case f.Error != "":
			out = append(out, fmt.Sprintf("%s: error: %s", f.ID, f.Error))
		case f.Note != "":
			out = append(out, fmt.Sprintf("%s: %s", f.ID, f.Note))
		}
	}
	return out
}

// writeText prints the report as a fixed-width table.
func (r *report) writeText(w io.Writer) error {
	rows := [][]string{columns}
	for _, f := range r.Figures {
		rows = append(rows, f.cells())
	}
	width := make([]int, len(columns))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, l := range r.headerLines() {
		b.WriteString(l + "\n")
	}
	b.WriteString("\n")
	line := func(row []string) {
		var s strings.Builder
		for i, c := range row {
			if i > 0 {
				s.WriteString("  ")
			}
			s.WriteString(c + strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)))
		}
		b.WriteString(strings.TrimRight(s.String(), " ") + "\n")
	}
	line(rows[0])
	sep := make([]string, len(columns))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, row := range rows[1:] {
		line(row)
	}
	b.WriteString("\n")
	for _, l := range r.noteLines() {
		b.WriteString(l + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeMarkdown prints the report as a Markdown table.
func (r *report) writeMarkdown(w io.Writer) error {
	esc := strings.NewReplacer("|", `\|`)
	var b strings.Builder
	for _, l := range r.headerLines() {
		b.WriteString(esc.Replace(l) + "  \n")
	}
	b.WriteString("\n")
	row := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" " + esc.Replace(c) + " |")
		}
		b.WriteString("\n")
	}
	row(columns)
	b.WriteString("|" + strings.Repeat("---|", len(columns)) + "\n")
	for _, f := range r.Figures {
		row(f.cells())
	}
	b.WriteString("\n")
	for _, l := range r.noteLines() {
		b.WriteString("- " + esc.Replace(l) + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeJSON prints the report as indented JSON.
func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}
