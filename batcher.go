package batcher

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// A Batcher groups enqueued operations per [Watcher] and hands them to the
// watchers' ProcessBatch in batches, never releasing more cost than its rate
// limiter grants: at most Capacity in any one-second window, counting each
// batch from the moment its ProcessBatch call starts.
//
// By default operations that do not fill a batch wait for the next flush
// (WithFlushInterval), so at light load an operation waits half a flush
// interval on average; full batches go at once (within a millisecond while
// producers stream operations without a pause). WithEagerRelease sends
// operations as soon as a slot and capacity are free.
//
// Create one per datastore with [NewBatcher], configure it with the With*
// methods, [Batcher.Start] it, [Batcher.Enqueue] operations from any number
// of goroutines, and [Batcher.Shutdown] it to drain what is left. A Batcher
// cannot be restarted once shut down.
//
// The With* methods must be called before Start; after it they panic. Start
// checks every setting and reports all bad ones in one error. All other
// methods are safe for concurrent use.
type Batcher struct {
	cfg     config
	startMu sync.Mutex
	started atomic.Bool // With* panic once set
	pacer   Pacer       // the limiter, if it paces itself

	listeners Listeners
	gate      emitGate
	refused   atomic.Int64
	// Operations ended without and with an error. Each is counted before
	// it is ended (and uncounted if something else ended it first), so
	// that Stats counts an operation by the time its Wait returns.
	succeeded, failed atomic.Int64
	intake            atomic.Pointer[intake] // set by Start
	lowWater          int                    // free slots that wake blocked Enqueue calls

	kick       chan struct{} // wakes the owner goroutine; holds at most one
	intakeKick chan struct{} // asks the owner goroutine to sweep the intake
	// lingerKick asks the owner goroutine to sweep the shards that linger;
	// lingerArmed is set while it has been asked, or will look again (see
	// lingerIntake).
	lingerKick  chan struct{}
	lingerArmed atomic.Bool
	draining    chan struct{} // closed when Shutdown begins, waking blocked Enqueue calls
	drained     chan struct{} // closed when a Shutdown's drain is complete
	stopOwner   chan struct{} // closed to end the owner goroutine
	ownerDone   chan struct{} // closed when the owner goroutine has returned
	finished    chan struct{} // closed when Shutdown or Close is complete

	runCtx      context.Context // every ProcessBatch context ends when it does
	runValues   context.Context // Start's context without its cancellation: the values of every ProcessBatch context
	runCancel   context.CancelFunc
	limCancel   context.CancelFunc
	limListener int

	drainOnce   sync.Once
	ending      atomic.Bool    // set by the first of finish and abort
	abortedFlag atomic.Bool    // abort, not finish, ended it
	batches     sync.WaitGroup // goroutines running batches

	mu struct {
		sync.Mutex
		state       state
		queues      map[*Watcher]*queue
		sched       sched          // the queues with operations to release, in turn
		idle        []*queue       // queues that may be forgotten at the next flush
		buffered    int            // operations waiting for release or retry
		outstanding int            // buffered plus in flight
		reserved    int            // buffer slots granted to intake shards; outstanding+reserved <= bufferSize
		touched     []*queue       // queues that received operations since the last release
		target      int            // cost of the buffered operations
		inflight    int            // batches running
		running     []*batch       // batches in flight; each knows its index
		spareOps    [][]*Operation // the Batcher's copies of ended batches, cleared, for reuse
		idleWorkers []*worker
		flushes     uint64        // flush intervals so far
		space       chan struct{} // closed when room frees, if someone waits
		paused      bool
		pausedUntil time.Time
		lanes       laneHeap // the queues whose lane a throttle paused, by the end of the pause
		sharedLanes map[*Lane]*laneState
		capacity    int
		maxCapacity int  // the rate limiter's, as last read
		aboveMax    bool // an operation costing more than maxCapacity was buffered since the last drop
		unlimited   bool // no rate limiter
		ledger      ledger
		pace        pace
		retries     retryQueue
		roomWake    time.Time // when room may suffice for a batch that waits
		armed       time.Time // what the owner's timer is set for
		flushWanted bool      // Flush asked for a flush
		pressure    bool      // a full buffer asked for a flush (see pressureFlushLocked)
		reserve     int       // capacity the class being released from leaves to higher ones (see reserveLocked)
		epochs      epochs
		lastTarget  int
		stats       Stats
	}
}

