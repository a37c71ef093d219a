package counters

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Defaults of a Counter's settings.
const (
	DefaultFlushInterval        = time.Second
	DefaultJitter               = 0.2
	DefaultBatchSize            = 500
	DefaultMaxAttempts          = 10
	DefaultRetryBackoff         = 100 * time.Millisecond
	DefaultMaxRetryBackoff      = 10 * time.Second
	DefaultMaxConcurrentBatches = 2
	DefaultBufferSize           = 100_000
	DefaultWriteTimeout         = 10 * time.Second
)

const shards = 32 // the in-memory sums are split so that increments rarely wait for each other

// Stats counts what a Counter did since it started. Once Shutdown has
// returned, every delta was applied once or failed: Written + Skipped +
// Failed = Deltas (a delta applied by a call whose reply was lost is counted
// as Skipped by the retry that finds it applied).
type Stats struct {
	Increments  int64 // Increment calls accepted
	Flushes     int64 // flushes that found sums to write
	Deltas      int64 // key sums made by the flushes: one per key per flush
	Written     int64 // deltas applied by store calls that succeeded
	Skipped     int64 // deltas a store call found applied already, by an earlier call whose reply was lost
	StoreCalls  int64 // Store.Apply calls that succeeded (round trips)
	StoreErrors int64 // Store.Apply calls that failed (their deltas were retried or failed)
	Failed      int64 // deltas that failed for good (reported to OnFailed)
}

// A Counter sums increments per key in memory and writes each key's sum to a
// Store once per flush, in batches, retrying failed writes; see the package
// doc.
//
// Create it with NewCounter, configure it with the With* methods, Start it,
// call Increment from any number of goroutines, and Shutdown it to write
// what is left. The With* methods must be called before Start and panic
// after it; Start checks every setting and reports all bad ones in one
// error. Increment, Flush, Stats and Shutdown are safe for concurrent use. A
// Counter cannot be restarted once shut down.
type Counter struct {
	store Store

	flushInterval  time.Duration
	jitter         float64
	batchSize      int
	maxAttempts    int
	backoff        [2]time.Duration
	concurrency    int
	writesPerSec   int
	bufferSize     int
	writeTimeout   time.Duration
	onFailed       func(deltas []Delta, err error)
	instance       string // makes flush ids unique to this Counter
	shardSeed      maphash.Seed
	shard          [shards]shard
	started        atomic.Bool // Start was called: the With* methods panic
	running        atomic.Bool // Start succeeded: b, w and the flush loop are set
	b              *batcher.Batcher
	w              *batcher.Watcher
	flushMu        sync.Mutex // one flush at a time
	flushes        atomic.Int64
	deltas         atomic.Int64
	written        atomic.Int64
	skipped        atomic.Int64
	storeCalls     atomic.Int64
	storeErrors    atomic.Int64
	failed         atomic.Int64
	stop           chan struct{} // closed by Shutdown: the flush loop ends
	loopDone       chan struct{} // closed when the flush loop has ended
	cancelEnqueues context.CancelFunc
	enqueueCtx     context.Context // ends when Shutdown gives up
	shutdownOnce   sync.Once
}

type shard struct {
	mu         sync.Mutex
	sums       map[string]int64
	increments int64
	closed     bool
}

// NewCounter returns a Counter writing to store, with the default settings:
// a flush every second ±20%, batches of 500 keys, 10 attempts.
func NewCounter(store Store) *Counter {
	var id [8]byte
	rand.Read(id[:])
	c := &Counter{
		store:         store,
		flushInterval: DefaultFlushInterval,
		jitter:        DefaultJitter,
		batchSize:     DefaultBatchSize,
		maxAttempts:   DefaultMaxAttempts,
		backoff:       [2]time.Duration{DefaultRetryBackoff, DefaultMaxRetryBackoff},
		concurrency:   DefaultMaxConcurrentBatches,
		bufferSize:    DefaultBufferSize,
		writeTimeout:  DefaultWriteTimeout,
		instance:      hex.EncodeToString(id[:]),
		shardSeed:     maphash.MakeSeed(),
	}
	for k := range c.shard {
		c.shard[k].sums = map[string]int64{}
	}
	return c
}

