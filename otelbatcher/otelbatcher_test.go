package otelbatcher_test

import (
	"context"
	"errors"
	"math"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/memlease"
	"github.com/ratebatch/batcher/otelbatcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// reading collects from a ManualReader and looks values up by name and
// attributes.
type reading struct {
	t       *testing.T
	metrics map[string]metricdata.Metrics
}

func collect(t *testing.T, r *sdkmetric.ManualReader) reading {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := reading{t: t, metrics: map[string]metricdata.Metrics{}}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out.metrics[m.Name] = m
		}
	}
	return out
}

func matches(set attribute.Set, kv []attribute.KeyValue) bool {
	if set.Len() != len(kv) {
		return false
	}
	for _, a := range kv {
		if v, ok := set.Value(a.Key); !ok || v != a.Value {
			return false
		}
	}
	return true
}

// int64 returns the value of the sum or gauge name with exactly the
// attributes kv, and whether there is one.
func (r reading) int64(name string, kv ...attribute.KeyValue) (int64, bool) {
	m, ok := r.metrics[name]
	if !ok {
		return 0, false
	}
	var dps []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		dps = d.DataPoints
	case metricdata.Gauge[int64]:
		dps = d.DataPoints
	default:
		r.t.Fatalf("%s is a %T", name, m.Data)
	}
	for _, dp := range dps {
		if matches(dp.Attributes, kv) {
			return dp.Value, true
		}
	}
	return 0, false
}

func (r reading) wantInt(name string, want int64, kv ...attribute.KeyValue) {
	r.t.Helper()
	got, ok := r.int64(name, kv...)
	if !ok {
		r.t.Errorf("%s%v: no data point", name, kv)
	} else if got != want {
		r.t.Errorf("%s%v = %d, want %d", name, kv, got, want)
	}
}

func (r reading) wantNone(name string) {
	r.t.Helper()
	if m, ok := r.metrics[name]; ok {
		r.t.Errorf("%s reported without a source: %+v", name, m.Data)
	}
}

func (r reading) float(name string, kv ...attribute.KeyValue) float64 {
	r.t.Helper()
	m, ok := r.metrics[name]
	if !ok {
		r.t.Fatalf("%s: not reported", name)
	}
	for _, dp := range m.Data.(metricdata.Sum[float64]).DataPoints {
		if matches(dp.Attributes, kv) {
			return dp.Value
		}
	}
	r.t.Fatalf("%s%v: no data point", name, kv)
	return 0
}

type histo struct {
	count    uint64
	sum      float64
	min, max float64
}

func (r reading) histogram(name string, kv ...attribute.KeyValue) (histo, bool) {
	m, ok := r.metrics[name]
	if !ok {
		return histo{}, false
	}
	switch d := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, dp := range d.DataPoints {
			if matches(dp.Attributes, kv) {
				mn, _ := dp.Min.Value()
				mx, _ := dp.Max.Value()
				return histo{dp.Count, dp.Sum, mn, mx}, true
			}
		}
	case metricdata.Histogram[int64]:
		for _, dp := range d.DataPoints {
			if matches(dp.Attributes, kv) {
				mn, _ := dp.Min.Value()
				mx, _ := dp.Max.Value()
				return histo{dp.Count, float64(dp.Sum), float64(mn), float64(mx)}, true
			}
		}
	default:
		r.t.Fatalf("%s is a %T", name, m.Data)
	}
	return histo{}, false
}