type state uint8

const (
	stateNew state = iota
	stateRunning
	stateDraining
	stateClosed
)

// queue holds one watcher's operations in a Batcher.
//
// A sweep (see intake) touches, for each operation, its watcher's queue,
// and over many watchers a different one each time, under the Batcher's
// lock: what it reads and writes is in the first two cache lines (64
// bytes each: the first line, then the second; see
// TestQueueSweepFieldsFirst), so that a sweep over thousands of queues
// costs two cache misses an operation, not five.
type queue struct {
	// The first cache line: the sweep's, and the scheduler's flags.
	w    *Watcher
	b    *Batcher    // whose queue it is; never changes
	ops  ring[entry] // waiting for release, oldest first
	gone bool        // b no longer holds it (see queueLocked); under b's lock
	// The scheduler's (see sched.go): in its full and ready rings; waiting
	// out of the rings for a slot of its own (slotWait) or for the
	// capacity to change (capWait).
	inReady, inFull   bool
	slotWait, capWait bool
	// The lane's (see below): paused, by a throttle or (held) by eager
	// release's hold, which sends no events.
	paused, held bool
	touched      bool

	// The second: the sweep's too. When the sweeps that brought its first
	// and its last operation waiting ran (sinceAt zero: its first are
	// retries, or were enqueued with eager release), for fillingLocked;
	// the ready ring's stamp.
	unbatchable     int // operations in ops that cannot share a batch
	sinceAt, lastAt time.Time
	stamp           uint64

	inflight    int       // batches running
	retrying    int       // operations waiting to retry
	lastRelease time.Time // with eager release: when it last sent a batch
	burst       bool      // with eager release: its last two batches went within 2*eagerGap
	flushOwed   bool      // a flush found no slot free: its part batch goes when one frees
	inIdle      bool
	cls         *class  // its watcher's priority class
	credit      int     // its turn's credit, in cost units (see class)
	rate        float64 // operations per nanosecond of the stream that filled its last batch
	// The lane (see lanes.go): paused by a throttle until pausedUntil, at
	// laneAt in Batcher.mu.lanes (-1 when not paused); streak counts its
	// throttles in a row, pauses the throttles that began or lengthened a
	// run of its pauses.
	shared      *laneState // its watcher's shared lane, if any (see Lane)
	pausedUntil time.Time
	laneAt      int
	streak      int
	pauses      uint64
}

// An entry is an operation as the intake and the queues hold it: with the
// fields they read beside the pointer, so that sweeping and forming batches
// do not touch the operation itself (its cache line stays with the CPUs
// that made it and that will end it).
type entry struct {
	op        *Operation
	w         *Watcher
	cost      int32
	batchable bool
}

func entryOf(op *Operation) entry { return entry{op, op.watcher, op.cost, op.Batchable()} }

func (q *queue) push(e entry) {
	q.ops.push(e)
	if !e.batchable {
		q.unbatchable++
	}
}

// pushFront puts operations back before the others, for a retry.
func (q *queue) pushFront(ops []*Operation) {
	es := make([]entry, len(ops))
	for i, op := range ops {
		es[i] = entryOf(op)
		if !op.Batchable() {
			q.unbatchable++
		}
	}
	q.ops.pushFront(es)
}

// popInto moves the first len(dst) operations into dst.
func (q *queue) popInto(dst []*Operation) {
	for i := range dst {
		e := q.ops.popFront()
		dst[i] = e.op
		if !e.batchable {
			q.unbatchable--
		}
	}
}

func (q *queue) isIdle() bool { return q.ops.len() == 0 && q.inflight == 0 && q.retrying == 0 }

