package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Defaults of an Ingester's settings.
const (
	DefaultBatchSize            = 500
	DefaultFlushInterval        = 10 * time.Second
	DefaultMaxAttempts          = 5
	DefaultRetryBackoff         = 500 * time.Millisecond
	DefaultMaxRetryBackoff      = 30 * time.Second
	DefaultMaxConcurrentInserts = 2
	DefaultBufferSize           = 100_000
	DefaultInsertTimeout        = time.Minute
)

// An Event is one tracked event, one row of the table.
type Event struct {
	// ID identifies the event: rows with the same ID, name and time are one
	// event, however many times they were inserted. Zero means Track assigns
	// one, unique for this Ingester. Set it yourself when the same event may
	// be tracked twice (redelivered from a queue, say).
	ID uint64
	// Time is when the event happened, stored to the second. Zero means
	// Track sets the current time.
	Time time.Time
	// Name is what happened, such as "page_view".
	Name string
	// UserID is who it happened to.
	UserID uint64
	// Value is a measurement that comes with it, such as an amount.
	Value float64
}

// Stats counts what an Ingester did since it started.
type Stats struct {
	Tracked      int64 // events accepted by Track
	Inserted     int64 // events whose insert the server acknowledged
	Failed       int64 // events that failed for good (reported to OnFailed)
	Buffered     int64 // events waiting to be inserted or retried, or being inserted
	Inserts      int64 // chunk inserts the server acknowledged
	InsertErrors int64 // chunk inserts that failed (and were retried, throttled or failed)
	Retried      int64 // event retries asked for
}

// An Ingester buffers events and inserts them into a ClickHouse table in
// sorted, chunked batches, retrying failed inserts; see the package doc.
//
// Create it with NewIngester, configure it with the With* methods, Start it,
// Track events from any number of goroutines and Shutdown it to write what is
// left. The With* methods must be called before Start and panic after it;
// Start checks every setting and reports all bad ones in one error. Track,
// Stats and Shutdown are safe for concurrent use. An Ingester cannot be
// restarted once shut down.
type Ingester struct {
	conn  driver.Conn
	table string

	batchSize     int
	chunkSize     int
	flushInterval time.Duration
	maxAttempts   int
	backoff       [2]time.Duration
	concurrency   int
	rowsPerSecond int
	bufferSize    int
	insertTimeout time.Duration
	onFailed      func(events []Event, err error)

	// insertChunk writes one chunk; tests replace it.
	insertChunk func(ctx context.Context, events []Event) error

	started atomic.Bool // Start was called: the With* methods panic
	running atomic.Bool // Start succeeded: b and w are set
	b       *batcher.Batcher
	w       *batcher.Watcher
	nextID  atomic.Uint64

	failed       atomic.Int64
	inserts      atomic.Int64
	insertErrors atomic.Int64
}

// NewIngester returns an Ingester that writes to table (a name such as
// "events" or "analytics.events", made by CreateTable or with the same
// columns) through conn, with the default settings: batches of 500 events,
// flushed at least every 10 s, one insert per batch, 5 attempts.
func NewIngester(conn driver.Conn, table string) *Ingester {
	i := &Ingester{
		conn:          conn,
		table:         table,
		batchSize:     DefaultBatchSize,
		flushInterval: DefaultFlushInterval,
		maxAttempts:   DefaultMaxAttempts,
		backoff:       [2]time.Duration{DefaultRetryBackoff, DefaultMaxRetryBackoff},
		concurrency:   DefaultMaxConcurrentInserts,
		bufferSize:    DefaultBufferSize,
		insertTimeout: DefaultInsertTimeout,
	}
	i.insertChunk = i.insert
	i.nextID.Store(rand.Uint64())
	return i
}

func (i *Ingester) mustNotBeStarted(method string) {
	if i.started.Load() {
		panic("clickhouse: Ingester." + method + " called after Start")
	}
}

