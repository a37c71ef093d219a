package spool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher"
)

// Defaults of a Consumer's settings.
const (
	DefaultMaxInFlight  = 10_000
	DefaultReadBatch    = 1_000
	DefaultDrainTimeout = 30 * time.Second
)

// ConsumerStats counts what a Consumer did.
type ConsumerStats struct {
	Read     int64 // records read from the backend
	Enqueued int64 // operations enqueued to the Batcher
	Acked    int64 // records removed after their operation succeeded
	Dead     int64 // records moved to the dead-letter store
	Left     int64 // records left in the spool, for a later delivery (the Batcher closed, or Run stopped, before their operation ended)
	AckErrs  int64 // backend calls to acknowledge or dead-letter records that failed (and were tried again)
}

// A Consumer reads a Spool's records, enqueues each as an operation to a
// Batcher for a Watcher made by NewWatcher, and, once the operation has
// ended, removes the record from the spool (it succeeded) or moves it to the
// dead-letter store (it failed for good). A record whose operation did not
// end (the Batcher was closed, or Run stopped first) stays in the spool and
// is delivered again, by this backend, after a reopen.
//
// Create it with Spool.Consumer, configure it with the With* methods (before
// Run; after it they panic) and call Run once. Stats is safe for concurrent
// use.
type Consumer[T any] struct {
	s *Spool[T]
	b *batcher.Batcher
	w *Watcher[T]

	cost         func(T) int
	maxInFlight  int
	readBatch    int
	drainTimeout time.Duration
	onDead       func(DeadLetter[T])

	started  atomic.Bool
	inflight atomic.Int64
	freed    chan struct{}

	read, enqueued, acked, dead, left, ackErrs atomic.Int64
}

// Consumer returns a Consumer of the spool's records that enqueues them to
// b for w, a Watcher made by NewWatcher for records of type T. b must be
// started before Run; the Consumer does not shut it down.
func (s *Spool[T]) Consumer(b *batcher.Batcher, w *Watcher[T]) *Consumer[T] {
	return &Consumer[T]{
		s: s, b: b, w: w,
		maxInFlight:  DefaultMaxInFlight,
		readBatch:    DefaultReadBatch,
		drainTimeout: DefaultDrainTimeout,
		freed:        make(chan struct{}, 1),
	}
}

func (c *Consumer[T]) mustNotRun(method string) {
	if c.started.Load() {
		panic("spool: Consumer." + method + " called after Run")
	}
}

// WithCost sets the function that gives each record's operation its cost
// in the rate limiter's units. The default, nil, gives every record a cost
// of 1. A record whose cost the Batcher refuses (negative, or over the
// limiter's maximum) goes to the dead-letter store.
func (c *Consumer[T]) WithCost(fn func(T) int) *Consumer[T] {
	c.mustNotRun("WithCost")
	c.cost = fn
	return c
}

// WithMaxInFlight sets how many records may be read and not yet ended at
// once. The default is 10,000; n must be more than 0. Keep it at most the
// Batcher's buffer size, or Run waits on a full buffer instead.
func (c *Consumer[T]) WithMaxInFlight(n int) *Consumer[T] {
	c.mustNotRun("WithMaxInFlight")
	c.maxInFlight = n
	return c
}

// WithReadBatch sets the most records one read from the backend returns.
// The default is 1,000; n must be more than 0.
func (c *Consumer[T]) WithReadBatch(n int) *Consumer[T] {
	c.mustNotRun("WithReadBatch")
	c.readBatch = n
	return c
}

// WithDrainTimeout sets how long Run, once its ctx has ended, waits for the
// operations it enqueued to end, so that it can remove their records. What
// has not ended by then stays in the spool and is delivered again after a
// reopen. The default is 30s; 0 means not to wait; negative values are
// invalid.
func (c *Consumer[T]) WithDrainTimeout(d time.Duration) *Consumer[T] {
	c.mustNotRun("WithDrainTimeout")
	c.drainTimeout = d
	return c
}

// OnDeadLetter sets a function called with each record moved to the
// dead-letter store, after the move. It is called from the Consumer's
// goroutines, possibly concurrently, and must not block for long.
func (c *Consumer[T]) OnDeadLetter(fn func(DeadLetter[T])) *Consumer[T] {
	c.mustNotRun("OnDeadLetter")
	c.onDead = fn
	return c
}

// Stats returns the consumer's counts.
func (c *Consumer[T]) Stats() ConsumerStats {
	return ConsumerStats{
		Read: c.read.Load(), Enqueued: c.enqueued.Load(), Acked: c.acked.Load(),
		Dead: c.dead.Load(), Left: c.left.Load(), AckErrs: c.ackErrs.Load(),
	}
}

func (c *Consumer[T]) validate() error {
	var errs []error
	if c.b == nil {
		errs = append(errs, invalid("Batcher", "nil", "a started *batcher.Batcher"))
	}
	if c.w == nil {
		errs = append(errs, invalid("Watcher", "nil", "a watcher made by spool.NewWatcher"))
	}
	if c.maxInFlight <= 0 {
		errs = append(errs, invalid("MaxInFlight", c.maxInFlight, "more than 0"))
	}
	if c.readBatch <= 0 {
		errs = append(errs, invalid("ReadBatch", c.readBatch, "more than 0"))
	}
	if c.drainTimeout < 0 {
		errs = append(errs, invalid("DrainTimeout", c.drainTimeout, "0 or more"))
	}
	return errors.Join(errs...)
}