// Stats counts what a Batcher did with operations since it started. Every
// enqueued operation is, at any time, buffered (waiting for release or a
// retry), in flight, succeeded or failed:
// Enqueued = Buffered + InFlight + Succeeded + Failed.
type Stats struct {
	Enqueued  int64 // accepted by Enqueue
	Refused   int64 // Enqueue returned an error
	Succeeded int64 // ended without error
	Failed    int64 // ended with an error
	Buffered  int64 // waiting for release or retry now
	InFlight  int64 // in a running ProcessBatch now
	Released  int64 // handed to ProcessBatch, counting every attempt
	Batches   int64 // ProcessBatch calls
	Retried   int64 // retries asked for by ProcessBatch
	Throttled int64 // throttles reported by ProcessBatch
	TimedOut  int64 // ProcessBatch calls that overran MaxOperationTime
}

// NewBatcher returns a Batcher with the default settings: no rate limiter, a
// buffer of 10,000 operations, a flush every 100ms. Configure it with the
// With* methods, then call Start.
func NewBatcher() *Batcher {
	return &Batcher{cfg: defaultConfig()}
}

// AddListener adds a listener for the Batcher's events, and for its rate
// limiter's if the limiter is an [EventSource], and returns an id for
// RemoveListener.
//
// Listeners are called synchronously by the goroutine that caused the event
// (the Batcher's own, or the rate limiter's), one after another; different
// goroutines may call them at the same time, so a listener must be safe for
// concurrent use. A listener must not block: releases wait for it. It may
// call RemoveListener, AddListener, Pause and the accessors, and Enqueue if
// that cannot block (WithErrorOnFullBuffer, or EnqueueContext with a short
// deadline). It must not call Flush, Shutdown or Close, which wait for the
// Batcher's goroutines, the one running the listener among them: call those
// from another goroutine. No event is emitted after Shutdown or Close has
// returned.
//
// A listener that panics neither takes the Batcher down nor keeps the event
// from the listeners after it: the panic is recovered, and the listener's
// first panic is reported to the other listeners in a [ListenerPanicked]
// event (Val is its id, Err a [*PanicError] with the value and stack); its
// later panics are recovered without a report.
func (b *Batcher) AddListener(fn func(Event)) int { return b.listeners.AddListener(fn) }

// RemoveListener removes the listener with the given id.
func (b *Batcher) RemoveListener(id int) { b.listeners.RemoveListener(id) }

// emit passes e to the listeners unless the Batcher has finished.
func (b *Batcher) emit(e Event) {
	if b.listeners.Len() == 0 || !b.gate.enter() {
		return
	}
	defer b.gate.leave()
	b.listeners.Emit(e)
}

func (b *Batcher) emitAll(evs []Event) {
	for _, e := range evs {
		b.emit(e)
	}
}

// emitEntered passes evs to the listeners; the caller holds the gate.
func (b *Batcher) emitEntered(evs []Event) {
	for _, e := range evs {
		b.listeners.Emit(e)
	}
}

