package batcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// A Processor does the work of a batch: it writes the batch's operations to
// the datastore. Implement it on your own type and pass it to
// [NewWatcherFor], or pass a function to [NewWatcher].
//
// ProcessBatch says how the batch went by what it returns:
//
//   - nil: every operation succeeded;
//   - an error made by [Retry]: try the operations again after the watcher's
//     back-off, up to its MaxAttempts;
//   - an error made by [Throttle]: the datastore throttled the batch; the
//     Batcher pauses this watcher's releases (its lane; other watchers go
//     on) and retries the operations;
//   - any other error: the operations failed for good with that error.
//
// Before returning, it may override that answer for single operations with
// [Operation.Retry], [Operation.Throttle] and [Operation.Fail], and report
// what each really cost with [Operation.SetActualCost].
//
// ctx carries the values of the context given to [Batcher.Start], the
// moment the Batcher released the batch (see [ReleasedAt]), and the call's
// deadline: MaxOperationTime after that moment. It is cancelled when the
// call overruns the watcher's MaxOperationTime (ctx.Err() is then
// context.DeadlineExceeded), when the Batcher is closed, and when
// ProcessBatch returns; ProcessBatch should return soon after the first two.
// ctx and the operations' feedback methods must not be used after
// ProcessBatch returns, and contexts derived from ctx must be cancelled
// before it returns (as go vet's lostcancel check asks). The batch slice is
// ProcessBatch's to keep.
//
// A panic in ProcessBatch is recovered: every operation of the batch fails
// with a [*PanicError] (wrapping [ErrPanic], with the value and the stack),
// whatever was said of single operations before the panic, each reported in
// a [Failed] event; the slot frees and the Batcher goes on.
type Processor interface {
	ProcessBatch(ctx context.Context, batch []*Operation) error
}

// ProcessorFunc adapts a function to a [Processor].
type ProcessorFunc func(ctx context.Context, batch []*Operation) error

// ProcessBatch calls f(ctx, batch).
func (f ProcessorFunc) ProcessBatch(ctx context.Context, batch []*Operation) error {
	return f(ctx, batch)
}

// A Watcher receives batches of its operations, through its [Processor].
// Create one per kind of work or per request with [NewWatcher] or
// [NewWatcherFor], configure it with the With* methods, then enqueue
// operations that name it. A Watcher needs no closing: once its operations
// have ended, the Batcher forgets it.
//
// The With* methods must be called before the watcher's first operation is
// enqueued; after that they panic. A bad setting is reported by Enqueue with
// an error wrapping [ErrInvalidSetting]. A Watcher may be used by several
// Batchers, and is then batched separately in each.
type Watcher struct {
	p Processor

	maxAttempts      int
	maxBatchSize     int
	home             atomic.Pointer[queue] // the queue a Batcher last made for it (see Batcher.queueLocked), on maxBatchSize's cache line: a sweep reads both
	maxOperationTime time.Duration
	maxConcurrent    int
	retryBackoff     time.Duration
	maxRetryBackoff  time.Duration
	lane             *Lane
	priority         int
	weight           int
	share            float64

	sealed  atomic.Bool
	sealMu  sync.Mutex
	invalid error // set once sealed
}

// Watcher defaults.
const (
	DefaultMaxAttempts     = 3
	DefaultRetryBackoff    = 100 * time.Millisecond
	DefaultMaxRetryBackoff = 10 * time.Second
)

// NewWatcher returns a watcher whose batches are processed by fn.
func NewWatcher(fn func(ctx context.Context, batch []*Operation) error) *Watcher {
	var p Processor
	if fn != nil {
		p = ProcessorFunc(fn)
	}
	return NewWatcherFor(p)
}

// NewWatcherFor returns a watcher whose batches are processed by p.
func NewWatcherFor(p Processor) *Watcher {
	return &Watcher{
		p:               p,
		maxAttempts:     DefaultMaxAttempts,
		weight:          1,
		retryBackoff:    DefaultRetryBackoff,
		maxRetryBackoff: DefaultMaxRetryBackoff,
	}
}

func (w *Watcher) mustNotBeSealed(method string) {
	if w.sealed.Load() {
		panic("batcher: Watcher." + method + " called after the watcher's first Enqueue")
	}
}

// WithMaxAttempts sets how many times an operation is handed to
// ProcessBatch before a Retry ends it in failure. The default is 3; n must
// be at least 1 (1 means no retries). Throttles do not count.
func (w *Watcher) WithMaxAttempts(n int) *Watcher {
	w.mustNotBeSealed("WithMaxAttempts")
	w.maxAttempts = n
	return w
}

