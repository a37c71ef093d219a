package batcher

import (
	"errors"
	"fmt"
	"time"
)

// Batcher defaults.
const (
	DefaultBufferSize       = 10000
	DefaultFlushInterval    = 100 * time.Millisecond
	DefaultCapacityInterval = 100 * time.Millisecond
	DefaultAuditInterval    = 10 * time.Second
	DefaultMaxOperationTime = time.Minute
	DefaultPauseTime        = 500 * time.Millisecond
	DefaultMaxPauseTime     = 30 * time.Second
	// DefaultMaxConcurrentBatches is the most ProcessBatch calls a Batcher
	// runs at once unless WithMaxConcurrentBatches says otherwise. Each
	// running call has a worker goroutine, so it is also the most worker
	// goroutines a Batcher has (idle ones leave after a flush interval).
	DefaultMaxConcurrentBatches = 1024
)

// config holds a Batcher's settings. The With* methods write it before
// Start; nothing writes it after.
type config struct {
	limiter          RateLimiter
	bufferSize       int
	flushInterval    time.Duration
	capacityInterval time.Duration
	auditInterval    time.Duration
	maxOperationTime time.Duration
	pauseTime        time.Duration
	maxPauseTime     time.Duration
	maxConcurrent    int
	errorOnFull      bool
	eager            bool
	emitBatch        bool
	emitFlush        bool
	emitRequest      bool
}

func defaultConfig() config {
	return config{
		bufferSize:       DefaultBufferSize,
		flushInterval:    DefaultFlushInterval,
		capacityInterval: DefaultCapacityInterval,
		auditInterval:    DefaultAuditInterval,
		maxOperationTime: DefaultMaxOperationTime,
		pauseTime:        DefaultPauseTime,
		maxPauseTime:     DefaultMaxPauseTime,
	}
}

// validate returns one error that names every bad setting, or nil.
func (c *config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidSetting}, args...)...))
	}
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			bad("%s is %v; it must be more than 0", name, d)
		}
	}
	if c.bufferSize <= 0 {
		bad("BufferSize is %d; it must be more than 0", c.bufferSize)
	}
	positive("FlushInterval", c.flushInterval)
	positive("CapacityInterval", c.capacityInterval)
	positive("AuditInterval", c.auditInterval)
	positive("MaxOperationTime", c.maxOperationTime)
	positive("PauseTime", c.pauseTime)
	if c.maxPauseTime < c.pauseTime {
		bad("MaxPauseTime is %v; it must be at least PauseTime, %v", c.maxPauseTime, c.pauseTime)
	}
	if c.maxConcurrent < 0 {
		bad("MaxConcurrentBatches is %d; it must be 0 (the default, %d) or more", c.maxConcurrent, DefaultMaxConcurrentBatches)
	}
	return errors.Join(errs...)
}

func (b *Batcher) mustNotBeStarted(method string) {
	if b.started.Load() {
		panic("batcher: Batcher." + method + " called after Start")
	}
}

// WithRateLimiter sets the rate limiter that grants capacity. The default,
// nil, means no limit: batches go out as fast as the watchers take them.
func (b *Batcher) WithRateLimiter(l RateLimiter) *Batcher {
	b.mustNotBeStarted("WithRateLimiter")
	b.cfg.limiter = l
	return b
}

// WithBufferSize sets how many operations the Batcher holds at once,
// counting those waiting for release, waiting to retry and in flight. When
// it is full, Enqueue blocks, or returns ErrBufferFull with
// WithErrorOnFullBuffer. The default is 10,000; n must be more than 0.
func (b *Batcher) WithBufferSize(n int) *Batcher {
	b.mustNotBeStarted("WithBufferSize")
	b.cfg.bufferSize = n
	return b
}

// WithFlushInterval sets how often the Batcher flushes: releases, within
// capacity, the operations that did not fill a batch (a flush that finds
// no concurrency slot free releases them as soon as one frees; a partial
// batch whose watcher's operations stream in fast enough to fill it may wait
// for a later flush, at most 4 intervals after its oldest operation came). It also
// sets how finely capacity is paced: each flush interval gets its share of
// the second's capacity, under a backlog too. A datastore that counts in
// seconds of its own sees each of them short of the capacity by at most one
// such share (see the package doc, Guarantees): a shorter interval makes it
// smaller. The default is 100ms; d must be more than 0.
func (b *Batcher) WithFlushInterval(d time.Duration) *Batcher {
	b.mustNotBeStarted("WithFlushInterval")
	b.cfg.flushInterval = d
	return b
}

// WithCapacityInterval sets how often the Batcher tells its rate limiter
// the target (GiveMe) and reads its capacity. The default is 100ms; d must
// be more than 0.
func (b *Batcher) WithCapacityInterval(d time.Duration) *Batcher {
	b.mustNotBeStarted("WithCapacityInterval")
	b.cfg.capacityInterval = d
	return b
}