// Start checks the settings, starts the rate limiter and the Batcher's
// background work, and returns nil; or returns an error that names every bad
// setting (each wrapping [ErrInvalidSetting]) and leaves the Batcher
// unstarted. Start returns ErrImproperOrder if called twice and ErrClosed
// after Shutdown or Close.
//
// The Batcher runs until Shutdown, Close or the end of ctx; the end of ctx
// acts as Close. ProcessBatch calls do not run under ctx but under a context
// of the Batcher's own.
func (b *Batcher) Start(ctx context.Context) error {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	b.mu.Lock()
	st := b.mu.state
	b.unlock()
	switch {
	case st == stateClosed:
		return fmt.Errorf("%w: Start after Shutdown or Close", ErrClosed)
	case b.started.Load():
		return fmt.Errorf("%w: Start called twice", ErrImproperOrder)
	}
	if err := b.cfg.validate(); err != nil {
		return err
	}
	if b.cfg.maxConcurrent == 0 {
		b.cfg.maxConcurrent = DefaultMaxConcurrentBatches
	}
	lim := b.cfg.limiter
	limCtx, limCancel := context.WithCancel(context.WithoutCancel(ctx))
	capacity, maxCapacity := 0, 0
	if lim != nil {
		if err := lim.Start(limCtx); err != nil {
			limCancel()
			return fmt.Errorf("batcher: starting the rate limiter: %w", err)
		}
		b.pacer, _ = lim.(Pacer)
		capacity, maxCapacity = lim.Capacity(), lim.MaxCapacity()
	}
	b.limCancel = limCancel
	b.runValues = context.WithoutCancel(ctx)
	b.runCtx, b.runCancel = context.WithCancel(b.runValues)
	b.kick = make(chan struct{}, 1)
	b.intakeKick = make(chan struct{}, 1)
	b.lingerKick = make(chan struct{}, 1)
	b.draining = make(chan struct{})
	b.drained = make(chan struct{})
	b.stopOwner = make(chan struct{})
	b.ownerDone = make(chan struct{})
	b.finished = make(chan struct{})
	in := newIntake(b.cfg.bufferSize)
	// Wake blocked Enqueue calls when there is room for a few grants, not
	// at every free slot: they would only fight over the lock.
	b.lowWater = min(max(b.cfg.bufferSize/8, 1), 4*in.grant)

	src, _ := lim.(EventSource)
	if src != nil {
		b.limListener = src.AddListener(b.emit)
	}

	b.mu.Lock()
	if b.mu.state == stateClosed {
		// Shutdown or Close came while the limiter started.
		b.mu.Unlock()
		if src != nil {
			src.RemoveListener(b.limListener)
		}
		limCancel()
		b.runCancel()
		return fmt.Errorf("%w: Shutdown or Close during Start", ErrClosed)
	}
	b.mu.state = stateRunning
	b.mu.queues = make(map[*Watcher]*queue)
	b.mu.epochs.init()
	b.mu.unlimited = lim == nil
	if lim != nil {
		b.setCapacityLocked(time.Now(), capacity)
		b.mu.maxCapacity = maxCapacity
	}
	b.intake.Store(in)
	b.started.Store(true) // Shutdown and Close read it under b.mu
	b.mu.Unlock()
	go b.loop(ctx)
	return nil
}

// Enqueue adds op to the buffer; it is EnqueueContext without a deadline.
func (b *Batcher) Enqueue(op *Operation) error {
	return b.EnqueueContext(context.Background(), op)
}

// EnqueueContext adds op to the buffer, for release to its watcher's
// ProcessBatch. If the buffer is full it blocks until there is room, ctx
// ends (it returns ctx.Err()) or Shutdown begins (ErrClosed); with
// WithErrorOnFullBuffer it returns ErrBufferFull instead.
//
// It refuses, with an error wrapping one of the package's sentinels, a nil
// operation (ErrNoOperation), one without a watcher (ErrNoWatcher) or whose
// watcher has a bad setting (ErrInvalidSetting), a negative cost
// (ErrNegativeCost), a cost above the rate limiter's MaxCapacity
// (ErrTooExpensive), an operation already enqueued (ErrImproperOrder), and
// any operation before Start (ErrImproperOrder) or after Shutdown or Close
// has begun (ErrClosed). A refused operation is left as it was, and nothing
// else changes.
//
// ctx governs only the wait for room; it has nothing to do with the
// operation's processing.
func (b *Batcher) EnqueueContext(ctx context.Context, op *Operation) error {
	if err := b.check(op); err != nil {
		b.refused.Add(1)
		return err
	}
	if !op.claim() {
		b.refused.Add(1)
		return fmt.Errorf("%w: the operation was enqueued before", ErrImproperOrder)
	}
	if err := b.enqueue(ctx, op); err != nil {
		op.unclaim()
		b.refused.Add(1)
		return err
	}
	return nil
}