func (c *Counter) mustNotBeStarted(method string) {
	if c.started.Load() {
		panic("counters: Counter." + method + " called after Start")
	}
}

// WithFlushInterval sets how often the sums are written: every d, give or
// take the jitter. The default is 1s; d must be more than 0.
func (c *Counter) WithFlushInterval(d time.Duration) *Counter {
	c.mustNotBeStarted("WithFlushInterval")
	c.flushInterval = d
	return c
}

// WithJitter sets how much each flush interval varies, as a fraction of it:
// each is drawn uniformly from FlushInterval × [1-j, 1+j], so that instances
// started together do not write together. The default is 0.2; j must be in
// [0, 1).
func (c *Counter) WithJitter(j float64) *Counter {
	c.mustNotBeStarted("WithJitter")
	c.jitter = j
	return c
}

// WithBatchSize sets the most key sums written in one store call. The
// default is 500; n must be more than 0.
func (c *Counter) WithBatchSize(n int) *Counter {
	c.mustNotBeStarted("WithBatchSize")
	c.batchSize = n
	return c
}

// WithMaxAttempts sets how many times a key sum's write is tried before it
// fails and is reported to OnFailed. The default is 10; n must be at least 1.
func (c *Counter) WithMaxAttempts(n int) *Counter {
	c.mustNotBeStarted("WithMaxAttempts")
	c.maxAttempts = n
	return c
}

// WithRetryBackoff sets the wait before a failed write is tried again: base
// after the first failure, doubling after each further one, at most max. The
// defaults are 100ms and 10s; base must be more than 0 and max at least base.
func (c *Counter) WithRetryBackoff(base, max time.Duration) *Counter {
	c.mustNotBeStarted("WithRetryBackoff")
	c.backoff = [2]time.Duration{base, max}
	return c
}

// WithMaxConcurrentBatches sets how many store calls may run at once. The
// default is 2; n must be at least 1.
func (c *Counter) WithMaxConcurrentBatches(n int) *Counter {
	c.mustNotBeStarted("WithMaxConcurrentBatches")
	c.concurrency = n
	return c
}

// WithMaxWritesPerSecond caps the key writes released in any one-second
// window. The default, 0, means no cap; negative values are invalid.
func (c *Counter) WithMaxWritesPerSecond(n int) *Counter {
	c.mustNotBeStarted("WithMaxWritesPerSecond")
	c.writesPerSec = n
	return c
}

// WithBufferSize sets how many key sums may wait for their write at once;
// when that many wait, flushes wait for room (increments do not: they go on
// summing in memory). The default is 100,000; n must be at least the batch
// size.
func (c *Counter) WithBufferSize(n int) *Counter {
	c.mustNotBeStarted("WithBufferSize")
	c.bufferSize = n
	return c
}

// WithWriteTimeout sets how long one store call may take before its context
// is cancelled and its key sums retried. The default is 10s; d must be more
// than 0.
func (c *Counter) WithWriteTimeout(d time.Duration) *Counter {
	c.mustNotBeStarted("WithWriteTimeout")
	c.writeTimeout = d
	return c
}

// WithOnFailed sets a function called with the key sums that failed for good
// (their attempts ran out, or Shutdown gave up on them) and the error: the
// counts in the store miss them. It is called on the Counter's own
// goroutines, possibly concurrently, and must not block. The default, nil,
// only counts them (Stats.Failed).
func (c *Counter) WithOnFailed(fn func(deltas []Delta, err error)) *Counter {
	c.mustNotBeStarted("WithOnFailed")
	c.onFailed = fn
	return c
}