func (r reading) wantHisto(name string, want histo, kv ...attribute.KeyValue) {
	r.t.Helper()
	got, ok := r.histogram(name, kv...)
	if !ok {
		r.t.Errorf("%s%v: no data point", name, kv)
		return
	}
	if got.count != want.count || math.Abs(got.sum-want.sum) > 1e-9 || math.Abs(got.min-want.min) > 1e-9 || math.Abs(got.max-want.max) > 1e-9 {
		r.t.Errorf("%s%v = %+v, want %+v", name, kv, got, want)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

var (
	succeeded = otelbatcher.OutcomeKey.String("succeeded")
	failed    = otelbatcher.OutcomeKey.String("failed")
	refused   = otelbatcher.OutcomeKey.String("refused")
)

// Every figure, checked against what a scripted run did, on synctest's fake
// clock so that durations are exact.
func TestMetricsValues(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer provider.Shutdown(context.Background())

		b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(100)).
			WithBufferSize(50).WithPauseTime(200 * time.Millisecond).WithMaxPauseTime(time.Second)
		m, err := otelbatcher.New(b, provider.Meter(otelbatcher.ScopeName))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()

		var mu sync.Mutex
		throttleNext := false
		w := batcher.NewWatcher(m.Func(func(ctx context.Context, batch []*batcher.Operation) error {
			time.Sleep(30 * time.Millisecond) // the datastore's time
			mu.Lock()
			th := throttleNext
			throttleNext = false
			mu.Unlock()
			if th {
				return batcher.Throttle(300*time.Millisecond, errors.New("429"))
			}
			for _, op := range batch {
				switch op.Payload() {
				case "fail":
					op.Fail(errors.New("bad"))
				case "actual":
					op.SetActualCost(3)
				}
			}
			return nil
		})).WithMaxBatchSize(10)

		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		r := collect(t, reader)
		r.wantInt("batcher.queue.capacity", 50)
		r.wantInt("batcher.capacity", 100)
		r.wantInt("batcher.capacity.max", 100)
		r.wantInt("batcher.operations", 0, succeeded)
		r.wantNone("batcher.limiter.partitions")

		// Phase 1: five operations of cost 2, one failing and one costing 3
		// in fact; one refused, too expensive.
		for _, p := range []string{"a", "b", "fail", "actual", "c"} {
			if err := m.Enqueue(batcher.NewOperation(w, 2, p, true)); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Enqueue(batcher.NewOperation(w, 1000, "big", true)); !errors.Is(err, batcher.ErrTooExpensive) {
			t.Fatalf("Enqueue of cost 1000 = %v", err)
		}
		r = collect(t, reader)
		r.wantInt("batcher.queue.size", 5)
		r.wantInt("batcher.queue.cost", 10)
		r.wantInt("batcher.operations", 1, refused)
		if h, ok := r.histogram("batcher.enqueue.wait"); ok {
			t.Errorf("enqueues with room recorded as waits: %+v", h)
		}
		r.wantHisto("batcher.enqueue.wait", histo{1, 0, 0, 0}, otelbatcher.ErrorTypeKey.String("too_expensive"))

		time.Sleep(140 * time.Millisecond) // the flush at 100ms releases the batch; it runs 30ms
		synctest.Wait()
		r = collect(t, reader)
		r.wantInt("batcher.operations", 4, succeeded)
		r.wantInt("batcher.operations", 1, failed)
		r.wantInt("batcher.queue.size", 0)
		r.wantInt("batcher.queue.cost", 0)
		r.wantInt("batcher.batches", 1)
		r.wantInt("batcher.operation.released", 5)
		r.wantInt("batcher.cost.released", 10)
		r.wantInt("batcher.cost.actual", 11) // 4 x 2 + 3
		r.wantHisto("batcher.batch.size", histo{1, 5, 5, 5})
		r.wantHisto("batcher.process.duration", histo{1, 0.03, 0.03, 0.03})

		// Phase 2: a pause by hand, 200ms; operations wait in the buffer.
		b.Pause()
		for _, p := range []string{"d", "e", "f"} {
			if err := m.Enqueue(batcher.NewOperation(w, 1, p, true)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		r = collect(t, reader)
		r.wantInt("batcher.pauses", 1, otelbatcher.PauseCauseKey.String("manual"))
		if got := r.float("batcher.pause.time"); !near(got, 0.05) {
			t.Errorf("pause time 50ms into a pause = %v, want 0.05", got)
		}
		r.wantInt("batcher.queue.size", 3)
		r.wantInt("batcher.queue.cost", 3)

		// Phase 3: the batch after the pause is throttled, with a retry-after
		// of 300ms; the retry succeeds.
		mu.Lock()
		throttleNext = true
		mu.Unlock()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		r = collect(t, reader)
		r.wantInt("batcher.throttles", 1)
		r.wantInt("batcher.pauses", 1, otelbatcher.PauseCauseKey.String("throttle"))
		r.wantInt("batcher.operations", 7, succeeded)
		r.wantInt("batcher.batches", 3)
		r.wantInt("batcher.operation.released", 11) // 5, then 3 twice
		r.wantHisto("batcher.process.duration", histo{1, 0.03, 0.03, 0.03}, otelbatcher.ErrorTypeKey.String("throttled"))
		r.wantHisto("batcher.process.duration", histo{2, 0.06, 0.03, 0.03})
		r.wantHisto("batcher.batch.size", histo{3, 11, 3, 5})
		r.wantInt("batcher.cost.released", 16)
		// Paused for the 200ms by hand (the Batcher wakes when a pause is
		// over and resumes then), then for the throttle's 300ms from the end
		// of its batch.
		pause := r.float("batcher.pause.time")
		if !near(pause, 0.5) {
			t.Errorf("pause time = %v s, want 0.2 + 0.3", pause)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := collect(t, reader).float("batcher.pause.time"); got != pause {
			t.Errorf("pause time grew from %v to %v while not paused", pause, got)
		}

		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		r = collect(t, reader)
		r.wantInt("batcher.operation.inflight", 0)
		r.wantInt("batcher.batch.inflight", 0)
		if err := m.Enqueue(batcher.NewOperation(w, 1, "late", true)); !errors.Is(err, batcher.ErrClosed) {
			t.Fatalf("Enqueue after Shutdown = %v", err)
		}
		collect(t, reader).wantHisto("batcher.enqueue.wait", histo{1, 0, 0, 0}, otelbatcher.ErrorTypeKey.String("already_shutdown"))
	})
}

// An Enqueue that waits for room in a full buffer is recorded with its
// wait, one whose context ends first with error.type timeout.
func TestEnqueueWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer provider.Shutdown(context.Background())
		b := batcher.NewBatcher().WithBufferSize(1)
		m, err := otelbatcher.New(b, provider.Meter("x"))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			time.Sleep(time.Second)
			return nil
		}).WithMaxBatchSize(1)
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := m.Enqueue(batcher.NewOperation(w, 1, 1, true)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if err := m.EnqueueContext(ctx, batcher.NewOperation(w, 1, 2, true)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Enqueue into a full buffer with a 200ms deadline = %v", err)
		}
		if err := m.Enqueue(batcher.NewOperation(w, 1, 3, true)); err != nil { // waits for the first to end
			t.Fatal(err)
		}
		waited := time.Since(t0).Seconds() - 0.2
		if waited < 0.7 {
			t.Fatalf("the third Enqueue waited %v s; want the rest of the first one's second", waited)
		}
		r := collect(t, reader)
		r.wantHisto("batcher.enqueue.wait", histo{1, 0.2, 0.2, 0.2}, otelbatcher.ErrorTypeKey.String("timeout"))
		r.wantHisto("batcher.enqueue.wait", histo{1, waited, waited, waited})
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// Exact pause time: a pause that nothing lengthens lasts from Pause to the
// flush that finds it over.
func TestPauseTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer provider.Shutdown(context.Background())
		b := batcher.NewBatcher().WithPauseTime(250 * time.Millisecond).WithFlushInterval(50 * time.Millisecond)
		m, err := otelbatcher.New(b, provider.Meter(otelbatcher.ScopeName))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Shutdown(context.Background())
		var resumed []time.Time
		var mu sync.Mutex
		b.AddListener(func(e batcher.Event) {
			if e.Kind == batcher.Resumed {
				mu.Lock()
				resumed = append(resumed, time.Now())
				mu.Unlock()
			}
		})
		t0 := time.Now()
		b.Pause()
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(resumed) != 1 {
			t.Fatalf("%d resume events, want 1", len(resumed))
		}
		want := resumed[0].Sub(t0).Seconds()
		if got := collect(t, reader).float("batcher.pause.time"); !near(got, want) || want < 0.25 {
			t.Errorf("pause time = %v s, want %v s (from Pause to Resumed)", got, want)
		}
		collect(t, reader).wantInt("batcher.pauses", 1, otelbatcher.PauseCauseKey.String("manual"))
	})
}

