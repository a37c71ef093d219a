package otelbatcher_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/otelbatcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// A Batcher's metrics through the program's MeterProvider (here one with a
// ManualReader, to print what it collects).
func ExampleNew() {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())

	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000))
	m, err := otelbatcher.New(b, provider.Meter(otelbatcher.ScopeName))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()

	// The wrapped function's batches are measured, and so are the
	// enqueues made through m.
	w := batcher.NewWatcher(m.Func(func(ctx context.Context, batch []*batcher.Operation) error {
		return nil // write the batch here
	}))
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	for i := range 5 {
		if err := m.Enqueue(batcher.NewOperation(w, 10, i, true)); err != nil {
			fmt.Println(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		fmt.Println(err)
		return
	}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					switch mt.Name {
					case "batcher.operations":
						o, _ := dp.Attributes.Value(otelbatcher.OutcomeKey)
						fmt.Println(mt.Name, o.String(), dp.Value)
					case "batcher.cost.released":
						fmt.Println(mt.Name, dp.Value)
					}
				}
			case metricdata.Gauge[int64]:
				fmt.Println(mt.Name, d.DataPoints[0].Value)
			}
		}
	}
	// Unordered output:
	// batcher.operations succeeded 5
	// batcher.operations failed 0
	// batcher.operations refused 0
	// batcher.cost.released 50
	// batcher.capacity 1000
	// batcher.capacity.max 1000
}

// Serving a Batcher's metrics for Prometheus, in one call; the scrape is in
// the Prometheus text format.
func ExampleServePrometheus() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := batcher.NewBatcher()
	srv, err := otelbatcher.ServePrometheus(ctx, "127.0.0.1:0", b) // e.g. the -metrics-addr flag's value
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	if err := b.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error { return nil })
	for i := range 3 {
		if err := b.Enqueue(batcher.NewOperation(w, 1, i, true)); err != nil {
			fmt.Println(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}

	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "batcher_operations_total") {
			// The labels also name the instrumentation scope; print the outcome and the value.
			fields := strings.Fields(line)
			outcome := line[strings.Index(line, `batcher_outcome="`)+len(`batcher_outcome="`):]
			fmt.Println(outcome[:strings.Index(outcome, `"`)], fields[len(fields)-1])
		}
	}
	// Unordered output:
	// succeeded 3
	// failed 0
	// refused 0
}

// A typed watcher's batches measured: TypedFunc wraps its function.
func ExampleTypedFunc() {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())

	b := batcher.NewBatcher()
	m, err := otelbatcher.New(b, provider.Meter(otelbatcher.ScopeName))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	type Row struct{ ID int }
	w := batcher.NewTypedWatcher(otelbatcher.TypedFunc(m, func(ctx context.Context, batch []*batcher.TypedOperation[Row]) error {
		for _, op := range batch {
			op.SetActualCost(op.Payload().ID) // what the datastore charged
		}
		return nil
	}))
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	for i := 1; i <= 4; i++ {
		if err := m.Enqueue(&batcher.NewTypedOperation(w, 2, Row{ID: i}, true).Operation); err != nil {
			fmt.Println(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		fmt.Println(err)
		return
	}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			if s, ok := mt.Data.(metricdata.Sum[int64]); ok && strings.HasPrefix(mt.Name, "batcher.cost.") {
				fmt.Println(mt.Name, s.DataPoints[0].Value)
			}
		}
	}
	// Unordered output:
	// batcher.cost.released 8
	// batcher.cost.actual 10
}
