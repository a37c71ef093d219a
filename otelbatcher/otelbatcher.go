// Package otelbatcher exports a [batcher.Batcher]'s figures, and its rate
// limiter's, as OpenTelemetry metrics, and serves them to Prometheus.
//
// It lives in a package of its own so that a program that imports only
// package batcher compiles none of OpenTelemetry.
//
// # Use
//
// Register a Batcher with a [metric.Meter] from the program's
// MeterProvider, and wrap the watchers' processors to measure their batches:
//
//	m, err := otelbatcher.New(b, otel.Meter(otelbatcher.ScopeName))
//	if err != nil { ... }
//	defer m.Close()
//	w := batcher.NewWatcherFor(m.Processor(writer))
//	err = m.Enqueue(batcher.NewOperation(w, cost, payload, true)) // also measures the wait for room
//
// Or serve them for Prometheus to scrape, in the one call a program's
// -metrics-addr flag needs:
//
//	srv, err := otelbatcher.ServePrometheus(ctx, ":9464", b)
//	if err != nil { ... }
//	defer srv.Close() // or let ctx end
//	// scrape http://host:9464/metrics
//
// # The metrics
//
// The names follow OpenTelemetry's semantic conventions where they fit: the
// queue's size and capacity as the SDK's batching processors report theirs
// (otel.sdk.processor.*.queue.size and .capacity), the processing time as
// messaging.process.duration, outcomes as attributes of one counter, and
// error.type for what went wrong. Every instrument is named batcher.*, has
// a UCUM unit and carries only the attributes given with [WithAttributes]
// and those listed here, each with a handful of values: no per-watcher or
// per-operation attributes.
//
// Read from the Batcher at each collection (its [batcher.Batcher.Stats] and
// accessors; cheap, one lock):
//
//	batcher.queue.size           UpDownCounter  {operation}  waiting for release or retry
//	batcher.queue.capacity       UpDownCounter  {operation}  the buffer's size (WithBufferSize)
//	batcher.queue.cost           UpDownCounter  {cost}       the cost waiting (NeedsCapacity, the target)
//	batcher.operation.inflight   UpDownCounter  {operation}  in a running ProcessBatch
//	batcher.batch.inflight       UpDownCounter  {batch}      ProcessBatch calls running
//	batcher.operations           Counter        {operation}  ended or refused, by batcher.outcome:
//	                                                          succeeded, failed, refused
//	batcher.operation.released   Counter        {operation}  handed to ProcessBatch, each attempt
//	batcher.operation.retries    Counter        {operation}  retries asked for by ProcessBatch
//	batcher.batches              Counter        {batch}      ProcessBatch calls
//	batcher.batch.timeouts       Counter        {batch}      calls that overran MaxOperationTime
//	batcher.throttles            Counter        {throttle}   throttles reported by ProcessBatch
//	batcher.pause.time           Counter        s            time releases were paused
//	batcher.capacity             Gauge          {cost}/s     capacity the rate limiter grants now
//	batcher.capacity.max         Gauge          {cost}/s     the most it could grant
//	batcher.limiter.partitions   UpDownCounter  {partition}  shared-capacity partitions counted now
//
// The capacity gauges are reported only for a Batcher with a rate limiter,
// and the partitions only for a limiter with a Partitions method
// (ratelimiter.SharedResource), or the one given with [WithPartitions].
//
// Counted from the Batcher's events, from the moment New is called:
//
//	batcher.pauses                       Counter  {pause}      pauses begun or lengthened, by
//	                                                           batcher.pause.cause: throttle, manual
//	batcher.limiter.partition.acquired   Counter  {partition}  partitions a shared limiter leased
//	batcher.limiter.partition.released   Counter  {partition}  partitions it stopped counting, by
//	                                                           batcher.partition.reason: not_needed,
//	                                                           fair_share, lease_lost, expired,
//	                                                           lowered, stopping, other
//	batcher.limiter.errors               Counter  {error}      lease-store failures
//	batcher.audit.failures               Counter  {audit}      audits that corrected the bookkeeping
//
// Measured by the processors that [Metrics.Processor], [Metrics.Func],
// [TypedProcessor] and [TypedFunc] wrap, for every batch they are given (at
// a cost of about a microsecond a batch on a loaded 2-core machine, with no
// allocation):
//
//	batcher.process.duration   Histogram  s            ProcessBatch's duration, from the moment of
//	                                                    release; error.type when it returned an
//	                                                    error: retry, throttled, timeout, _OTHER
//	batcher.batch.size         Histogram  {operation}  operations per batch
//	batcher.cost.released      Counter    {cost}       declared cost handed to ProcessBatch
//	batcher.cost.actual        Counter    {cost}       cost ProcessBatch reported with
//	                                                    SetActualCost (the declared cost where it
//	                                                    reported none)
//
// And by [Metrics.Enqueue] and [Metrics.EnqueueContext], for the calls that
// waited for room in a full buffer (those that took [EnqueueWaitThreshold]
// or more) and the calls refused:
//
//	batcher.enqueue.wait   Histogram  s  time in Enqueue; error.type when it was refused:
//	                                      queue_full, already_shutdown, timeout, canceled,
//	                                      too_expensive, invalid, _OTHER
//
// An Enqueue with room takes about a microsecond and is not recorded: a
// histogram takes a lock per record, which producers on several CPUs would
// queue for on the hot path. So the histogram's count is of the calls that
// waited (or whose goroutine was kept off the CPU as long), and its sum
// the producers' time lost to backpressure.
//
// In Prometheus (see [PrometheusHandler]) the dots become underscores, the
// unit a suffix (_seconds; _per_second for {cost}/s; units in braces are
// dropped) and counters end in _total: batcher_operations_total,
// batcher_process_duration_seconds, batcher_capacity_per_second,
// batcher_queue_size.
//
// # What it does not do
//
// It does not measure batches of watchers whose processors are not wrapped,
// nor the enqueues that do not go through Metrics. Pauses are tracked per
// Batcher, from its Paused and Resumed events.
package otelbatcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ratebatch/batcher"
)