// Start checks the settings and starts the flushes. It returns an error
// naming every bad setting, and leaves the Counter unstarted, if any is. The
// Counter runs until Shutdown, or until ctx ends, which aborts it: sums not
// yet written are reported to OnFailed with an error wrapping
// batcher.ErrClosed.
func (c *Counter) Start(ctx context.Context) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("counters: "+format+": %w", append(args, batcher.ErrInvalidSetting)...))
	}
	if c.store == nil {
		bad("store is nil")
	}
	if c.flushInterval <= 0 {
		bad("FlushInterval must be more than 0, got %v", c.flushInterval)
	}
	if !(c.jitter >= 0 && c.jitter < 1) {
		bad("Jitter must be in [0, 1), got %v", c.jitter)
	}
	if c.batchSize <= 0 {
		bad("BatchSize must be more than 0, got %d", c.batchSize)
	}
	if c.maxAttempts < 1 {
		bad("MaxAttempts must be at least 1, got %d", c.maxAttempts)
	}
	if c.backoff[0] <= 0 || c.backoff[1] < c.backoff[0] {
		bad("RetryBackoff must have base > 0 and max >= base, got %v and %v", c.backoff[0], c.backoff[1])
	}
	if c.concurrency < 1 {
		bad("MaxConcurrentBatches must be at least 1, got %d", c.concurrency)
	}
	if c.writesPerSec < 0 {
		bad("MaxWritesPerSecond must not be negative, got %d", c.writesPerSec)
	}
	if c.bufferSize < c.batchSize {
		bad("BufferSize must be at least BatchSize (%d), got %d", c.batchSize, c.bufferSize)
	}
	if c.writeTimeout <= 0 {
		bad("WriteTimeout must be more than 0, got %v", c.writeTimeout)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if c.started.Swap(true) {
		return fmt.Errorf("counters: Start called twice: %w", batcher.ErrImproperOrder)
	}

	c.w = batcher.NewWatcher(c.processBatch).
		WithMaxBatchSize(c.batchSize).
		WithMaxAttempts(c.maxAttempts).
		WithRetryBackoff(c.backoff[0], c.backoff[1]).
		WithMaxConcurrentBatches(c.concurrency).
		WithMaxOperationTime(c.writeTimeout)
	// The Batcher's own flush interval only matters for retried sums and
	// the tail of a flush that did not fill a batch: keep it short.
	c.b = batcher.NewBatcher().
		WithFlushInterval(min(c.flushInterval/10, 100*time.Millisecond)).
		WithBufferSize(c.bufferSize)
	if c.writesPerSec > 0 {
		c.b.WithRateLimiter(ratelimiter.NewProvisioned(c.writesPerSec))
	}
	c.b.AddListener(c.listen)
	if err := c.b.Start(ctx); err != nil {
		return err
	}
	c.enqueueCtx, c.cancelEnqueues = context.WithCancel(context.Background())
	c.stop, c.loopDone = make(chan struct{}), make(chan struct{})
	go c.loop(ctx)
	c.running.Store(true)
	return nil
}

// loop flushes on the jittered interval until Shutdown or the end of ctx.
func (c *Counter) loop(ctx context.Context) {
	defer close(c.loopDone)
	timer := time.NewTimer(c.nextInterval())
	defer timer.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-ctx.Done():
			return
		case <-timer.C:
			c.flush(c.enqueueCtx)
			timer.Reset(c.nextInterval())
		}
	}
}

func (c *Counter) nextInterval() time.Duration {
	f := 1 + c.jitter*(2*mrand.Float64()-1)
	return time.Duration(float64(c.flushInterval) * f)
}

// Increment adds n to key's count. It only adds to a sum in memory, so it
// never waits for the store. It returns an error wrapping batcher.ErrClosed
// once Shutdown has begun, and batcher.ErrImproperOrder before Start.
func (c *Counter) Increment(key string, n int64) error {
	if !c.running.Load() {
		return fmt.Errorf("counters: Increment before Start: %w", batcher.ErrImproperOrder)
	}
	s := &c.shard[maphash.String(c.shardSeed, key)%shards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("counters: Increment after Shutdown: %w", batcher.ErrClosed)
	}
	s.sums[key] += n
	s.increments++
	return nil
}