// WithAuditInterval sets how often the Batcher audits its bookkeeping (see
// [AuditPassed]). The default is 10s; d must be more than 0.
func (b *Batcher) WithAuditInterval(d time.Duration) *Batcher {
	b.mustNotBeStarted("WithAuditInterval")
	b.cfg.auditInterval = d
	return b
}

// WithMaxOperationTime sets how long a ProcessBatch call may run before its
// context is cancelled, for watchers that do not set their own. The default
// is 1m; d must be more than 0.
func (b *Batcher) WithMaxOperationTime(d time.Duration) *Batcher {
	b.mustNotBeStarted("WithMaxOperationTime")
	b.cfg.maxOperationTime = d
	return b
}

// WithPauseTime sets how long Pause stops releases, and the first pause of
// a watcher's lane after a throttle whose datastore did not say how long to
// wait (see [Throttle]; that pause has a jitter of ±20%). The default is
// 500ms; d must be more than 0.
func (b *Batcher) WithPauseTime(d time.Duration) *Batcher {
	b.mustNotBeStarted("WithPauseTime")
	b.cfg.pauseTime = d
	return b
}

// WithMaxPauseTime caps a lane's pause after a throttle: the pause without
// a retry-after, which doubles while throttles repeat, and a datastore's
// retry-after, which is waited as given up to d (a retry-after of hours is
// a fault, not a plan: the lane tries again after d). The default is 30s; d
// must be at least PauseTime.
func (b *Batcher) WithMaxPauseTime(d time.Duration) *Batcher {
	b.mustNotBeStarted("WithMaxPauseTime")
	b.cfg.maxPauseTime = d
	return b
}

// WithMaxConcurrentBatches sets how many ProcessBatch calls may run at once,
// across all watchers. Each running call has a worker goroutine of its own,
// so n also bounds the Batcher's worker goroutines; a worker that finds
// nothing to run waits, idle, for a flush interval, then leaves. The
// default, 0, means DefaultMaxConcurrentBatches (1024): enough for
// ProcessBatch calls that wait on a datastore, and a bound on the
// goroutines (and their memory) that a burst of many watchers' small
// batches would otherwise start at once: without it, a flush of 10,000
// watchers' batches started 10,000 goroutines, which then queued for the
// Batcher's lock. For no practical limit, pass math.MaxInt. Negative values
// are invalid.
func (b *Batcher) WithMaxConcurrentBatches(n int) *Batcher {
	b.mustNotBeStarted("WithMaxConcurrentBatches")
	b.cfg.maxConcurrent = n
	return b
}

// WithErrorOnFullBuffer makes Enqueue return ErrBufferFull when the buffer
// is full, instead of blocking until there is room.
func (b *Batcher) WithErrorOnFullBuffer() *Batcher {
	b.mustNotBeStarted("WithErrorOnFullBuffer")
	b.cfg.errorOnFull = true
	return b
}

// WithEagerRelease makes the Batcher release operations as soon as their
// watcher has a free slot and the rate limiter has room, instead of at the
// next flush: at light load an operation reaches ProcessBatch within
// microseconds. While slots or capacity are short, operations wait and
// batches fill as usual; and once a watcher's operations come faster than
// one a millisecond (its last two batches went within two milliseconds),
// they are gathered for up to a millisecond after its last batch, so a
// burst makes full batches, not one per operation (its first two go at
// once, as do two that merely come close together). Eager
// release wants a bound on concurrency (WithMaxConcurrentBatches or the
// watcher's): with many free slots and a slow stream of operations, each may
// get a batch of its own.
func (b *Batcher) WithEagerRelease() *Batcher {
	b.mustNotBeStarted("WithEagerRelease")
	b.cfg.eager = true
	return b
}

// WithEmitBatch makes the Batcher emit a [BatchReleased] event for every
// batch.
func (b *Batcher) WithEmitBatch() *Batcher {
	b.mustNotBeStarted("WithEmitBatch")
	b.cfg.emitBatch = true
	return b
}

// WithEmitFlush makes the Batcher emit [FlushStarted] and [FlushDone] events
// around every flush.
func (b *Batcher) WithEmitFlush() *Batcher {
	b.mustNotBeStarted("WithEmitFlush")
	b.cfg.emitFlush = true
	return b
}

// WithEmitRequest makes the Batcher emit a [CapacityRequested] event every
// time it asks the rate limiter for capacity.
func (b *Batcher) WithEmitRequest() *Batcher {
	b.mustNotBeStarted("WithEmitRequest")
	b.cfg.emitRequest = true
	return b
}
