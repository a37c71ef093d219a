package batcher_test

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
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

// Costs that do not fit in 32 bits keep their value, and Enqueue refuses
// them by name, whatever the limiter.
func TestCostsBeyond32BitsAreRefusedByName(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("int has 32 bits here: no cost beyond them")
	}
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher()) // no limiter: no maximum capacity
		w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
		// Made from int64 so that the file builds where int has 32 bits.
		wide := func(c int64) int { return int(c) }
		for _, c := range []struct {
			cost int
			want error
		}{
			{wide(1 << 40), batcher.ErrTooExpensive},
			{wide(math.MaxInt32 + 1), batcher.ErrTooExpensive},
			{wide(-1 << 40), batcher.ErrNegativeCost},
			{math.MinInt32, batcher.ErrNegativeCost},
		} {
			op := batcher.NewOperation(w, c.cost, nil, true)
			if op.Cost() != c.cost {
				t.Errorf("Cost() = %d, want %d", op.Cost(), c.cost)
			}
			err := b.Enqueue(op)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), strconv.Itoa(c.cost)) {
				t.Errorf("Enqueue of cost %d = %v, want %v naming the cost", c.cost, err, c.want)
			}
		}
		op := batcher.NewOperation(w, math.MaxInt32, nil, true)
		if err := b.Enqueue(op); err != nil {
			t.Fatalf("Enqueue of cost math.MaxInt32 = %v, want it taken", err)
		}
		if err := waitFor(t, op); err != nil {
			t.Errorf("the operation of cost math.MaxInt32 ended with %v", err)
		}
		if s := b.Stats(); s.Refused != 4 || s.Enqueued != 1 {
			t.Errorf("Stats = %+v, want 4 refused and 1 enqueued", s)
		}
	})
}

// An operation's settings and its life (attempts, feedback, a waiter) are
// kept side by side: none of them may disturb another.
func TestAnUnbatchableOperationStaysSoThroughRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := start(t, batcher.NewBatcher())
		var mu sync.Mutex
		var withOthers, calls int // batches holding the unbatchable operation
		w := batcher.NewWatcher(func(_ context.Context, batch []*batcher.Operation) error {
			for _, op := range batch {
				if op.Batchable() {
					continue
				}
				mu.Lock()
				calls++
				if len(batch) > 1 {
					withOthers++
				}
				mu.Unlock()
				if op.Attempt() < 4 {
					op.Retry(errors.New("again"))
				}
			}
			return nil
		}).WithMaxAttempts(4)
		single := batcher.NewOperation(w, 3, "single", false)
		done := single.Done() // a waiter before it starts
		if err := b.Enqueue(single); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			enqueue(t, b, w, 5, 1) // others to share its batches, if it could
			time.Sleep(time.Second)
		}
		<-done
		if err := single.Err(); err != nil {
			t.Fatalf("the unbatchable operation ended with %v", err)
		}
		if single.Batchable() || single.Attempt() != 4 || single.Cost() != 3 || single.Payload() != "single" {
			t.Errorf("after its retries: batchable %v, attempt %d, cost %d, payload %v; want false, 4, 3, single",
				single.Batchable(), single.Attempt(), single.Cost(), single.Payload())
		}
		mu.Lock()
		defer mu.Unlock()
		if calls != 4 || withOthers != 0 {
			t.Errorf("the unbatchable operation was in %d batches, %d of them with others; want 4, alone", calls, withOthers)
		}
	})
}