// A shared limiter's partitions: the gauge follows Partitions, and the
// events count acquisitions, releases by reason and store errors.
func TestSharedResourceMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer provider.Shutdown(context.Background())

		store := memlease.New()
		lim := ratelimiter.NewSharedResource().WithReservedCapacity(100).WithSharedCapacity(1000, store).WithFactor(100)
		b := batcher.NewBatcher().WithRateLimiter(lim)
		m, err := otelbatcher.New(b, provider.Meter(otelbatcher.ScopeName), otelbatcher.WithAttributes(attribute.String("batcher.name", "orders")))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		name := attribute.String("batcher.name", "orders")

		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error { return nil })
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		for range 40 { // 4,000 units: a backlog that wants every partition
			if err := b.Enqueue(batcher.NewOperation(w, 100, nil, true)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Second)
		synctest.Wait()
		r := collect(t, reader)
		held := int64(lim.Partitions())
		if held == 0 {
			t.Fatal("the limiter leased no partition under a backlog")
		}
		r.wantInt("batcher.limiter.partitions", held, name)
		r.wantInt("batcher.limiter.partition.acquired", held, name)
		r.wantInt("batcher.capacity", int64(lim.Capacity()), name)
		r.wantInt("batcher.capacity.max", 1100, name)

		store.SetErr(errors.New("store down"))
		time.Sleep(time.Second)
		synctest.Wait()
		r = collect(t, reader)
		r.wantInt("batcher.limiter.partitions", 0, name)
		if n, ok := r.int64("batcher.limiter.errors", name); !ok || n < 1 {
			t.Errorf("batcher.limiter.errors = %d, %v; want at least 1", n, ok)
		}
		var releases int64
		for _, reason := range []string{"lease_lost", "expired", "other", "stopping", "not_needed", "fair_share", "lowered"} {
			n, _ := r.int64("batcher.limiter.partition.released", name, otelbatcher.PartitionReasonKey.String(reason))
			releases += n
		}
		if releases != held {
			t.Errorf("partitions released %d, want the %d held (the store failed)", releases, held)
		}
		store.SetErr(nil)
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// WithPartitions reads the partitions from a limiter the Batcher's wraps.
func TestWithPartitions(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(10)))
	m, err := otelbatcher.New(b, provider.Meter("x"), otelbatcher.WithPartitions(fixedPartitions(3)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	collect(t, reader).wantInt("batcher.limiter.partitions", 3)
}

type fixedPartitions int

func (p fixedPartitions) Partitions() int { return int(p) }

// Close stops the reporting: no callback, no listener.
func TestClose(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	b := batcher.NewBatcher()
	m, err := otelbatcher.New(b, provider.Meter("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	r := collect(t, reader)
	if _, ok := r.int64("batcher.queue.capacity"); ok {
		t.Error("observed after Close")
	}
	if _, err := otelbatcher.New(nil, provider.Meter("x")); err == nil {
		t.Error("New(nil, meter) succeeded")
	}
}

// A typed watcher's batches are measured through TypedFunc, and a
// ProcessBatch that overruns its time is recorded with error.type timeout.
func TestTypedAndTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer provider.Shutdown(context.Background())
		b := batcher.NewBatcher()
		m, err := otelbatcher.New(b, provider.Meter("x"))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		w := batcher.NewTypedWatcher(otelbatcher.TypedFunc(m, func(ctx context.Context, batch []*batcher.TypedOperation[int]) error {
			if batch[0].Payload() == 1 {
				<-ctx.Done()
				return errors.New("gave up") // the timeout is known by ctx alone
			}
			batch[0].SetActualCost(9)
			return nil
		})).WithMaxOperationTime(time.Second).WithMaxAttempts(1)
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := m.Enqueue(&batcher.NewTypedOperation(w, 4, i, false).Operation); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		r := collect(t, reader)
		r.wantHisto("batcher.process.duration", histo{1, 1, 1, 1}, otelbatcher.ErrorTypeKey.String("timeout"))
		r.wantInt("batcher.batch.timeouts", 1)
		r.wantInt("batcher.cost.released", 8)
		r.wantInt("batcher.cost.actual", 13) // 4 declared, 9 reported
		r.wantInt("batcher.operations", 1, failed)
	})
}

// The root package compiles none of OpenTelemetry: only this package does.
func TestRootDoesNotImportOpenTelemetry(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command; skipped with -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH:", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/ratebatch/batcher").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "opentelemetry") || strings.Contains(dep, "prometheus") {
			t.Errorf("package batcher depends on %s", dep)
		}
	}
}