// ScopeName is the instrumentation scope to name a Meter for this package's
// metrics with: otel.Meter(otelbatcher.ScopeName).
const ScopeName = "github.com/ratebatch/batcher/otelbatcher"

// Attribute keys of the metrics.
const (
	// OutcomeKey is batcher.operations' attribute: succeeded, failed or
	// refused.
	OutcomeKey = attribute.Key("batcher.outcome")
	// PauseCauseKey is batcher.pauses' attribute: throttle or manual.
	PauseCauseKey = attribute.Key("batcher.pause.cause")
	// PartitionReasonKey is batcher.limiter.partition.released's attribute.
	PartitionReasonKey = attribute.Key("batcher.partition.reason")
	// ErrorTypeKey is the semantic conventions' error.type, set on
	// batcher.process.duration and batcher.enqueue.wait when the call
	// failed.
	ErrorTypeKey = attribute.Key("error.type")
)

// Partitioned is a rate limiter that leases shared capacity in partitions,
// as ratelimiter.SharedResource does.
type Partitioned interface {
	// Partitions returns how many partitions the limiter counts now.
	Partitions() int
}

// An Option configures [New].
type Option func(*config)

type config struct {
	attrs      []attribute.KeyValue
	partitions Partitioned
}

// WithAttributes adds attributes to every measurement, to tell several
// Batchers apart (for example attribute.String("batcher.name", "orders")).
// Keep their values few: each distinct set is a time series.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(c *config) { c.attrs = append(c.attrs, attrs...) }
}

// WithPartitions sets the limiter batcher.limiter.partitions is read from,
// for a Batcher whose rate limiter wraps a shared one (such as a
// ratelimiter.Adaptive around a ratelimiter.SharedResource). By default it
// is the Batcher's rate limiter, if that is Partitioned.
func WithPartitions(p Partitioned) Option {
	return func(c *config) { c.partitions = p }
}

// Metrics reports one Batcher's figures to a Meter. Create it with [New]
// (the zero value is not usable); [Metrics.Close] stops the reporting. Its
// methods are safe for concurrent use.
type Metrics struct {
	b          *batcher.Batcher
	base       attrs
	partitions Partitioned

	reg      metric.Registration
	listener int
	close    sync.Once

	// observed at collection
	queueSize, queueCapacity, queueCost metric.Int64ObservableUpDownCounter
	opInflight, batchInflight           metric.Int64ObservableUpDownCounter
	operations, released, retries       metric.Int64ObservableCounter
	batches, timeouts, throttles        metric.Int64ObservableCounter
	pauseTime                           metric.Float64ObservableCounter
	capacity, capacityMax               metric.Int64ObservableGauge
	partitionsHeld                      metric.Int64ObservableUpDownCounter
	outcomes                            [3]attrs // succeeded, failed, refused

	// from events
	pauses                     metric.Int64Counter
	pauseThrottle, pauseManual attrs
	acquired, releasedParts    metric.Int64Counter
	releaseReasons             map[string]attrs
	limiterErrors, auditFails  metric.Int64Counter

	// from wrapped processors and Enqueue
	processDuration metric.Float64Histogram
	batchSize       metric.Int64Histogram
	costReleased    metric.Int64Counter
	costActual      metric.Int64Counter
	enqueueWait     metric.Float64Histogram
	errorTypes      map[string]attrs

	mu struct {
		sync.Mutex
		paused bool
		since  time.Time
		total  time.Duration
	}
}

