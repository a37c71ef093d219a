package main

import (
	"context"
	"fmt"
	"io"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/otelbatcher"
)

// metricsServer serves the Batcher's metrics in the Prometheus text format
// at -metrics-addr, from the moment the Batcher starts to the end of the
// run. The zero value (no -metrics-addr) serves nothing.
type metricsServer struct {
	addr string    // -metrics-addr, "" for none
	out  io.Writer // where the address is said
	srv  *otelbatcher.PrometheusServer
}

// serve starts serving b's metrics, and says where on out.
func (m *metricsServer) serve(ctx context.Context, b *batcher.Batcher) error {
	if m.addr == "" || m.srv != nil {
		return nil
	}
	srv, err := otelbatcher.ServePrometheus(ctx, m.addr, b)
	if err != nil {
		return redact.Error(fmt.Errorf("-metrics-addr %s: %w", m.addr, err))
	}
	m.srv = srv
	fmt.Fprintf(m.out, "the Batcher's metrics, in the Prometheus text format, until the run ends: http://%s/metrics\n", srv.Addr())
	return nil
}

// close stops serving.
func (m *metricsServer) close() {
	if m.srv != nil {
		_ = m.srv.Close()
	}
}