// WithMaxBatchSize sets the most operations in one batch. The default, 0,
// means no limit: each flush releases all the watcher's operations that the
// rate limiter allows in one batch. Negative values are invalid. A batch of
// exactly n operations is released as soon as it is complete, without
// waiting for the flush interval.
func (w *Watcher) WithMaxBatchSize(n int) *Watcher {
	w.mustNotBeSealed("WithMaxBatchSize")
	w.maxBatchSize = n
	return w
}

// WithMaxOperationTime sets how long one ProcessBatch call may run before
// its context is cancelled and a [TimedOut] event is emitted. The default,
// 0, means the Batcher's MaxOperationTime. Negative values are invalid.
func (w *Watcher) WithMaxOperationTime(d time.Duration) *Watcher {
	w.mustNotBeSealed("WithMaxOperationTime")
	w.maxOperationTime = d
	return w
}

// WithMaxConcurrentBatches sets how many of this watcher's batches may run
// at once. The default, 0, means no limit of its own (the Batcher's
// MaxConcurrentBatches still applies). Negative values are invalid.
func (w *Watcher) WithMaxConcurrentBatches(n int) *Watcher {
	w.mustNotBeSealed("WithMaxConcurrentBatches")
	w.maxConcurrent = n
	return w
}

// WithRetryBackoff sets the wait before a retried operation is buffered
// again: base after the first attempt, doubling after each further one, at
// most max. The defaults are 100ms and 10s; base must be > 0 and max >= base.
func (w *Watcher) WithRetryBackoff(base, max time.Duration) *Watcher {
	w.mustNotBeSealed("WithRetryBackoff")
	w.retryBackoff, w.maxRetryBackoff = base, max
	return w
}

// WithLane puts the watcher in a lane shared with the other watchers given
// l: a throttle of any of them pauses them all, and their run of throttles
// is one (see [Throttle]). Use it when several watchers write to one
// budget of the datastore, such as one physical partition. The default,
// nil, makes the watcher a lane of its own.
func (w *Watcher) WithLane(l *Lane) *Watcher {
	w.mustNotBeSealed("WithLane")
	w.lane = l
	return w
}

// Lane returns the lane the watcher was put in with WithLane, or nil if it
// is a lane of its own (the default). A [Learner] may use it to tell a
// throttle of one lane's budget (a hot partition) from one of the budget
// every lane shares. It is safe for concurrent use once the watcher's first
// operation was enqueued (its settings are sealed then).
func (w *Watcher) Lane() *Lane { return w.lane }

// WithPriority sets the watcher's priority class. While capacity or
// concurrency slots are short, a Batcher releases the batches of a higher
// class before any of a lower one (a full batch, or a partial one a flush
// owes); within a class, watchers share by weight (see WithWeight). A lower
// class gets only what the higher ones leave, unless it has a guaranteed
// share (see WithGuaranteedShare). The default is 0; any int is valid, and
// watchers of equal priority are one class. Each distinct priority a
// Batcher has seen costs it a little memory for its life, and each release
// a look at every class: use a few.
func (w *Watcher) WithPriority(p int) *Watcher {
	w.mustNotBeSealed("WithPriority")
	w.priority = p
	return w
}

// WithWeight sets the watcher's weight within its priority class:
// backlogged watchers of one class share the released capacity in
// proportion to their weights, counted by cost (deficit round robin). The
// default is 1, which, with batches of one cost, gives each watcher with
// work one batch a turn, as a Batcher has always done; weight must be at
// least 1.
func (w *Watcher) WithWeight(n int) *Watcher {
	w.mustNotBeSealed("WithWeight")
	w.weight = n
	return w
}

// WithGuaranteedShare sets a share of the released cost that the watcher's
// priority class gets, while it has work, even when higher classes want
// all the capacity: whenever the class has had less than f of the cost
// released over the last second (counting the previous second in part), it
// goes first. f is a fraction in [0, 1); the default, 0, means none; a
// class takes the largest share any of its watchers asks for. Shares are
// counted over all the classes' releases, so guaranteed shares that add up
// to more than 1 cannot all be met.
func (w *Watcher) WithGuaranteedShare(f float64) *Watcher {
	w.mustNotBeSealed("WithGuaranteedShare")
	w.share = f
	return w
}

// Priority returns the watcher's priority class.
func (w *Watcher) Priority() int { return w.priority }

// Weight returns the watcher's weight within its class.
func (w *Watcher) Weight() int { return w.weight }

// GuaranteedShare returns the watcher's guaranteed share.
func (w *Watcher) GuaranteedShare() float64 { return w.share }