// attrs is one set of attributes as the instruments' methods take it: the
// slices are made once, so that recording allocates nothing.
type attrs struct {
	m   metric.MeasurementOption
	add []metric.AddOption
	rec []metric.RecordOption
}

// Bucket boundaries of the histograms. The durations' are the semantic
// conventions' for messaging.process.duration, with a finer start, since a
// batch may take well under a millisecond and Enqueue usually does.
var (
	durationBuckets  = []float64{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	batchSizeBuckets = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}
)

// partitionReasons maps the Msg of a PartitionReleased event to the value of
// batcher.partition.reason.
var partitionReasons = map[string]string{
	"not needed":              "not_needed",
	"fair share":              "fair_share",
	"lease lost":              "lease_lost",
	"expired":                 "expired",
	"shared capacity lowered": "lowered",
	"stopping":                "stopping",
}

// New registers b's metrics with meter, and returns a Metrics that keeps
// reporting them until Close. b may be started before or after; figures
// counted from events (pauses, partitions, limiter errors, audit failures)
// count from now. It returns an error if meter refuses an instrument or the
// callback, or if b or meter is nil.
//
// Several Batchers may report to one Meter if [WithAttributes] tells them
// apart (a batcher.name, say); with the same attributes their figures would
// be reported as one series and overwrite each other.
func New(b *batcher.Batcher, meter metric.Meter, opts ...Option) (*Metrics, error) {
	if b == nil || meter == nil {
		return nil, errors.New("otelbatcher: New needs a Batcher and a Meter")
	}
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	m := &Metrics{b: b, partitions: cfg.partitions}
	if m.partitions == nil {
		m.partitions, _ = b.RateLimiter().(Partitioned)
	}
	base := cfg.attrs
	with := func(kv ...attribute.KeyValue) attrs {
		all := append(append([]attribute.KeyValue(nil), base...), kv...)
		o := metric.WithAttributeSet(attribute.NewSet(all...))
		return attrs{o, []metric.AddOption{o}, []metric.RecordOption{o}}
	}
	m.base = with()
	for i, o := range []string{"succeeded", "failed", "refused"} {
		m.outcomes[i] = with(OutcomeKey.String(o))
	}
	m.pauseThrottle, m.pauseManual = with(PauseCauseKey.String("throttle")), with(PauseCauseKey.String("manual"))
	m.releaseReasons = map[string]attrs{"other": with(PartitionReasonKey.String("other"))}
	for _, r := range partitionReasons {
		m.releaseReasons[r] = with(PartitionReasonKey.String(r))
	}
	m.errorTypes = map[string]attrs{}
	for _, e := range []string{"retry", "throttled", "timeout", "canceled", "queue_full", "already_shutdown", "too_expensive", "invalid", "_OTHER"} {
		m.errorTypes[e] = with(ErrorTypeKey.String(e))
	}

	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	udc := func(name, unit, desc string) metric.Int64ObservableUpDownCounter {
		i, err := meter.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		check(err)
		return i
	}
	ctr := func(name, unit, desc string) metric.Int64ObservableCounter {
		i, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		check(err)
		return i
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		i, err := meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		check(err)
		return i
	}
	counter := func(name, unit, desc string) metric.Int64Counter {
		i, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		check(err)
		return i
	}
	m.queueSize = udc("batcher.queue.size", "{operation}", "Operations waiting for release or for a retry.")
	m.queueCapacity = udc("batcher.queue.capacity", "{operation}", "The most operations the Batcher holds at once, waiting or in flight.")
	m.queueCost = udc("batcher.queue.cost", "{cost}", "The cost of the operations waiting for release: what the Batcher asks its rate limiter for.")
	m.opInflight = udc("batcher.operation.inflight", "{operation}", "Operations in a running ProcessBatch call.")
	m.batchInflight = udc("batcher.batch.inflight", "{batch}", "ProcessBatch calls running.")
	m.operations = ctr("batcher.operations", "{operation}", "Operations that succeeded or failed, or that Enqueue refused, by batcher.outcome.")
	m.released = ctr("batcher.operation.released", "{operation}", "Operations handed to ProcessBatch, counting every attempt.")
	m.retries = ctr("batcher.operation.retries", "{operation}", "Retries of operations asked for by ProcessBatch.")
	m.batches = ctr("batcher.batches", "{batch}", "ProcessBatch calls.")
	m.timeouts = ctr("batcher.batch.timeouts", "{batch}", "ProcessBatch calls that overran their MaxOperationTime.")
	m.throttles = ctr("batcher.throttles", "{throttle}", "Throttles (too many requests) reported by ProcessBatch.")
	pt, err := meter.Float64ObservableCounter("batcher.pause.time", metric.WithUnit("s"), metric.WithDescription("Time releases were paused, by throttles or Pause."))
	check(err)
	m.pauseTime = pt
	m.capacity = gauge("batcher.capacity", "{cost}/s", "Capacity the rate limiter grants now, in cost units per second.")
	m.capacityMax = gauge("batcher.capacity.max", "{cost}/s", "The most capacity the rate limiter could grant, in cost units per second.")
	m.partitionsHeld = udc("batcher.limiter.partitions", "{partition}", "Partitions of shared capacity the rate limiter counts now.")

	m.pauses = counter("batcher.pauses", "{pause}", "Pauses of releases begun or lengthened, by batcher.pause.cause.")
	m.acquired = counter("batcher.limiter.partition.acquired", "{partition}", "Partitions of shared capacity the rate limiter leased.")
	m.releasedParts = counter("batcher.limiter.partition.released", "{partition}", "Partitions the rate limiter stopped counting, by batcher.partition.reason.")
	m.limiterErrors = counter("batcher.limiter.errors", "{error}", "Failures of the rate limiter's lease store.")
	m.auditFails = counter("batcher.audit.failures", "{audit}", "Audits that found the Batcher's bookkeeping wrong and corrected it.")

	m.processDuration, err = meter.Float64Histogram("batcher.process.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of ProcessBatch calls, from the moment of release."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	m.batchSize, err = meter.Int64Histogram("batcher.batch.size", metric.WithUnit("{operation}"),
		metric.WithDescription("Operations per batch handed to ProcessBatch."),
		metric.WithExplicitBucketBoundaries(batchSizeBuckets...))
	check(err)
	m.costReleased = counter("batcher.cost.released", "{cost}", "Declared cost of the operations handed to ProcessBatch.")
	m.costActual = counter("batcher.cost.actual", "{cost}", "Cost ProcessBatch reported with SetActualCost, or the declared cost where it reported none.")
	m.enqueueWait, err = meter.Float64Histogram("batcher.enqueue.wait", metric.WithUnit("s"),
		metric.WithDescription("Time in Enqueue of the calls that waited for room in a full buffer, and of those refused."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	if len(errs) > 0 {
		return nil, fmt.Errorf("otelbatcher: %w", errors.Join(errs...))
	}

	reg, err := meter.RegisterCallback(m.observe,
		m.queueSize, m.queueCapacity, m.queueCost, m.opInflight, m.batchInflight,
		m.operations, m.released, m.retries, m.batches, m.timeouts, m.throttles, m.pauseTime,
		m.capacity, m.capacityMax, m.partitionsHeld)
	if err != nil {
		return nil, fmt.Errorf("otelbatcher: %w", err)
	}
	m.reg = reg
	m.listener = b.AddListener(m.listen)
	return m, nil
}

// Close stops reporting: it unregisters the callback and the listener.
// Wrapped processors and Enqueue keep working, and keep recording to the
// meter's instruments. Close may be called more than once.
func (m *Metrics) Close() error {
	var err error
	m.close.Do(func() {
		m.b.RemoveListener(m.listener)
		err = m.reg.Unregister()
	})
	return err
}

// observe reports the figures read from the Batcher.
func (m *Metrics) observe(_ context.Context, o metric.Observer) error {
	b := m.b
	st := b.Stats()
	o.ObserveInt64(m.queueSize, st.Buffered, m.base.m)
	o.ObserveInt64(m.queueCapacity, int64(b.BufferSize()), m.base.m)
	o.ObserveInt64(m.queueCost, int64(b.NeedsCapacity()), m.base.m)
	o.ObserveInt64(m.opInflight, st.InFlight, m.base.m)
	o.ObserveInt64(m.batchInflight, int64(b.Inflight()), m.base.m)
	o.ObserveInt64(m.operations, st.Succeeded, m.outcomes[0].m)
	o.ObserveInt64(m.operations, st.Failed, m.outcomes[1].m)
	o.ObserveInt64(m.operations, st.Refused, m.outcomes[2].m)
	o.ObserveInt64(m.released, st.Released, m.base.m)
	o.ObserveInt64(m.retries, st.Retried, m.base.m)
	o.ObserveInt64(m.batches, st.Batches, m.base.m)
	o.ObserveInt64(m.timeouts, st.TimedOut, m.base.m)
	o.ObserveInt64(m.throttles, st.Throttled, m.base.m)
	o.ObserveFloat64(m.pauseTime, m.pausedFor(time.Now()).Seconds(), m.base.m)
	if lim := b.RateLimiter(); lim != nil {
		o.ObserveInt64(m.capacity, int64(lim.Capacity()), m.base.m)
		o.ObserveInt64(m.capacityMax, int64(lim.MaxCapacity()), m.base.m)
	}
	if m.partitions != nil {
		o.ObserveInt64(m.partitionsHeld, int64(m.partitions.Partitions()), m.base.m)
	}
	return nil
}

// pausedFor returns how long releases have been paused in all, up to now.
func (m *Metrics) pausedFor(now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.mu.total
	if m.mu.paused && now.After(m.mu.since) {
		d += now.Sub(m.mu.since)
	}
	return d
}

// listen counts what the Batcher's events report.
func (m *Metrics) listen(e batcher.Event) {
	ctx := context.Background()
	switch e.Kind {
	case batcher.Paused:
		now := time.Now()
		m.mu.Lock()
		if !m.mu.paused {
			m.mu.paused, m.mu.since = true, now
		}
		m.mu.Unlock()
		if e.Err != nil {
			m.pauses.Add(ctx, 1, m.pauseThrottle.add...)
		} else {
			m.pauses.Add(ctx, 1, m.pauseManual.add...)
		}
	case batcher.Resumed, batcher.ShutdownDone:
		now := time.Now()
		m.mu.Lock()
		if m.mu.paused {
			if now.After(m.mu.since) {
				m.mu.total += now.Sub(m.mu.since)
			}
			m.mu.paused = false
		}
		m.mu.Unlock()
	case batcher.PartitionAcquired:
		m.acquired.Add(ctx, 1, m.base.add...)
	case batcher.PartitionReleased:
		reason, ok := partitionReasons[e.Msg]
		if !ok {
			reason = "other"
		}
		m.releasedParts.Add(ctx, 1, m.releaseReasons[reason].add...)
	case batcher.LimiterError:
		m.limiterErrors.Add(ctx, 1, m.base.add...)
	case batcher.AuditFailed:
		m.auditFails.Add(ctx, 1, m.base.add...)
	}
}

// Processor returns a Processor that calls p and measures each batch:
// batcher.process.duration, batcher.batch.size, batcher.cost.released and
// batcher.cost.actual. Pass it to batcher.NewWatcherFor.
func (m *Metrics) Processor(p batcher.Processor) batcher.Processor {
	if p == nil {
		return nil // the Watcher reports it at Enqueue
	}
	return processor{m, p}
}

// Func returns a function that calls fn and measures each batch, as
// [Metrics.Processor] does. Pass it to batcher.NewWatcher.
func (m *Metrics) Func(fn func(ctx context.Context, batch []*batcher.Operation) error) func(ctx context.Context, batch []*batcher.Operation) error {
	if fn == nil {
		return nil
	}
	p := processor{m, batcher.ProcessorFunc(fn)}
	return p.ProcessBatch
}

type processor struct {
	m *Metrics
	p batcher.Processor
}

func (p processor) ProcessBatch(ctx context.Context, batch []*batcher.Operation) error {
	return measure(p.m, ctx, batch, func(op *batcher.Operation) *batcher.Operation { return op },
		func() error { return p.p.ProcessBatch(ctx, batch) })
}

// TypedProcessor returns a TypedProcessor that calls p and measures each
// batch, as [Metrics.Processor] does. Pass it to batcher.NewTypedWatcherFor.
func TypedProcessor[T any](m *Metrics, p batcher.TypedProcessor[T]) batcher.TypedProcessor[T] {
	if p == nil {
		return nil
	}
	return typedProcessor[T]{m, p}
}

// TypedFunc returns a function that calls fn and measures each batch, as
// [Metrics.Processor] does. Pass it to batcher.NewTypedWatcher.
func TypedFunc[T any](m *Metrics, fn func(ctx context.Context, batch []*batcher.TypedOperation[T]) error) func(ctx context.Context, batch []*batcher.TypedOperation[T]) error {
	if fn == nil {
		return nil
	}
	p := typedProcessor[T]{m, batcher.TypedProcessorFunc[T](fn)}
	return p.ProcessBatch
}

type typedProcessor[T any] struct {
	m *Metrics
	p batcher.TypedProcessor[T]
}

func (p typedProcessor[T]) ProcessBatch(ctx context.Context, batch []*batcher.TypedOperation[T]) error {
	return measure(p.m, ctx, batch, func(op *batcher.TypedOperation[T]) *batcher.Operation {
		if op == nil {
			return nil
		}
		return &op.Operation
	},
		func() error { return p.p.ProcessBatch(ctx, batch) })
}

// measure records a batch's size and declared cost, calls call, and records
// its duration and the actual cost.
func measure[O any](m *Metrics, ctx context.Context, batch []O, opOf func(O) *batcher.Operation, call func() error) error {
	start, ok := batcher.ReleasedAt(ctx)
	if !ok {
		start = time.Now()
	}
	declared := int64(0)
	for _, o := range batch {
		declared += int64(opOf(o).Cost()) // not nil: the Batcher's own slice
	}
	bg := context.Background()
	m.batchSize.Record(bg, int64(len(batch)), m.base.rec...)
	m.costReleased.Add(bg, declared, m.base.add...)

	err := call()

	// The batch is the call's to keep, and to change: the costs are read
	// again from it, skipping what the call cleared.
	actual := int64(0)
	for _, o := range batch {
		op := opOf(o)
		if op == nil {
			continue
		}
		if c, ok := op.ActualCost(); ok {
			actual += int64(c)
		} else {
			actual += int64(op.Cost())
		}
	}
	m.costActual.Add(bg, actual, m.base.add...)
	opt := m.base
	if err != nil {
		opt = m.errorTypes[processErrorType(ctx, err)]
	}
	m.processDuration.Record(bg, time.Since(start).Seconds(), opt.rec...)
	return err
}

// processErrorType returns error.type for ProcessBatch's error.
func processErrorType(ctx context.Context, err error) string {
	switch {
	case batcher.IsRetry(err):
		return "retry"
	default:
		if _, ok := batcher.IsThrottle(err); ok {
			return "throttled"
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "_OTHER"
}

// Enqueue is b.Enqueue(op), measured: see [Metrics.EnqueueContext].
func (m *Metrics) Enqueue(op *batcher.Operation) error {
	return m.EnqueueContext(context.Background(), op)
}

// EnqueueWaitThreshold is how long an Enqueue through [Metrics] must take
// to be recorded in batcher.enqueue.wait, when it is not refused.
const EnqueueWaitThreshold = 100 * time.Microsecond

// EnqueueContext calls the Batcher's EnqueueContext and, if the call took
// EnqueueWaitThreshold or more (it waited for room in a full buffer) or was
// refused, records how long it took in batcher.enqueue.wait, a refusal with
// error.type. Otherwise it adds two readings of the clock to the call.
func (m *Metrics) EnqueueContext(ctx context.Context, op *batcher.Operation) error {
	start := time.Now()
	err := m.b.EnqueueContext(ctx, op)
	d := time.Since(start)
	if err == nil && d < EnqueueWaitThreshold {
		return nil
	}
	opt := m.base
	if err != nil {
		opt = m.errorTypes[enqueueErrorType(err)]
	}
	m.enqueueWait.Record(context.Background(), d.Seconds(), opt.rec...)
	return err
}

// enqueueErrorType returns error.type for Enqueue's error, in the words of
// the semantic conventions' batching processors where they have one.
func enqueueErrorType(err error) string {
	switch {
	case errors.Is(err, batcher.ErrBufferFull):
		return "queue_full"
	case errors.Is(err, batcher.ErrClosed):
		return "already_shutdown"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, batcher.ErrTooExpensive):
		return "too_expensive"
	case errors.Is(err, batcher.ErrNoOperation), errors.Is(err, batcher.ErrNoWatcher),
		errors.Is(err, batcher.ErrNegativeCost), errors.Is(err, batcher.ErrInvalidSetting),
		errors.Is(err, batcher.ErrImproperOrder):
		return "invalid"
	}
	return "_OTHER"
}