// WithBatchSize sets how many events make a full batch, which is sorted and
// inserted at once. The default is 500; n must be more than 0.
func (i *Ingester) WithBatchSize(n int) *Ingester {
	i.mustNotBeStarted("WithBatchSize")
	i.batchSize = n
	return i
}

// WithChunkSize sets the most rows in one INSERT: a batch is written in
// chunks of this size, in event-time order. The default, 0, means the batch
// size (one INSERT per batch). Negative values are invalid.
func (i *Ingester) WithChunkSize(n int) *Ingester {
	i.mustNotBeStarted("WithChunkSize")
	i.chunkSize = n
	return i
}

// WithFlushInterval sets how long events wait, at most, for their batch to
// fill before it is inserted anyway. The default is 10s; d must be more than 0.
func (i *Ingester) WithFlushInterval(d time.Duration) *Ingester {
	i.mustNotBeStarted("WithFlushInterval")
	i.flushInterval = d
	return i
}

// WithMaxAttempts sets how many times an event's insert is tried, while it
// fails with transient errors, before the event fails and is reported. A
// permanent error fails it at once, and throttles are not counted (see
// Classify). The default is 5; n must be at least 1.
func (i *Ingester) WithMaxAttempts(n int) *Ingester {
	i.mustNotBeStarted("WithMaxAttempts")
	i.maxAttempts = n
	return i
}

// WithRetryBackoff sets the wait before a failed insert is tried again: base
// after the first failure, doubling after each further one, at most max. The
// defaults are 500ms and 30s; base must be more than 0 and max at least base.
func (i *Ingester) WithRetryBackoff(base, max time.Duration) *Ingester {
	i.mustNotBeStarted("WithRetryBackoff")
	i.backoff = [2]time.Duration{base, max}
	return i
}

// WithMaxConcurrentInserts sets how many batches may be inserted at once.
// The default is 2; n must be at least 1 (1 writes the batches one after
// another).
func (i *Ingester) WithMaxConcurrentInserts(n int) *Ingester {
	i.mustNotBeStarted("WithMaxConcurrentInserts")
	i.concurrency = n
	return i
}

// WithMaxRowsPerSecond caps the rows released for insertion in any
// one-second window. The default, 0, means no cap. Negative values are
// invalid.
func (i *Ingester) WithMaxRowsPerSecond(n int) *Ingester {
	i.mustNotBeStarted("WithMaxRowsPerSecond")
	i.rowsPerSecond = n
	return i
}

// WithBufferSize sets how many events the Ingester holds at once (waiting,
// retrying or being inserted); when it is full, Track blocks. The default is
// 100,000; n must be at least the batch size.
func (i *Ingester) WithBufferSize(n int) *Ingester {
	i.mustNotBeStarted("WithBufferSize")
	i.bufferSize = n
	return i
}

// WithInsertTimeout sets how long the inserts of one batch may take before
// they are cancelled and retried. The default is 1m; d must be more than 0.
func (i *Ingester) WithInsertTimeout(d time.Duration) *Ingester {
	i.mustNotBeStarted("WithInsertTimeout")
	i.insertTimeout = d
	return i
}

