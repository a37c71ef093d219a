package batcher_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

func TestEventKindNamesAreTheSeeds(t *testing.T) {
	want := map[batcher.EventKind]string{
		batcher.BatchReleased: "batch", batcher.Paused: "pause", batcher.Resumed: "resume",
		batcher.ShutdownDone: "shutdown", batcher.AuditPassed: "audit-pass", batcher.AuditFailed: "audit-fail",
		batcher.AuditSkipped: "audit-skip", batcher.CapacityRequested: "request", batcher.FlushStarted: "flush-start",
		batcher.FlushDone: "flush-done", batcher.CapacityChanged: "capacity", batcher.TargetChanged: "target",
		batcher.Retrying: "retry", batcher.Throttled: "throttled", batcher.Failed: "failed", batcher.TimedOut: "timeout",
		batcher.ProvisionStarted: "provision-start", batcher.ProvisionDone: "provision-done",
		batcher.PartitionAcquired: "allocated", batcher.PartitionReleased: "released", batcher.LimiterError: "error",
		batcher.ListenerPanicked: "listener-panic",
	}
	for k, name := range want {
		if k.String() != name {
			t.Errorf("%d.String() = %q, want %q", int(k), k.String(), name)
		}
	}
	if s := batcher.EventKind(999).String(); s != "EventKind(999)" {
		t.Errorf("unknown kind String() = %q", s)
	}
	e := batcher.Event{Kind: batcher.Failed, Val: 3, Err: errors.New("boom"), Msg: "m"}
	if s := e.String(); !strings.Contains(s, "failed") || !strings.Contains(s, "boom") {
		t.Errorf("Event.String() = %q", s)
	}
}

func TestListenerMayRemoveItselfAndPause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithEmitBatch().WithPauseTime(time.Second)
		var mu sync.Mutex
		calls := 0
		var id int
		id = b.AddListener(func(e batcher.Event) {
			if e.Kind != batcher.BatchReleased {
				return
			}
			mu.Lock()
			calls++
			mu.Unlock()
			b.RemoveListener(id) // from inside an emission
			b.Pause()            // which itself emits
			_ = b.Inflight()
			_ = b.Stats()
		})
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		s := &sink{}
		w := s.watcher().WithMaxBatchSize(1)
		enqueue(t, b, w, 1, 1)
		synctest.Wait()
		enqueue(t, b, w, 3, 1)
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		if calls != 1 {
			t.Errorf("the listener ran %d times after removing itself on its first call", calls)
		}
		mu.Unlock()
		if n := s.ops(); n != 1 {
			t.Errorf("%d operations released during the pause the listener asked for", n)
		}
		if n := ev.count(batcher.Paused); n != 1 {
			t.Errorf("%d pause events", n)
		}
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		if n := s.ops(); n != 4 {
			t.Errorf("%d operations processed", n)
		}
	})
}

func TestListenerMayEnqueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A listener that reacts to failures by enqueueing a compensating
		// operation does not deadlock.
		b := batcher.NewBatcher()
		s := &sink{}
		comp := s.watcher()
		b.AddListener(func(e batcher.Event) {
			if e.Kind == batcher.Failed {
				b.Enqueue(batcher.NewOperation(comp, 1, "compensate", true))
			}
		})
		start(t, b)
		w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return errors.New("no") }).WithMaxAttempts(1)
		enqueue(t, b, w, 3, 1)
		time.Sleep(time.Second)
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		if n := s.ops(); n != 3 {
			t.Errorf("%d compensating operations, want 3", n)
		}
	})
}

func TestLimiterEventsArePassedOnUntilShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := ratelimiter.NewProvisioned(100)
		b := batcher.NewBatcher().WithRateLimiter(lim)
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		lim.SetCapacity(200)
		if e := ev.of(batcher.CapacityChanged); len(e) != 1 || e[0].Val != 200 {
			t.Fatalf("capacity events %v, want one with 200", e)
		}
		if err := shutdown(t, b); err != nil {
			t.Fatal(err)
		}
		lim.SetCapacity(300)
		if n := ev.count(batcher.CapacityChanged); n != 1 {
			t.Errorf("%d capacity events: the Batcher passed one on after Shutdown", n)
		}
	})
}

func TestEmitSwitches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		run := func(configure func(*batcher.Batcher)) *events {
			// Capacity ticks at 100ms see the 2 operations left over until
			// the flush at 250ms.
			b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(1000)).
				WithFlushInterval(250 * time.Millisecond)
			configure(b)
			ev := &events{}
			b.AddListener(ev.add)
			start(t, b)
			s := &sink{}
			enqueue(t, b, s.watcher().WithMaxBatchSize(5), 12, 1)
			time.Sleep(950 * time.Millisecond) // off the ticks
			if err := shutdown(t, b); err != nil {
				t.Fatal(err)
			}
			return ev
		}
		quiet := run(func(*batcher.Batcher) {})
		for _, k := range []batcher.EventKind{batcher.BatchReleased, batcher.FlushStarted, batcher.FlushDone, batcher.CapacityRequested} {
			if n := quiet.count(k); n != 0 {
				t.Errorf("%d %v events without asking for them", n, k)
			}
		}
		if e := quiet.of(batcher.TargetChanged); len(e) != 2 || e[0].Val != 2 || e[1].Val != 0 {
			t.Errorf("target events %v, want 2 then 0", e)
		}
		loud := run(func(b *batcher.Batcher) { b.WithEmitBatch().WithEmitFlush().WithEmitRequest() })
		batches := loud.of(batcher.BatchReleased)
		if len(batches) != 3 || len(batches[0].Batch) != 5 || batches[0].Val != 5 {
			t.Errorf("batch events %v, want 3, the first with 5 operations costing 5", batches)
		}
		fs, fd := loud.count(batcher.FlushStarted), loud.of(batcher.FlushDone)
		if fs != 3 || len(fd) != fs {
			t.Errorf("%d flush-start and %d flush-done events in 0.95 s at 250 ms, want 3", fs, len(fd))
		}
		released := 0
		for _, e := range fd {
			released += e.Val
		}
		if released != 2 {
			t.Errorf("flush-done events count %d operations released by flushes, want the 2 left over", released)
		}
		if n := loud.count(batcher.CapacityRequested); n != 9 {
			t.Errorf("%d request events in 0.95 s at 100 ms, want 9", n)
		}
	})
}

func TestNoEventsAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := batcher.NewBatcher().WithEmitBatch().WithEmitFlush()
		ev := &events{}
		b.AddListener(ev.add)
		start(t, b)
		release := make(chan struct{})
		w := batcher.NewWatcher(func(ctx context.Context, _ []*batcher.Operation) error {
			<-release // returns only after Close
			return errors.New("late")
		})
		enqueue(t, b, w, 3, 1)
		time.Sleep(150 * time.Millisecond)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		ev.mu.Lock()
		n := len(ev.list)
		last := ev.list[n-1]
		ev.mu.Unlock()
		if last.Kind != batcher.ShutdownDone {
			t.Errorf("the last event before Close returned is %v, want shutdown", last)
		}
		close(release) // the abandoned ProcessBatch returns and its result is dropped
		time.Sleep(time.Second)
		ev.mu.Lock()
		defer ev.mu.Unlock()
		if len(ev.list) != n {
			t.Errorf("events after Close returned: %v", ev.list[n:])
		}
	})
}
