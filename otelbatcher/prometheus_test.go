package otelbatcher_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/otelbatcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// scrape GETs url and parses the Prometheus text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value returns the value of the sample of family name whose labels
// include want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		var names []string
		for n := range fams {
			names = append(names, n)
		}
		t.Fatalf("no %s in the scrape; it has %v", name, names)
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("%s has no sample with labels %v", name, want)
	return 0
}

// runBatcher enqueues ops through m and drains: 3 succeed, 1 fails.
func runBatcher(t *testing.T, b *batcher.Batcher, m *otelbatcher.Metrics) {
	t.Helper()
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	w := batcher.NewWatcher(m.Func(func(ctx context.Context, batch []*batcher.Operation) error {
		for _, op := range batch {
			if op.Payload() == "x" {
				op.Fail(errors.New("bad"))
			}
		}
		return nil
	}))
	for _, p := range []string{"a", "b", "x", "c"} {
		if err := m.Enqueue(batcher.NewOperation(w, 5, p, true)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestPrometheusHandler(t *testing.T) {
	// Only Flush releases: one batch, whatever the machine's load.
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000)).WithBufferSize(64).
		WithFlushInterval(time.Hour)
	h, err := otelbatcher.NewPrometheusHandler(b, otelbatcher.WithAttributes(attribute.String("batcher.name", "orders")))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	defer b.Shutdown(context.Background())
	srv := httptest.NewServer(h)
	defer srv.Close()

	runBatcher(t, b, h.Metrics())
	fams := scrape(t, srv.URL)
	orders := map[string]string{"batcher_name": "orders"}
	with := func(k, v string) map[string]string { return map[string]string{"batcher_name": "orders", k: v} }
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"batcher_operations_total", with("batcher_outcome", "succeeded"), 3},
		{"batcher_operations_total", with("batcher_outcome", "failed"), 1},
		{"batcher_operations_total", with("batcher_outcome", "refused"), 0},
		{"batcher_queue_capacity", orders, 64},
		{"batcher_queue_size", orders, 0},
		{"batcher_capacity_per_second", orders, 1000},
		{"batcher_cost_released_total", orders, 20},
		{"batcher_batches_total", orders, 1},
		{"batcher_batch_size", orders, 1},               // one batch observed
		{"batcher_process_duration_seconds", orders, 1}, // one call timed
		{"batcher_pause_time_seconds_total", orders, 0},
	} {
		if got := value(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if h := fams["batcher_batch_size"].GetMetric()[0].GetHistogram(); h.GetSampleSum() != 4 {
		t.Errorf("batcher_batch_size sum = %v, want 4", h.GetSampleSum())
	}
}

// ServePrometheus listens, serves /metrics, and stops when its context ends,
// leaving no goroutine behind (Close waits for it).
func TestServePrometheus(t *testing.T) {
	b := batcher.NewBatcher()
	defer b.Shutdown(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := otelbatcher.ServePrometheus(ctx, "127.0.0.1:0", b)
	if err != nil {
		t.Fatal(err)
	}
	runBatcher(t, b, srv.Metrics())
	base := "http://" + srv.Addr().String()
	fams := scrape(t, base+"/metrics")
	if got := value(t, fams, "batcher_operations_total", map[string]string{"batcher_outcome": "succeeded"}); got != 3 {
		t.Errorf("succeeded = %v, want 3", got)
	}
	if _, ok := fams["batcher_capacity_per_second"]; ok {
		t.Error("batcher_capacity served for a Batcher without a rate limiter")
	}
	if resp, err := http.Get(base + "/other"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /other: %s, want 404", resp.Status)
		}
	}

	cancel()
	if err := srv.Close(); err != nil {
		t.Errorf("Close after the context ended: %v", err)
	}
	if _, err := http.Get(base + "/metrics"); err == nil {
		t.Error("still serving after the context ended and Close")
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestServePrometheusBadAddress(t *testing.T) {
	b := batcher.NewBatcher()
	_, err := otelbatcher.ServePrometheus(context.Background(), "127.0.0.1:notaport", b)
	if err == nil || !strings.Contains(err.Error(), "notaport") {
		t.Errorf("ServePrometheus on a bad address = %v, want an error naming it", err)
	}
}
