package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// freeAddr returns a loopback address with a port no one listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// metricValue returns the value of the first sample of name whose labels
// hold every one of labels, and whether there was one.
func metricValue(scrape, name string, labels ...string) (float64, bool) {
	for line := range strings.Lines(scrape) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}

// TestMetricsAddr runs the main job with -metrics-addr and scrapes
// /metrics while it runs: the Batcher's figures are there in the
// Prometheus text format, consistent with the run, and the server is gone
// once the run is.
func TestMetricsAddr(t *testing.T) {
	addr := freeAddr(t)
	const items = 300
	var (
		mu   sync.Mutex
		last string // the last scrape that had the Batcher's operations
		n    int
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		c := &http.Client{Timeout: 5 * time.Second}
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			resp, err := c.Get("http://" + addr + "/metrics")
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(b), "batcher_operations_total") {
				mu.Lock()
				last, n = string(b), n+1
				mu.Unlock()
			}
		}
	})
	var out, errOut bytes.Buffer
	rep, err := run(t.Context(), []string{"-items", strconv.Itoa(items), "-ru", "5000", "-chart", "", "-quiet", "-metrics-addr", addr}, &out, &errOut)
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "http://"+addr+"/metrics") {
		t.Errorf("the output does not say where the metrics are:\n%s", out.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if n == 0 {
		t.Fatalf("no scrape of http://%s/metrics had the Batcher's metrics during the run", addr)
	}
	succeeded, ok := metricValue(last, "batcher_operations_total", `batcher_outcome="succeeded"`)
	if !ok || succeeded <= 0 || succeeded > items {
		t.Errorf("batcher_operations_total{batcher_outcome=\"succeeded\"} = %v (present %v); want 1 to %d", succeeded, ok, items)
	}
	if failed, ok := metricValue(last, "batcher_operations_total", `batcher_outcome="failed"`); ok && failed != 0 {
		t.Errorf("%v operations failed", failed)
	}
	if v, ok := metricValue(last, "batcher_batches_total"); !ok || v <= 0 || v > succeeded {
		t.Errorf("batcher_batches_total = %v (present %v); want 1 to %v (the operations succeeded)", v, ok, succeeded)
	}
	if v, ok := metricValue(last, "batcher_operation_released_total"); !ok || v < succeeded {
		t.Errorf("batcher_operation_released_total = %v (present %v); want at least %v (the operations succeeded)", v, ok, succeeded)
	}
	if v, ok := metricValue(last, "batcher_capacity_per_second"); !ok || v <= 0 || v > float64(rep.cfg.capacity) {
		t.Errorf("batcher_capacity_per_second = %v (present %v); want 1 to -capacity %d", v, ok, rep.cfg.capacity)
	}
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		resp.Body.Close()
		t.Errorf("the metrics server still answers after the run")
	}
	t.Logf("%d scrapes; the last: %v operations succeeded", n, succeeded)
	if t.Failed() {
		t.Logf("the last scrape:\n%s", last)
	}
}