// check returns why op cannot be enqueued, whatever the Batcher's state.
func (b *Batcher) check(op *Operation) error {
	switch {
	case op == nil:
		return ErrNoOperation
	case op.watcher == nil:
		return ErrNoWatcher
	case op.cost < 0: // negative, or too big for 32 bits
		if c := op.Cost(); c > math.MaxInt32 {
			return fmt.Errorf("%w: cost %d, and an operation may cost at most %d", ErrTooExpensive, c, math.MaxInt32)
		}
		return fmt.Errorf("%w: cost %d", ErrNegativeCost, op.Cost())
	}
	if err := op.watcher.seal(); err != nil {
		return err
	}
	if lim := b.cfg.limiter; lim != nil {
		if m := lim.MaxCapacity(); int(op.cost) > m {
			return fmt.Errorf("%w: cost %d, maximum capacity %d", ErrTooExpensive, op.cost, m)
		}
	}
	return nil
}

// queueLocked returns w's queue, making it if need be.
//
// The watcher remembers the last queue made for it (Watcher.home): a sweep
// looks up the queue of each operation whose watcher differs from the one
// before, which over many watchers is every operation, under the lock; the
// map costs several times the pointer. The map stays the authority: a queue
// it drops is marked gone, and a watcher shared by several Batchers falls
// back to it.
func (b *Batcher) queueLocked(w *Watcher) *queue {
	if q := w.home.Load(); q != nil && q.b == b && !q.gone {
		return q
	}
	q := b.mu.queues[w]
	if q == nil {
		q = &queue{w: w, b: b, laneAt: -1, cls: b.classLocked(w.priority, w.share)}
		b.sharedLaneLocked(q)
		b.mu.queues[w] = q
	}
	w.home.Store(q)
	return q
}

// dropQueueLocked forgets q.
func (b *Batcher) dropQueueLocked(q *queue) {
	q.gone = true
	delete(b.mu.queues, q.w)
	q.w.home.CompareAndSwap(q, nil)
}

// Pause stops all releases, of every watcher, for the pause time (see
// WithPauseTime), or until the current pause ends if that is later.
// Batches already running go on. Unlike a throttle, which pauses only its
// watcher's lane (see [Throttle]), Pause is Batcher-wide.
func (b *Batcher) Pause() {
	now := time.Now()
	b.mu.Lock()
	if b.mu.state != stateRunning && b.mu.state != stateDraining {
		b.unlock()
		return
	}
	b.pauseLocked(now, b.cfg.pauseTime)
	d := b.mu.pausedUntil.Sub(now) // a longer pause may be under way
	kick := b.wantsKickLocked()
	b.unlock()
	b.emit(Event{Kind: Paused, Duration: d})
	if kick {
		b.kickOwner()
	}
}

// pauseLocked makes sure releases stay stopped until now+d.
func (b *Batcher) pauseLocked(now time.Time, d time.Duration) {
	if until := now.Add(d); !b.mu.paused || until.After(b.mu.pausedUntil) {
		b.mu.pausedUntil = until
	}
	b.mu.paused = true
}

// Flush releases at once what the rate limiter allows, then waits until
// every operation enqueued before the call has ended (succeeded or failed),
// and returns nil; or returns ctx.Err() if ctx ends first. Releases still
// keep within capacity and the concurrency limits: under a backlog Flush
// may wait long, and what a concurrency limit holds back goes as soon as a
// slot frees. It returns ErrImproperOrder before Start; after Shutdown or
// Close has finished it returns nil at once.
func (b *Batcher) Flush(ctx context.Context) error {
	b.mu.Lock()
	switch b.mu.state {
	case stateNew:
		b.unlock()
		return fmt.Errorf("%w: Flush before Start", ErrImproperOrder)
	case stateClosed:
		b.unlock()
		return nil
	}
	b.sweepLocked() // operations enqueued before the call may be in the intake
	wait := b.mu.epochs.barrier()
	b.mu.flushWanted = true
	b.unlock()
	b.kickOwner()
	select {
	case <-wait.ch:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-wait.ch: // it ended as ctx did: the result wins
			b.unlock()
			return nil
		default:
		}
		b.mu.epochs.release(wait)
		b.unlock()
		return ctx.Err()
	}
}

