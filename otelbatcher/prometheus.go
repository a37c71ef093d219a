package otelbatcher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/redact"
)

// PrometheusHandler serves one Batcher's metrics in the Prometheus text
// format. It holds a MeterProvider of its own, read by the OpenTelemetry
// Prometheus exporter into a registry of its own, so it shares nothing with
// the program's global MeterProvider or Prometheus registry.
//
// In Prometheus the names are the OpenTelemetry ones with dots as
// underscores, the unit as a suffix and _total on counters:
// batcher_operations_total{batcher_outcome="succeeded"},
// batcher_process_duration_seconds_bucket, batcher_capacity_per_second,
// batcher_queue_size, and so on. Each sample also carries the
// instrumentation scope's labels (otel_scope_name, ...), and the scrape a
// target_info series with the MeterProvider's resource.
//
// Create it with [NewPrometheusHandler] (the zero value is not usable). It
// is safe for concurrent use.
type PrometheusHandler struct {
	metrics  *Metrics
	provider *sdkmetric.MeterProvider
	handler  http.Handler
}

// NewPrometheusHandler registers b's metrics (see [New]; opts as there) and
// returns a handler that serves them. Close it when done.
func NewPrometheusHandler(b *batcher.Batcher, opts ...Option) (*PrometheusHandler, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("otelbatcher: Prometheus exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	m, err := New(b, provider.Meter(ScopeName), opts...)
	if err != nil {
		_ = provider.Shutdown(context.Background())
		return nil, err
	}
	return &PrometheusHandler{
		metrics:  m,
		provider: provider,
		handler:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	}, nil
}

// ServeHTTP writes the metrics in the Prometheus text format (or
// OpenMetrics, if the request asks for it).
func (h *PrometheusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.handler.ServeHTTP(w, r)
}

// Metrics returns the Metrics the handler serves, to wrap processors and
// measure enqueues with.
func (h *PrometheusHandler) Metrics() *Metrics { return h.metrics }

// Close stops reporting and shuts the handler's MeterProvider down; the
// handler serves no metrics after. It may be called more than once.
func (h *PrometheusHandler) Close() error {
	err := h.metrics.Close()
	if e := h.provider.Shutdown(context.Background()); e != nil && !errors.Is(e, sdkmetric.ErrReaderShutdown) {
		err = errors.Join(err, e)
	}
	return err
}

// PrometheusServer serves one Batcher's metrics over HTTP at /metrics, for
// Prometheus to scrape. Create it with [ServePrometheus] (the zero value is
// not usable); it serves until the context given there ends or Close is
// called. Its methods are safe for concurrent use.
type PrometheusServer struct {
	h    *PrometheusHandler
	ln   net.Listener
	srv  *http.Server
	stop func() bool
	done chan struct{}
	once sync.Once
	err  error
}

// ServePrometheus listens on addr (host:port, as net.Listen takes it; ":0"
// picks a free port, which [PrometheusServer.Addr] tells) and serves b's
// metrics at /metrics in the Prometheus text format until ctx ends or Close
// is called. It returns once it is listening, or an error if it cannot
// listen. opts are as for [New].
//
// It is the one call a program needs for a -metrics-addr flag:
//
//	if *metricsAddr != "" {
//		srv, err := otelbatcher.ServePrometheus(ctx, *metricsAddr, b)
//		if err != nil { return err }
//		defer srv.Close()
//	}
func ServePrometheus(ctx context.Context, addr string, b *batcher.Batcher, opts ...Option) (*PrometheusServer, error) {
	h, err := NewPrometheusHandler(b, opts...)
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		_ = h.Close()
		return nil, fmt.Errorf("otelbatcher: metrics address %q: %w", redact.String(addr), redact.Error(err))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	s := &PrometheusServer{
		h:    h,
		ln:   ln,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	s.stop = context.AfterFunc(ctx, func() { _ = s.shutdown() })
	return s, nil
}

// Addr returns the address the server listens on.
func (s *PrometheusServer) Addr() net.Addr { return s.ln.Addr() }

// Metrics returns the Metrics the server serves, to wrap processors and
// measure enqueues with.
func (s *PrometheusServer) Metrics() *Metrics { return s.h.metrics }

// Close stops the server, waits for its goroutine to end, and stops the
// reporting. It returns the error that ended serving, if any other than
// being closed. It may be called more than once, and after the context
// given to ServePrometheus ended.
func (s *PrometheusServer) Close() error {
	s.stop()
	return s.shutdown()
}

func (s *PrometheusServer) shutdown() error {
	s.once.Do(func() {
		err := s.srv.Close()
		<-s.done
		s.err = errors.Join(s.err, err, s.h.Close())
	})
	<-s.done
	return s.err
}