// MaxAttempts returns the watcher's MaxAttempts setting.
func (w *Watcher) MaxAttempts() int { return w.maxAttempts }

// MaxBatchSize returns the watcher's MaxBatchSize setting.
func (w *Watcher) MaxBatchSize() int { return w.maxBatchSize }

// MaxOperationTime returns the watcher's MaxOperationTime setting.
func (w *Watcher) MaxOperationTime() time.Duration { return w.maxOperationTime }

// MaxConcurrentBatches returns the watcher's MaxConcurrentBatches setting.
func (w *Watcher) MaxConcurrentBatches() int { return w.maxConcurrent }

// seal freezes the settings and returns the error that makes them invalid,
// if any. It is cheap after the first call.
func (w *Watcher) seal() error {
	if w.sealed.Load() {
		return w.invalid
	}
	w.sealMu.Lock()
	defer w.sealMu.Unlock()
	if !w.sealed.Load() {
		w.invalid = w.validate()
		w.sealed.Store(true)
	}
	return w.invalid
}

func (w *Watcher) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: Watcher "+format, append([]any{ErrInvalidSetting}, args...)...))
	}
	if w.p == nil {
		bad("Processor is nil")
	}
	if w.maxAttempts < 1 {
		bad("MaxAttempts is %d; it must be at least 1", w.maxAttempts)
	}
	if w.maxBatchSize < 0 {
		bad("MaxBatchSize is %d; it must be 0 (no limit) or more", w.maxBatchSize)
	}
	if w.maxOperationTime < 0 {
		bad("MaxOperationTime is %v; it must be 0 (the Batcher's) or more", w.maxOperationTime)
	}
	if w.maxConcurrent < 0 {
		bad("MaxConcurrentBatches is %d; it must be 0 (no limit) or more", w.maxConcurrent)
	}
	if w.weight < 1 {
		bad("Weight is %d; it must be at least 1", w.weight)
	}
	if !(w.share >= 0 && w.share < 1) { // NaN too
		bad("GuaranteedShare is %v; it must be at least 0 and less than 1", w.share)
	}
	if w.retryBackoff <= 0 {
		bad("RetryBackoff base is %v; it must be more than 0", w.retryBackoff)
	}
	if w.maxRetryBackoff < w.retryBackoff {
		bad("RetryBackoff max is %v; it must be at least the base, %v", w.maxRetryBackoff, w.retryBackoff)
	}
	return errors.Join(errs...)
}

// backoff returns the wait before retrying an operation that has been
// attempted n times.
func (w *Watcher) backoff(n int) time.Duration {
	d := w.retryBackoff
	for i := 1; i < n && d < w.maxRetryBackoff; i++ {
		d *= 2
	}
	return min(d, w.maxRetryBackoff)
}

// Retry returns an error that tells the Batcher, as ProcessBatch's result,
// to retry the batch's operations after the watcher's back-off. err is the
// reason; it is what a failed operation's Err wraps once its attempts run
// out.
func Retry(err error) error {
	return &feedback{verdict: verdictRetry, err: err}
}

// Throttle returns an error that tells the Batcher, as ProcessBatch's
// result, that the datastore throttled the batch and asked for a wait of
// after. The Batcher pauses the releases of the batch's watcher, its lane,
// and retries the operations once the pause ends; other watchers' releases
// go on (a datastore that throttles per partition should be given a watcher
// per partition). Throttles do not count towards MaxAttempts.
//
// The pause: an after above 0 is waited exactly, not doubled, up to the
// Batcher's MaxPauseTime (a retry-after of hours waits MaxPauseTime). An
// after of 0 or less means the datastore did not say: the lane waits
// PauseTime, doubled for each further throttle in a row, times a random
// factor in [0.8, 1.2) so that lanes throttled together do not come back
// together, at most MaxPauseTime; a batch of the lane that succeeds ends the
// run. Throttles of batches that were already running when the lane's pause
// began count as one. The Batcher's capacity is not affected: whatever the
// lanes do, no one-second window carries more than the capacity.
func Throttle(after time.Duration, err error) error {
	return &feedback{verdict: verdictThrottle, err: err, after: after}
}

type feedback struct {
	verdict verdict
	err     error
	after   time.Duration
}

func (f *feedback) Error() string {
	what := "retry"
	if f.verdict == verdictThrottle {
		what = "throttled"
	}
	if f.err == nil {
		return "batcher: " + what
	}
	return "batcher: " + what + ": " + f.err.Error()
}

func (f *feedback) Unwrap() error { return f.err }
