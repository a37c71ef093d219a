package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMeasureTiny runs every scenario of the quick mode on tiny durations and
// checks that each figure was measured and that the report renders in all
// three forms. It does not check the figures themselves: they depend on the
// machine.
func TestMeasureTiny(t *testing.T) {
	cfg := quickConfig()
	cfg.mode = "test"
	cfg.ops, cfg.runs = 20_000, 2
	cfg.warmup, cfg.slots, cfg.capacity = 100*time.Millisecond, 300*time.Millisecond, 300*time.Millisecond
	cfg.backlog, cfg.settle = 2200*time.Millisecond, time.Second
	cfg.latency = 300 * time.Millisecond
	cfg.churn, cfg.churnWait = 20_000, 100*time.Millisecond
	cfg.sharing, cfg.sharingWindow, cfg.sharingWindows = 500*time.Millisecond, time.Second, 1

	var log bytes.Buffer
	r := measure(cfg, &log)
	t.Logf("progress:\n%s", log.String())

	wantIDs := []string{"1", "2", "3a", "3b", "3c", "4", "5i", "5ii", "6i", "6ii", "7a", "7b", "7c", "7d", "7e", "7f", "8a", "8b"}
	if len(r.Figures) != len(wantIDs) {
		t.Fatalf("%d figures, want %d", len(r.Figures), len(wantIDs))
	}
	for i, f := range r.Figures {
		if f.ID != wantIDs[i] {
			t.Errorf("figure %d is %q, want %q", i, f.ID, wantIDs[i])
		}
		if !f.Measured || f.Error != "" {
			t.Errorf("figure %s (%s) not measured: %s", f.ID, f.Name, f.Error)
		}
		if f.Value == "" || f.Target == "" || f.Seed == "" || len(f.Values) == 0 {
			t.Errorf("figure %s is incomplete: %+v", f.ID, f)
		}
	}
	if r.Errors != 0 {
		t.Errorf("report counts %d errors", r.Errors)
	}
	if len(r.Runs) != cfg.runs {
		t.Errorf("%d throughput runs, want %d", len(r.Runs), cfg.runs)
	}
	for i, run := range r.Runs {
		if run.FloorOpsPerSec <= 0 || run.MinimalOpsPerSec <= 0 {
			t.Errorf("run %d: floor %v ops/s, minimal pipeline %v ops/s; want both measured", i, run.FloorOpsPerSec, run.MinimalOpsPerSec)
		}
	}

	var text, md, js bytes.Buffer
	if err := r.writeText(&text); err != nil {
		t.Fatal(err)
	}
	if err := r.writeMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := r.writeJSON(&js); err != nil {
		t.Fatal(err)
	}
	t.Logf("text:\n%s", text.String())
	for _, f := range r.Figures {
		if !strings.Contains(text.String(), f.Name) {
			t.Errorf("text output lacks figure %s", f.ID)
		}
	}
	for _, want := range []string{"GOMAXPROCS", "Seed (v2)", "Target"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text output lacks %q", want)
		}
	}
	// The table's lines line up: every row of it is as long as its rule, or
	// shorter only by trailing blanks trimmed.
	lines := strings.Split(text.String(), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "#  ") && i+1 < len(lines) {
			rule := lines[i+1]
			if strings.Trim(rule, "- ") != "" {
				t.Errorf("line after the column names is not a rule: %q", rule)
			}
		}
	}
	mdRows := 0
	for _, l := range strings.Split(md.String(), "\n") {
		if strings.HasPrefix(l, "|") {
			mdRows++
			if n := strings.Count(strings.ReplaceAll(l, `\|`, ""), "|"); n != len(columns)+1 {
				t.Errorf("markdown row has %d pipes, want %d: %q", n, len(columns)+1, l)
			}
		}
	}
	if mdRows != len(r.Figures)+2 {
		t.Errorf("markdown table has %d rows, want %d", mdRows, len(r.Figures)+2)
	}
	var back report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not parse: %v", err)
	}
	if len(back.Figures) != len(r.Figures) || back.Machine.NumCPU == 0 {
		t.Errorf("JSON round trip lost data: %+v", back)
	}
}

func TestPercentileAndMedian(t *testing.T) {
	s := make([]time.Duration, 100)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Millisecond
	}
	if got := percentile(s, 0.5); got != 50*time.Millisecond {
		t.Errorf("p50 = %v, want 50ms", got)
	}
	if got := percentile(s, 0.99); got != 99*time.Millisecond {
		t.Errorf("p99 = %v, want 99ms", got)
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median = %v, want 2", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median = %v, want 2.5", got)
	}
}

// TestMinimalPipelineEndsEachOperation checks the yardstick of figure 1 does
// the work it stands for: every operation reaches a batch and is ended, once.
func TestMinimalPipelineEndsEachOperation(t *testing.T) {
	const producers, each = 4, 5000
	p := newMinPipe(1000) // small, so that producers wait for room
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); p.consume(stop) }()
	ops := make([][]*minOp, producers)
	var wg sync.WaitGroup
	for i := range producers {
		ops[i] = make([]*minOp, each)
		wg.Go(func() {
			for j := range ops[i] {
				ops[i][j] = &minOp{watcher: minWatcher, cost: 1}
				p.enqueue(ops[i][j])
			}
		})
	}
	wg.Wait()
	for p.ended.Load() < producers*each {
		p.wake()
		runtime.Gosched()
	}
	close(stop)
	<-done
	if n := p.ended.Load(); n != producers*each {
		t.Errorf("%d operations ended, want %d", n, producers*each)
	}
	for i := range ops {
		for j, op := range ops[i] {
			if s := op.state.Load(); s != 3 {
				t.Fatalf("producer %d's operation %d is in state %d, want 3 (ended)", i, j, s)
			}
		}
	}
}