// flush takes every sum made since the last flush and hands each key's to
// the Batcher as one operation. If ctx ends while the buffer is full, the
// sums not handed over are reported as failed.
func (c *Counter) flush(ctx context.Context) {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	var taken []map[string]int64
	total := 0
	for k := range c.shard {
		s := &c.shard[k]
		s.mu.Lock()
		if len(s.sums) > 0 {
			taken = append(taken, s.sums)
			total += len(s.sums)
			s.sums = make(map[string]int64, len(s.sums))
		}
		s.mu.Unlock()
	}
	if total == 0 {
		return
	}
	flush := c.instance + ":" + strconv.FormatInt(c.flushes.Add(1), 10)
	var refused []Delta
	var refusal error
	for _, sums := range taken {
		for key, n := range sums {
			if n == 0 {
				continue // increments that cancelled out: nothing to write
			}
			d := Delta{Key: key, N: n, Flush: flush}
			if refusal == nil {
				refusal = c.b.EnqueueContext(ctx, batcher.NewOperation(c.w, 1, d, true))
				if refusal == nil {
					c.deltas.Add(1)
					continue
				}
			}
			refused = append(refused, d)
		}
	}
	if len(refused) > 0 {
		c.deltas.Add(int64(len(refused)))
		c.fail(refused, fmt.Errorf("counters: key sums not written: %w", refusal))
	}
}

// processBatch writes a batch of key sums with one store call.
func (c *Counter) processBatch(ctx context.Context, batch []*batcher.Operation) error {
	deltas := make([]Delta, len(batch))
	for k, op := range batch {
		deltas[k] = op.Payload().(Delta)
	}
	applied, err := c.store.Apply(ctx, deltas)
	if err != nil {
		c.storeErrors.Add(1)
		return batcher.Retry(err)
	}
	c.storeCalls.Add(1)
	c.written.Add(int64(applied))
	c.skipped.Add(int64(len(deltas) - applied))
	return nil
}

// listen reports the Batcher's failed operations to OnFailed.
func (c *Counter) listen(e batcher.Event) {
	if e.Kind != batcher.Failed || len(e.Batch) == 0 {
		return
	}
	deltas := make([]Delta, len(e.Batch))
	for k, op := range e.Batch {
		deltas[k] = op.Payload().(Delta)
	}
	c.fail(deltas, e.Err)
}

func (c *Counter) fail(deltas []Delta, err error) {
	c.failed.Add(int64(len(deltas)))
	if c.onFailed != nil {
		c.onFailed(deltas, err)
	}
}

// Flush writes every sum made so far and waits until the writes (and their
// retries) have ended, or ctx ends (it returns ctx.Err()). It returns an
// error wrapping batcher.ErrImproperOrder before Start.
func (c *Counter) Flush(ctx context.Context) error {
	if !c.running.Load() {
		return fmt.Errorf("counters: Flush before Start: %w", batcher.ErrImproperOrder)
	}
	c.flush(ctx)
	return c.b.Flush(ctx)
}

// Shutdown stops intake (Increment returns an error wrapping
// batcher.ErrClosed), stops the flush loop, writes every sum left, waits for
// the writes and their retries, and returns nil: every key's count in the
// store is then exact, but for the sums reported to OnFailed. If ctx ends
// first it gives up: the sums not written are reported to OnFailed, and
// Shutdown returns ctx.Err(). No goroutine of the Counter outlives it.
// Shutdown before Start returns nil.
func (c *Counter) Shutdown(ctx context.Context) error {
	if !c.running.Load() {
		return nil
	}
	var err error
	c.shutdownOnce.Do(func() {
		for k := range c.shard {
			s := &c.shard[k]
			s.mu.Lock()
			s.closed = true
			s.mu.Unlock()
		}
		close(c.stop)
		// A flush blocked on a full buffer gives up when ctx ends.
		stopEnqueues := context.AfterFunc(ctx, c.cancelEnqueues)
		<-c.loopDone
		c.flush(c.enqueueCtx)
		stopEnqueues()
		c.cancelEnqueues()
		err = c.b.Shutdown(ctx)
	})
	if err != nil {
		return err
	}
	return c.b.Shutdown(ctx) // a second call waits for the same drain
}

// Stats returns the Counter's counts.
func (c *Counter) Stats() Stats {
	s := Stats{
		Flushes:     c.flushes.Load(),
		Deltas:      c.deltas.Load(),
		Written:     c.written.Load(),
		Skipped:     c.skipped.Load(),
		StoreCalls:  c.storeCalls.Load(),
		StoreErrors: c.storeErrors.Load(),
		Failed:      c.failed.Load(),
	}
	for k := range c.shard {
		sh := &c.shard[k]
		sh.mu.Lock()
		s.Increments += sh.increments
		sh.mu.Unlock()
	}
	return s
}