// Inflight returns the number of ProcessBatch calls running. Calls that
// Close, or a Shutdown that gave up, left running (they ignored their
// cancelled context) are no longer counted.
func (b *Batcher) Inflight() int {
	b.mu.Lock()
	b.sweepLocked()
	defer b.unlock()
	return b.mu.inflight
}

// OperationsInBuffer returns the number of operations waiting for release,
// including those waiting to be retried.
func (b *Batcher) OperationsInBuffer() int {
	b.mu.Lock()
	b.sweepLocked()
	defer b.unlock()
	return b.mu.buffered
}

// NeedsCapacity returns the target: the cost of the operations waiting for
// release, which the Batcher asks its rate limiter for.
func (b *Batcher) NeedsCapacity() int {
	b.mu.Lock()
	b.sweepLocked()
	defer b.unlock()
	return b.mu.target
}

// Stats returns the Batcher's counts. An operation is counted in Succeeded
// or Failed by the time its Wait returns; Buffered and InFlight may trail a
// batch that has just completed by a moment.
func (b *Batcher) Stats() Stats {
	b.mu.Lock()
	b.sweepLocked()
	s := b.mu.stats
	s.Buffered = int64(b.mu.buffered)
	s.InFlight = int64(b.mu.outstanding - b.mu.buffered)
	b.unlock()
	s.Refused = b.refused.Load()
	s.Succeeded, s.Failed = b.succeeded.Load(), b.failed.Load()
	return s
}

// Shutdown shuts the Batcher down gracefully: it stops intake (Enqueue
// returns ErrClosed from then on, including calls blocked on a full buffer),
// releases what is buffered through the rate limiter, waits for every
// ProcessBatch call to return and for retries to finish, stops the rate
// limiter (releasing its leases, if it is a [Stopper]) and returns nil.
//
// If ctx ends first, Shutdown gives up: it cancels the running ProcessBatch
// calls, ends every operation it could not finish with an error wrapping
// ErrClosed (each reported in a [Failed] event), and returns ctx.Err(). It
// does not wait for ProcessBatch calls that ignore their context; their
// results are dropped when they return.
//
// Shutdown may be called more than once and concurrently; each call waits
// for the same drain, and returns nil once it is done. If Close (or the end
// of Start's context, or a Shutdown that gave up) ended the Batcher instead,
// Shutdown returns an error wrapping ErrClosed. Shutdown before Start marks
// the Batcher closed and returns nil.
func (b *Batcher) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	switch {
	case !b.started.Load():
		b.mu.state = stateClosed // never started: nothing to drain
		b.unlock()
		return nil
	case b.mu.state == stateRunning:
		b.mu.state = stateDraining
		close(b.draining)
		b.closeIntakeLocked()
		b.sweepLocked()
		b.wakeSpaceLocked()
		b.checkDrainedLocked()
	}
	b.unlock()
	b.kickOwner()
	select {
	case <-b.drained:
		return b.finish(ctx)
	case <-b.finished:
		return b.aborted()
	case <-ctx.Done():
		select {
		case <-b.drained: // both came: the drain wins
			return b.finish(ctx)
		default:
		}
		b.abort(fmt.Errorf("%w: Shutdown gave up: %w", ErrClosed, ctx.Err()), false)
		return ctx.Err()
	}
}

// aborted returns ErrClosed if Close, or a Shutdown that gave up, ended the
// Batcher, and nil if a Shutdown drained it.
func (b *Batcher) aborted() error {
	if b.abortedFlag.Load() {
		return fmt.Errorf("%w: closed before the drain finished", ErrClosed)
	}
	return nil
}

// Close shuts the Batcher down at once: it stops intake, cancels the running
// ProcessBatch calls without waiting for them, ends every operation not yet
// ended with ErrClosed (each reported in a [Failed] event), and stops the
// rate limiter. It returns nil. Close may follow a Shutdown that gave up.
func (b *Batcher) Close() error {
	b.mu.Lock()
	if !b.started.Load() {
		b.mu.state = stateClosed // never started: nothing to end
		b.unlock()
		return nil
	}
	b.unlock()
	b.abort(ErrClosed, false)
	return nil
}