// WithOnFailed sets a function called with the events that failed for good
// (their insert failed with a permanent error, their attempts ran out, or
// Shutdown gave up on them) and the error, which [Classify] sorts. It is
// called on the Ingester's own goroutines, possibly concurrently, and must
// not block: hand the events to a channel or a file. The default, nil, only
// counts them (Stats.Failed).
func (i *Ingester) WithOnFailed(fn func(events []Event, err error)) *Ingester {
	i.mustNotBeStarted("WithOnFailed")
	i.onFailed = fn
	return i
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// Start checks the settings and starts the Ingester's background work. It
// returns an error naming every bad setting, and leaves the Ingester
// unstarted, if any is. The Ingester runs until Shutdown, or until ctx ends,
// which aborts it as Close would: events not yet inserted fail with
// batcher.ErrClosed.
func (i *Ingester) Start(ctx context.Context) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("clickhouse: "+format+": %w", append(args, batcher.ErrInvalidSetting)...))
	}
	if i.conn == nil {
		bad("conn is nil")
	}
	if !tableName.MatchString(i.table) {
		bad("table %q is not a table name such as events or db.events", i.table)
	}
	if i.batchSize <= 0 {
		bad("BatchSize must be more than 0, got %d", i.batchSize)
	}
	if i.chunkSize < 0 {
		bad("ChunkSize must not be negative, got %d", i.chunkSize)
	}
	if i.flushInterval <= 0 {
		bad("FlushInterval must be more than 0, got %v", i.flushInterval)
	}
	if i.maxAttempts < 1 {
		bad("MaxAttempts must be at least 1, got %d", i.maxAttempts)
	}
	if i.backoff[0] <= 0 || i.backoff[1] < i.backoff[0] {
		bad("RetryBackoff must have base > 0 and max >= base, got %v and %v", i.backoff[0], i.backoff[1])
	}
	if i.concurrency < 1 {
		bad("MaxConcurrentInserts must be at least 1, got %d", i.concurrency)
	}
	if i.rowsPerSecond < 0 {
		bad("MaxRowsPerSecond must not be negative, got %d", i.rowsPerSecond)
	}
	if i.bufferSize < i.batchSize {
		bad("BufferSize must be at least BatchSize (%d), got %d", i.batchSize, i.bufferSize)
	}
	if i.insertTimeout <= 0 {
		bad("InsertTimeout must be more than 0, got %v", i.insertTimeout)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if i.started.Swap(true) {
		return fmt.Errorf("clickhouse: Start called twice: %w", batcher.ErrImproperOrder)
	}
	if i.chunkSize == 0 {
		i.chunkSize = i.batchSize
	}

	i.w = batcher.NewWatcherFor(processor{i}).
		WithMaxBatchSize(i.batchSize).
		WithMaxAttempts(i.maxAttempts).
		WithRetryBackoff(i.backoff[0], i.backoff[1]).
		WithMaxConcurrentBatches(i.concurrency).
		WithMaxOperationTime(i.insertTimeout)
	i.b = batcher.NewBatcher().
		WithFlushInterval(i.flushInterval).
		WithBufferSize(i.bufferSize)
	if i.rowsPerSecond > 0 {
		i.b.WithRateLimiter(ratelimiter.NewProvisioned(i.rowsPerSecond))
	}
	i.b.AddListener(i.listen)
	if err := i.b.Start(ctx); err != nil {
		return err
	}
	i.running.Store(true)
	return nil
}

// listen turns the Batcher's Failed events back into events for OnFailed.
func (i *Ingester) listen(e batcher.Event) {
	if e.Kind != batcher.Failed || len(e.Batch) == 0 {
		return
	}
	i.failed.Add(int64(len(e.Batch)))
	if i.onFailed == nil {
		return
	}
	events := make([]Event, len(e.Batch))
	for k, op := range e.Batch {
		events[k] = op.Payload().(Event)
	}
	i.onFailed(events, e.Err)
}