// Run reads records and enqueues their operations until ctx ends, then
// waits up to the drain timeout for the operations it enqueued to end,
// removes or dead-letters their records, and returns nil. It returns an
// error, after the same drain, if the settings are bad, the backend fails
// to read, or the Batcher refuses operations because it is closed. It may
// be called only once; no goroutine it started outlives it.
func (c *Consumer[T]) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return fmt.Errorf("spool: Consumer.Run called twice")
	}
	if err := c.validate(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	abort, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The loop stops when the Batcher shuts down, too: a Read would
	// otherwise wait on for records it could not enqueue.
	lctx, lcancel := context.WithCancelCause(ctx)
	defer lcancel(nil)
	id := c.b.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.ShutdownDone {
			lcancel(fmt.Errorf("spool: the Batcher shut down: %w", batcher.ErrClosed))
		}
	})
	defer c.b.RemoveListener(id)
	err := c.loop(lctx, &wg, abort)
	if cause := context.Cause(lctx); ctx.Err() == nil && errors.Is(cause, batcher.ErrClosed) {
		err = cause
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(c.drainTimeout)
	select {
	case <-done:
	case <-timer.C:
		cancel()
		<-done
	}
	timer.Stop()
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

func (c *Consumer[T]) loop(ctx context.Context, wg *sync.WaitGroup, abort context.Context) error {
	for {
		room := int64(c.maxInFlight) - c.inflight.Load()
		if room <= 0 {
			select {
			case <-c.freed:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		entries, err := c.s.backend.Read(ctx, int(min(room, int64(c.readBatch))))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("spool: read: %w", err)
		}
		c.read.Add(int64(len(entries)))
		c.inflight.Add(int64(len(entries)))
		ops := make([]*batcher.Operation, len(entries))
		var dead []int
		var reasons []error
		var stop error
		for i, e := range entries {
			if stop != nil {
				break
			}
			v, err := c.s.codec.Decode(e.Data)
			if err != nil {
				dead = append(dead, i)
				reasons = append(reasons, fmt.Errorf("%w: decode: %w", ErrCodec, err))
				continue
			}
			cost := 1
			if c.cost != nil {
				cost = c.cost(v)
			}
			r := &Record[T]{Value: v, ID: e.ID}
			op := &batcher.NewTypedOperation(c.w, cost, r, true).Operation
			r.Op = op
			if err := c.b.EnqueueContext(ctx, op); err != nil {
				switch {
				case ctx.Err() != nil:
					stop = ctx.Err()
				case errors.Is(err, batcher.ErrClosed):
					stop = fmt.Errorf("spool: enqueue: %w", err)
				default:
					dead = append(dead, i)
					reasons = append(reasons, fmt.Errorf("spool: the Batcher refused the record: %w", err))
				}
				continue
			}
			c.enqueued.Add(1)
			ops[i] = op
		}
		wg.Go(func() { c.settle(entries, ops, dead, reasons, abort) })
		if stop != nil {
			return stop
		}
	}
}

// settle waits for the operations of one read to end, then acknowledges
// the records that succeeded and dead-letters those that failed for good.
func (c *Consumer[T]) settle(entries []Entry, ops []*batcher.Operation, dead []int, reasons []error, abort context.Context) {
	defer func() {
		c.inflight.Add(-int64(len(entries)))
		select {
		case c.freed <- struct{}{}:
		default:
		}
	}()
	isDead := make(map[int]bool, len(dead))
	for _, i := range dead {
		isDead[i] = true
	}
	var ok []ID
	for i, op := range ops {
		if op == nil {
			if !isDead[i] {
				c.left.Add(1) // never enqueued: Run stopped
			}
			continue
		}
		select {
		case <-op.Done():
		case <-abort.Done():
			c.left.Add(int64(len(entries) - len(ok) - len(dead)))
			return
		}
		switch err := op.Err(); {
		case err == nil:
			ok = append(ok, entries[i].ID)
		case errors.Is(err, batcher.ErrClosed):
			c.left.Add(1)
		default:
			dead = append(dead, i)
			reasons = append(reasons, err)
		}
	}
	if len(ok) > 0 && c.retry(abort, func(ctx context.Context) error { return c.s.backend.Ack(ctx, ok) }) {
		c.acked.Add(int64(len(ok)))
	}
	if len(dead) == 0 {
		return
	}
	des := make([]Entry, len(dead))
	texts := make([]string, len(dead))
	for j, i := range dead {
		des[j] = entries[i]
		texts[j] = reasons[j].Error()
	}
	if !c.retry(abort, func(ctx context.Context) error { return c.s.backend.Dead(ctx, des, texts) }) {
		return
	}
	c.dead.Add(int64(len(dead)))
	if c.onDead == nil {
		return
	}
	for j, e := range des {
		d := DeadLetter[T]{From: e.ID, Data: e.Data, Reason: texts[j]}
		if v, err := c.s.codec.Decode(e.Data); err != nil {
			d.DecodeErr = fmt.Errorf("%w: decode: %w", ErrCodec, err)
		} else {
			d.Value = v
		}
		c.onDead(d)
	}
}

// retry calls fn until it succeeds, backing off from 50 ms to 2 s, and
// gives up when abort ends or the backend is closed. It reports whether fn
// succeeded.
func (c *Consumer[T]) retry(abort context.Context, fn func(ctx context.Context) error) bool {
	wait := 50 * time.Millisecond
	for {
		err := fn(abort)
		if err == nil {
			return true
		}
		c.ackErrs.Add(1)
		if errors.Is(err, ErrClosed) || abort.Err() != nil {
			return false
		}
		t := time.NewTimer(wait)
		select {
		case <-abort.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}
