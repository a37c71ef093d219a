package batcher_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

func TestStartNamesEveryBadSetting(t *testing.T) {
	b := batcher.NewBatcher().
		WithBufferSize(0).
		WithFlushInterval(-time.Second).
		WithCapacityInterval(0).
		WithAuditInterval(-1).
		WithMaxOperationTime(0).
		WithPauseTime(time.Second).
		WithMaxPauseTime(time.Millisecond).
		WithMaxConcurrentBatches(-2)
	err := b.Start(context.Background())
	if !errors.Is(err, batcher.ErrInvalidSetting) {
		t.Fatalf("Start = %v, want ErrInvalidSetting", err)
	}
	for _, want := range []string{
		"BufferSize is 0", "FlushInterval is -1s", "CapacityInterval is 0s", "AuditInterval is -1ns",
		"MaxOperationTime is 0s", "MaxPauseTime is 1ms", "MaxConcurrentBatches is -2",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start's error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "PauseTime is 1s") {
		t.Errorf("Start's error names a good setting:\n%v", err)
	}
	// A failed Start leaves the Batcher unstarted: it can be fixed and
	// started.
	b.WithBufferSize(10).WithFlushInterval(time.Second).WithCapacityInterval(time.Second).
		WithAuditInterval(time.Second).WithMaxOperationTime(time.Second).WithMaxPauseTime(time.Minute).
		WithMaxConcurrentBatches(0)
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("Start after fixing the settings: %v", err)
	}
	defer b.Close()
	if err := b.Start(context.Background()); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("a second Start = %v, want ErrImproperOrder", err)
	}
}

func TestStartReportsTheLimitersError(t *testing.T) {
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(-5))
	err := b.Start(context.Background())
	if !errors.Is(err, batcher.ErrInvalidSetting) || !strings.Contains(err.Error(), "-5") {
		t.Errorf("Start with a negative capacity = %v", err)
	}
}

func TestWithAfterStartPanicsNamingTheMethod(t *testing.T) {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for name, call := range map[string]func(){
		"WithFlushInterval":        func() { b.WithFlushInterval(time.Second) },
		"WithRateLimiter":          func() { b.WithRateLimiter(nil) },
		"WithBufferSize":           func() { b.WithBufferSize(1) },
		"WithEagerRelease":         func() { b.WithEagerRelease() },
		"WithMaxConcurrentBatches": func() { b.WithMaxConcurrentBatches(1) },
	} {
		func() {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(r.(string), name) {
					t.Errorf("%s after Start: recovered %v, want a panic naming it", name, r)
				}
			}()
			call()
		}()
	}
}

func TestWatcherSettingsAreCheckedAtEnqueue(t *testing.T) {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	noop := func(context.Context, []*batcher.Operation) error { return nil }
	cases := map[string]*batcher.Watcher{
		"MaxAttempts is 0":             batcher.NewWatcher(noop).WithMaxAttempts(0),
		"MaxBatchSize is -1":           batcher.NewWatcher(noop).WithMaxBatchSize(-1),
		"MaxOperationTime is -1s":      batcher.NewWatcher(noop).WithMaxOperationTime(-time.Second),
		"MaxConcurrentBatches is -3":   batcher.NewWatcher(noop).WithMaxConcurrentBatches(-3),
		"RetryBackoff base is 0s":      batcher.NewWatcher(noop).WithRetryBackoff(0, time.Second),
		"RetryBackoff max is 1ms":      batcher.NewWatcher(noop).WithRetryBackoff(time.Second, time.Millisecond),
		"Processor is nil":             batcher.NewWatcher(nil),
		"Processor is nil (interface)": batcher.NewWatcherFor(nil),
	}
	for want, w := range cases {
		want = strings.TrimSuffix(want, " (interface)")
		err := b.Enqueue(batcher.NewOperation(w, 1, nil, true))
		if !errors.Is(err, batcher.ErrInvalidSetting) || !strings.Contains(err.Error(), want) {
			t.Errorf("Enqueue with a watcher whose %s = %v", want, err)
		}
		// And again: the error sticks.
		if err2 := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("second Enqueue = %v, want the same error", err2)
		}
	}
	if st := b.Stats(); st.Enqueued != 0 || st.Refused != int64(2*len(cases)) {
		t.Errorf("Stats = %+v", st)
	}
}

func TestWatcherWithAfterFirstEnqueuePanics(t *testing.T) {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
	if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "WithMaxBatchSize") {
			t.Errorf("recovered %v, want a panic naming WithMaxBatchSize", r)
		}
	}()
	w.WithMaxBatchSize(5)
}

type processorType struct{ calls chan int }

func (p processorType) ProcessBatch(_ context.Context, batch []*batcher.Operation) error {
	p.calls <- len(batch)
	return nil
}

func TestProcessorOnAUserType(t *testing.T) {
	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := processorType{make(chan int, 10)}
	w := batcher.NewWatcherFor(p).WithMaxBatchSize(2)
	for range 2 {
		if err := b.Enqueue(batcher.NewOperation(w, 1, nil, true)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := <-p.calls; n != 2 {
		t.Errorf("ProcessBatch got %d operations", n)
	}
}

func TestWatcherAccessorsAndDefaults(t *testing.T) {
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
	if w.MaxAttempts() != batcher.DefaultMaxAttempts || w.MaxBatchSize() != 0 || w.MaxOperationTime() != 0 || w.MaxConcurrentBatches() != 0 {
		t.Errorf("defaults: attempts %d, batch %d, time %v, concurrent %d", w.MaxAttempts(), w.MaxBatchSize(), w.MaxOperationTime(), w.MaxConcurrentBatches())
	}
	op := batcher.NewOperation(w, 7, "x", false)
	if op.Watcher() != w || op.Cost() != 7 || op.Payload() != "x" || op.Batchable() || op.Attempt() != 1 || op.Err() != nil {
		t.Errorf("operation accessors wrong")
	}
}