// finish completes a graceful Shutdown once the buffer is drained.
func (b *Batcher) finish(ctx context.Context) error {
	if !b.ending.CompareAndSwap(false, true) {
		select {
		case <-b.finished:
			return b.aborted()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	close(b.stopOwner)
	<-b.ownerDone
	b.mu.Lock()
	b.mu.state = stateClosed
	idle := b.retireLocked(true)
	b.unlock()
	retire(idle)
	b.batches.Wait()
	var err error
	if s, ok := b.cfg.limiter.(Stopper); ok {
		err = s.Stop(ctx)
	}
	b.end(nil)
	return err
}

// abort ends everything at once with cause; fromOwner says it runs on the
// owner goroutine, which returns by itself afterwards.
func (b *Batcher) abort(cause error, fromOwner bool) {
	if !b.ending.CompareAndSwap(false, true) {
		if !fromOwner {
			<-b.finished
		}
		return
	}
	b.abortedFlag.Store(true)
	b.mu.Lock()
	if b.mu.state == stateRunning {
		close(b.draining)
	}
	b.closeIntakeLocked()
	b.sweepLocked()
	b.mu.state = stateClosed
	var lost []*Operation
	for _, q := range b.mu.queues {
		for q.ops.len() > 0 {
			lost = append(lost, q.ops.popFront().op)
		}
	}
	for _, r := range b.mu.retries.drain() {
		lost = append(lost, r.ops...)
	}
	for _, bt := range b.mu.running {
		bt.abandoned.Store(true)
		lost = append(lost, bt.ops...)
	}
	b.mu.running = nil
	idle := b.retireLocked(true)
	for _, q := range b.mu.queues {
		b.dropQueueLocked(q)
	}
	b.mu.sharedLanes = nil
	b.resetSchedLocked()
	b.mu.idle = nil
	b.mu.buffered, b.mu.outstanding, b.mu.target, b.mu.inflight = 0, 0, 0, 0
	clear(b.mu.touched)
	b.mu.touched = b.mu.touched[:0]
	b.wakeSpaceLocked()
	b.unlock()

	retire(idle)
	// End the operations before cancelling the running ProcessBatch calls,
	// so that they end with cause, not with what those calls return.
	b.failed.Add(int64(len(lost)))
	for _, op := range lost {
		if op.end(cause) {
			b.emit(Event{Kind: Failed, Batch: []*Operation{op}, Err: cause})
		} else {
			b.failed.Add(-1) // a completion ended it first
		}
	}
	b.runCancel()
	b.mu.Lock()
	b.mu.epochs.releaseAll()
	b.unlock()
	if !fromOwner {
		close(b.stopOwner)
		<-b.ownerDone
	}
	b.end(cause)
}

// end stops the rate limiter and the events, and marks the Batcher finished.
func (b *Batcher) end(cause error) {
	b.runCancel()
	b.limCancel()
	if src, ok := b.cfg.limiter.(EventSource); ok {
		src.RemoveListener(b.limListener)
	}
	b.mu.Lock()
	b.mu.state = stateClosed
	b.unlock()
	b.emit(Event{Kind: ShutdownDone, Err: cause})
	<-b.gate.stop()
	close(b.finished)
}

// kickOwner wakes the owner goroutine.
func (b *Batcher) kickOwner() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// wantsKickLocked reports whether the owner's timer must be set earlier.
func (b *Batcher) wantsKickLocked() bool {
	next := b.nextWakeLocked()
	return !next.IsZero() && (b.mu.armed.IsZero() || next.Before(b.mu.armed))
}

// wakeSpaceLocked wakes Enqueue calls that wait for room.
func (b *Batcher) wakeSpaceLocked() {
	if b.mu.space != nil {
		close(b.mu.space)
		b.mu.space = nil
	}
}

// checkDrainedLocked signals a waiting Shutdown once nothing is left.
func (b *Batcher) checkDrainedLocked() {
	if b.mu.state == stateDraining && b.mu.outstanding == 0 {
		b.drainOnce.Do(func() { close(b.drained) })
	}
}

var errNilFailure = errors.New("batcher: operation failed")
