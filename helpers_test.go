package batcher_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
)

// sink records what ProcessBatch receives. Its fields are guarded by mu:
// fake time moving is not a happens-before edge.
type sink struct {
	mu       sync.Mutex
	log      releases.Log
	batches  [][]*batcher.Operation
	running  int
	peak     int // most ProcessBatch calls running at once
	handle   func(ctx context.Context, batch []*batcher.Operation) error
	payloads []any
}

func (s *sink) process(ctx context.Context, batch []*batcher.Operation) error {
	cost := 0
	for _, op := range batch {
		cost += op.Cost()
	}
	s.log.Add(cost)
	s.mu.Lock()
	s.batches = append(s.batches, batch)
	for _, op := range batch {
		s.payloads = append(s.payloads, op.Payload())
	}
	s.running++
	s.peak = max(s.peak, s.running)
	h := s.handle
	s.mu.Unlock()
	var err error
	if h != nil {
		err = h(ctx, batch)
	}
	s.mu.Lock()
	s.running--
	s.mu.Unlock()
	return err
}

func (s *sink) watcher() *batcher.Watcher { return batcher.NewWatcher(s.process) }

func (s *sink) numBatches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.batches)
}

func (s *sink) ops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.payloads)
}

// starts returns when each ProcessBatch call began, after t0, in order.
func (s *sink) starts(t0 time.Time) []time.Duration {
	var out []time.Duration
	for _, r := range s.log.All() {
		out = append(out, r.At.Sub(t0))
	}
	return out
}

func (s *sink) batchSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, len(s.batches))
	for i, b := range s.batches {
		out[i] = len(b)
	}
	return out
}

// events records a Batcher's events.
type events struct {
	mu   sync.Mutex
	list []batcher.Event
}

func (e *events) add(ev batcher.Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
}

func (e *events) of(kind batcher.EventKind) []batcher.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []batcher.Event
	for _, ev := range e.list {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

func (e *events) count(kind batcher.EventKind) int { return len(e.of(kind)) }

// start starts b under t's context and shuts it down when the test ends.
func start(t *testing.T, b *batcher.Batcher) *batcher.Batcher {
	t.Helper()
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// enqueue enqueues n operations of cost each for w, failing the test on
// an error.
func enqueue(t *testing.T, b *batcher.Batcher, w *batcher.Watcher, n, cost int) []*batcher.Operation {
	t.Helper()
	ops := make([]*batcher.Operation, n)
	for i := range ops {
		ops[i] = batcher.NewOperation(w, cost, i, true)
		if err := b.Enqueue(ops[i]); err != nil {
			t.Fatalf("Enqueue #%d: %v", i, err)
		}
	}
	return ops
}

// feed keeps the buffer of b topped up with operations of cost for w from
// a goroutine until ctx ends; Enqueue blocks when the buffer is full.
func feed(ctx context.Context, b *batcher.Batcher, w *batcher.Watcher, cost int) {
	go func() {
		for i := 0; ; i++ {
			if err := b.EnqueueContext(ctx, batcher.NewOperation(w, cost, i, true)); err != nil {
				return
			}
		}
	}()
}

// checkWindows fails t if any one-second window of log holds more than
// capacity, and returns the peak.
func checkWindows(t *testing.T, log *releases.Log, capacity int) int {
	t.Helper()
	peak, at := releases.MaxWindow(log.All(), time.Second)
	if peak > capacity {
		t.Errorf("the window starting %v released %d, over the capacity %d", at.Format("15:04:05.000000"), peak, capacity)
	}
	return peak
}

// sleep waits for d, or until ctx ends, as a datastore call would.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitFor waits for op to end, for at most an hour of the bubble's fake
// time: an operation that never ends fails the test at once, where op.Wait
// with the test's context would let fake time run on until go test's own
// timeout.
func waitFor(t *testing.T, op *batcher.Operation) error {
	t.Helper()
	ctx := bounded(t)
	err := op.Wait(ctx)
	if err == context.DeadlineExceeded && ctx.Err() != nil {
		t.Fatalf("the operation had not ended after an hour (of fake time)")
	}
	return err
}

// bounded returns a context that ends an hour after now, which under
// synctest is fake time: a wait that should end, and does not, fails the
// test by name instead of hanging it until go test's timeout.
func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	t.Cleanup(cancel)
	return ctx
}

// shutdown shuts b down within an hour (of fake time), and fails the test
// if it has not returned by then.
func shutdown(t *testing.T, b *batcher.Batcher) error {
	t.Helper()
	ctx := bounded(t)
	err := b.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		t.Fatalf("Shutdown had not returned after an hour (of fake time): %v", err)
	}
	return err
}