// Track buffers e for insertion. It sets e.ID and e.Time if they are zero
// (see Event). It blocks while the buffer is full, until there is room or ctx
// ends (it then returns ctx.Err()); ctx has nothing to do with the insert
// itself. It returns an error wrapping batcher.ErrClosed once Shutdown has
// begun, and batcher.ErrImproperOrder before Start.
func (i *Ingester) Track(ctx context.Context, e Event) error {
	if !i.running.Load() {
		return fmt.Errorf("clickhouse: Track before Start: %w", batcher.ErrImproperOrder)
	}
	if e.ID == 0 {
		e.ID = i.nextID.Add(1)
		if e.ID == 0 { // wrapped around: 0 means "unset"
			e.ID = i.nextID.Add(1)
		}
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	return i.b.EnqueueContext(ctx, batcher.NewOperation(i.w, 1, e, true))
}

// Shutdown stops intake (Track returns an error wrapping batcher.ErrClosed),
// inserts every buffered event, waits for the inserts and their retries, and
// returns nil. If ctx ends first it gives up: the events not yet inserted
// fail with an error wrapping batcher.ErrClosed and are reported to OnFailed,
// and Shutdown returns ctx.Err(). Shutdown before Start returns nil.
func (i *Ingester) Shutdown(ctx context.Context) error {
	if !i.running.Load() {
		return nil
	}
	return i.b.Shutdown(ctx)
}

// Stats returns the Ingester's counts.
func (i *Ingester) Stats() Stats {
	s := Stats{
		Failed:       i.failed.Load(),
		Inserts:      i.inserts.Load(),
		InsertErrors: i.insertErrors.Load(),
	}
	if i.running.Load() {
		bs := i.b.Stats()
		s.Tracked, s.Inserted, s.Buffered, s.Retried = bs.Enqueued, bs.Succeeded, bs.Buffered+bs.InFlight, bs.Retried
	}
	return s
}

// processor is the watcher's Processor: it sorts a batch by event time and
// inserts it chunk by chunk.
type processor struct{ i *Ingester }

func (p processor) ProcessBatch(ctx context.Context, batch []*batcher.Operation) error {
	i := p.i
	events, batch := sortByTime(batch)
	for start := 0; start < len(batch); start += i.chunkSize {
		end := min(start+i.chunkSize, len(batch))
		ops := batch[start:end]
		if err := ctx.Err(); err != nil {
			// The batch ran out of time or the Ingester was closed:
			// leave the rest for a retry.
			retry(ops, fmt.Errorf("clickhouse: insert not attempted: %w", err))
			continue
		}
		err := i.insertUnder(ctx, events[start:end])
		if err == nil {
			i.inserts.Add(1)
			continue
		}
		i.insertErrors.Add(1)
		err = redact.Error(err)
		what := fmt.Sprintf("clickhouse: insert of %d rows into %s", len(ops), i.table)
		switch Classify(err) {
		case Permanent:
			err = fmt.Errorf("%s failed for good, not retried (%s): %w", what, describe(err), err)
			for _, op := range ops {
				op.Fail(err)
			}
		case Throttle:
			err = fmt.Errorf("%s: the server asks to slow down (%s): %w", what, describe(err), err)
			for _, op := range ops {
				op.Throttle(time.Second, err)
			}
		default:
			retry(ops, fmt.Errorf("%s (%s): %w", what, describe(err), err))
		}
	}
	return nil
}

// insertUnder runs one chunk's insert under a context of its own, which ctx
// cancels only while the insert runs, and never after it returned.
//
// clickhouse-go (v2.50.0) watches a batch's context from a goroutine that
// closes the connection when the context ends; that goroutine may not have
// seen Send finish by the time Send has put the connection back in the
// pool. The Batcher cancels ctx as soon as ProcessBatch returns, so with
// ctx itself a pooled connection was closed now and then under the next
// insert ("use of closed network connection"): 3 of 10,000 inserts on a
// healthy server in TestIngestHealthyServerNoRetries into a MergeTree, 60
// to 197 into a Memory table, which answers sooner; some of those had been
// applied, and their retries wrote the rows twice. The insert is still
// bounded: ctx's deadline (InsertTimeout) or the Ingester's abort cancels it
// while it runs. Such a cancellation can still hit a connection just as its
// insert finishes; only then, not on a healthy server, can the next insert
// on it fail, to be retried.
func (i *Ingester) insertUnder(ctx context.Context, events []Event) error {
	ictx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	var mu sync.Mutex
	running := true
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if running {
			cancel(context.Cause(ctx))
		}
	})
	err := i.insertChunk(ictx, events)
	mu.Lock()
	running = false
	mu.Unlock()
	stop()
	if cause := context.Cause(ictx); err != nil && cause != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w: %w", cause, err)
	}
	return err
}

// sortByTime returns the batch's events and operations sorted by event time
// (events of the same time stay in the order they came). Batches that come
// in order are only checked. The sort key packs each event's time, relative
// to the batch's earliest, with its position into one integer, which sorts
// several times faster than comparing structs; a batch whose times span too
// long for that (days, for a batch of thousands) is sorted by comparison.
func sortByTime(batch []*batcher.Operation) ([]Event, []*batcher.Operation) {
	events := make([]Event, len(batch))
	sorted := true
	minT, maxT := int64(math.MaxInt64), int64(math.MinInt64)
	for k, op := range batch {
		events[k] = op.Payload().(Event)
		t := events[k].Time.UnixNano()
		if t < maxT {
			sorted = false
		}
		minT, maxT = min(minT, t), max(maxT, t)
	}
	if sorted {
		return events, batch
	}
	order := make([]int, len(batch))
	idxBits := uint(bits.Len(uint(len(batch))))
	if span := uint64(maxT - minT); idxBits < 64 && span < 1<<(64-idxBits) {
		keys := make([]uint64, len(batch))
		for k := range events {
			keys[k] = uint64(events[k].Time.UnixNano()-minT)<<idxBits | uint64(k)
		}
		slices.Sort(keys)
		for k, key := range keys {
			order[k] = int(key & (1<<idxBits - 1))
		}
	} else {
		for k := range order {
			order[k] = k
		}
		slices.SortStableFunc(order, func(a, b int) int { return events[a].Time.Compare(events[b].Time) })
	}
	sortedEvents := make([]Event, len(batch))
	sortedOps := make([]*batcher.Operation, len(batch))
	for k, from := range order {
		sortedEvents[k], sortedOps[k] = events[from], batch[from]
	}
	return sortedEvents, sortedOps
}

func retry(ops []*batcher.Operation, err error) {
	for _, op := range ops {
		op.Retry(err)
	}
}

// insert writes one chunk with a prepared batch, column by column.
func (i *Ingester) insert(ctx context.Context, events []Event) error {
	b, err := i.conn.PrepareBatch(ctx, "INSERT INTO "+i.table+" (time, id, name, user_id, value)")
	if err != nil {
		return err
	}
	defer b.Close()
	cols := columnsOf(events)
	for k, col := range cols {
		if err := b.Column(k).Append(col); err != nil {
			return fmt.Errorf("column %s: %w", columnNames[k], err)
		}
	}
	return b.Send()
}

// columnNames are the table's columns in the order of columnsOf.
var columnNames = [...]string{"time", "id", "name", "user_id", "value"}

// columnsOf returns the events' columns in the table's insert order:
// time, id, name, user_id, value.
func columnsOf(events []Event) []any {
	times := make([]time.Time, len(events))
	ids := make([]uint64, len(events))
	names := make([]string, len(events))
	users := make([]uint64, len(events))
	values := make([]float64, len(events))
	for k, e := range events {
		times[k], ids[k], names[k], users[k], values[k] = e.Time, e.ID, e.Name, e.UserID, e.Value
	}
	return []any{times, ids, names, users, values}
}

// CreateTable creates table, if it does not exist, as the ReplacingMergeTree
// the Ingester expects: partitioned by month, sorted by (name, time, id), so
// that an event inserted twice is collapsed into one row by merges (see the
// package doc). table may name a database ("analytics.events"), which must
// exist.
func CreateTable(ctx context.Context, conn driver.Conn, table string) error {
	if !tableName.MatchString(table) {
		return fmt.Errorf("clickhouse: table %q is not a table name such as events or db.events: %w", table, batcher.ErrInvalidSetting)
	}
	return conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+table+` (
		time    DateTime,
		id      UInt64,
		name    String,
		user_id UInt64,
		value   Float64
	) ENGINE = ReplacingMergeTree()
	PARTITION BY toYYYYMM(time)
	ORDER BY (name, time, id)`)
}
