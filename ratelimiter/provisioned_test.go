package ratelimiter_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// What a Batcher relies on: Provisioned is a rate limiter whose events the
// Batcher passes on.
var (
	_ batcher.RateLimiter = (*ratelimiter.Provisioned)(nil)
	_ batcher.EventSource = (*ratelimiter.Provisioned)(nil)
)

// eventLog records the events a limiter emits. It is guarded by mu:
// listeners may be called from any goroutine.
type eventLog struct {
	mu   sync.Mutex
	list []batcher.Event
}

func (l *eventLog) add(e batcher.Event) {
	l.mu.Lock()
	l.list = append(l.list, e)
	l.mu.Unlock()
}

func (l *eventLog) all() []batcher.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]batcher.Event(nil), l.list...)
}

// wantEvents fails t unless the events recorded are CapacityChanged events
// with exactly the values vals, in order.
func (l *eventLog) wantEvents(t *testing.T, vals ...int) {
	t.Helper()
	got := l.all()
	ok := len(got) == len(vals)
	for i := 0; ok && i < len(got); i++ {
		ok = got[i].Kind == batcher.CapacityChanged && got[i].Val == vals[i]
	}
	if !ok {
		t.Errorf("events = %v, want CapacityChanged with Val %v", got, vals)
	}
}

// wantInvalidSetting fails t unless err wraps batcher.ErrInvalidSetting and
// its message names the setting and the value.
func wantInvalidSetting(t *testing.T, what string, err error, setting string, value int) {
	t.Helper()
	if !errors.Is(err, batcher.ErrInvalidSetting) {
		t.Errorf("%s = %v, want an error wrapping batcher.ErrInvalidSetting", what, err)
		return
	}
	msg := err.Error()
	if !strings.Contains(strings.ToLower(msg), setting) || !strings.Contains(msg, strconv.Itoa(value)) {
		t.Errorf("%s = %q, want a message that names the %s and the value %d", what, msg, setting, value)
	}
}

func wantCapacity(t *testing.T, p *ratelimiter.Provisioned, want int) {
	t.Helper()
	if got := p.Capacity(); got != want {
		t.Errorf("Capacity() = %d, want %d", got, want)
	}
	if got := p.MaxCapacity(); got != want {
		t.Errorf("MaxCapacity() = %d, want %d", got, want)
	}
}

func TestProvisionedCapacity(t *testing.T) {
	for _, c := range []int{0, 1, 7, 1000, 20000} {
		t.Run(strconv.Itoa(c), func(t *testing.T) {
			p := ratelimiter.NewProvisioned(c)
			if err := p.Start(t.Context()); err != nil {
				t.Fatalf("Start with capacity %d: %v", c, err)
			}
			wantCapacity(t, p, c)
			// The target does not change a provisioned capacity.
			p.GiveMe(10 * c)
			p.GiveMe(0)
			wantCapacity(t, p, c)
		})
	}
}

func TestProvisionedSetCapacity(t *testing.T) {
	p := ratelimiter.NewProvisioned(100)
	var ev eventLog
	p.AddListener(ev.add)

	if err := p.SetCapacity(250); err != nil {
		t.Fatalf("SetCapacity(250): %v", err)
	}
	wantCapacity(t, p, 250)
	ev.wantEvents(t, 250)

	// The same value again changes nothing, and says nothing.
	if err := p.SetCapacity(250); err != nil {
		t.Fatalf("SetCapacity(250) again: %v", err)
	}
	wantCapacity(t, p, 250)
	ev.wantEvents(t, 250)

	// Down, to 0 (valid: nothing is released until it rises), and back.
	for _, c := range []int{40, 0, 100} {
		if err := p.SetCapacity(c); err != nil {
			t.Fatalf("SetCapacity(%d): %v", c, err)
		}
		wantCapacity(t, p, c)
	}
	ev.wantEvents(t, 250, 40, 0, 100)
	if err := p.Start(t.Context()); err != nil {
		t.Errorf("Start after SetCapacity: %v", err)
	}
}

func TestProvisionedRefusesNegativeCapacity(t *testing.T) {
	t.Run("SetCapacity", func(t *testing.T) {
		p := ratelimiter.NewProvisioned(100)
		var ev eventLog
		p.AddListener(ev.add)
		for _, c := range []int{-1, -250} {
			err := p.SetCapacity(c)
			wantInvalidSetting(t, "SetCapacity("+strconv.Itoa(c)+")", err, "capacity", c)
		}
		// A refused value changes nothing and emits nothing.
		wantCapacity(t, p, 100)
		ev.wantEvents(t)
	})
	t.Run("Start", func(t *testing.T) {
		for _, c := range []int{-1, -250} {
			p := ratelimiter.NewProvisioned(c)
			err := p.Start(t.Context())
			wantInvalidSetting(t, "Start with capacity "+strconv.Itoa(c), err, "capacity", c)
			// A Batcher reports it from its own Start.
			b := batcher.NewBatcher().WithRateLimiter(p)
			err = b.Start(t.Context())
			wantInvalidSetting(t, "Batcher.Start with capacity "+strconv.Itoa(c), err, "capacity", c)
			b.Close()
		}
	})
	t.Run("SetCapacity repairs it", func(t *testing.T) {
		p := ratelimiter.NewProvisioned(-5)
		if err := p.SetCapacity(5); err != nil {
			t.Fatalf("SetCapacity(5): %v", err)
		}
		if err := p.Start(t.Context()); err != nil {
			t.Errorf("Start after SetCapacity(5): %v", err)
		}
		wantCapacity(t, p, 5)
	})
}

func TestProvisionedListeners(t *testing.T) {
	p := ratelimiter.NewProvisioned(1)
	var a, b eventLog
	ida := p.AddListener(a.add)
	idb := p.AddListener(b.add)
	if ida == idb {
		t.Fatalf("AddListener returned the same id %d twice", ida)
	}
	p.SetCapacity(2)
	p.RemoveListener(ida)
	p.SetCapacity(3)
	p.RemoveListener(ida) // removing twice does nothing
	p.RemoveListener(idb)
	p.SetCapacity(4)
	a.wantEvents(t, 2)
	b.wantEvents(t, 2, 3)

	// A listener may remove itself.
	var c eventLog
	var id int
	id = p.AddListener(func(e batcher.Event) {
		c.add(e)
		p.RemoveListener(id)
	})
	p.SetCapacity(5)
	p.SetCapacity(6)
	c.wantEvents(t, 5)
}

func TestProvisionedConcurrentUse(t *testing.T) {
	// Run with -race: SetCapacity, Capacity, MaxCapacity and the listeners
	// from many goroutines at once.
	const n = 1000
	p := ratelimiter.NewProvisioned(0)
	var ev eventLog
	p.AddListener(ev.add)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range n / 4 {
				if err := p.SetCapacity(g*n/4 + i + 1); err != nil {
					t.Errorf("SetCapacity: %v", err)
					return
				}
			}
		})
		wg.Go(func() {
			for range n {
				if c := p.Capacity(); c < 0 || c > n {
					t.Errorf("Capacity() = %d, never set", c)
					return
				}
				if c := p.MaxCapacity(); c < 0 || c > n {
					t.Errorf("MaxCapacity() = %d, never set", c)
					return
				}
			}
		})
		wg.Go(func() {
			for range 100 {
				p.RemoveListener(p.AddListener(func(batcher.Event) {}))
			}
		})
	}
	wg.Wait()
	// Every call set a new value, so each emitted one event.
	got := ev.all()
	if len(got) != n {
		t.Errorf("%d events for %d changes", len(got), n)
	}
	seen := make(map[int]bool)
	for _, e := range got {
		if e.Kind != batcher.CapacityChanged || e.Val < 1 || e.Val > n || seen[e.Val] {
			t.Errorf("unexpected event %v", e)
		}
		seen[e.Val] = true
	}
	if c := p.Capacity(); !seen[c] {
		t.Errorf("Capacity() = %d after the changes, a value never announced", c)
	}
}

// processor records the time and cost of each batch in log; it returns at
// once.
func processor(log *releases.Log) func(context.Context, []*batcher.Operation) error {
	return func(_ context.Context, batch []*batcher.Operation) error {
		cost := 0
		for _, op := range batch {
			cost += op.Cost()
		}
		log.Add(cost)
		return nil
	}
}

// runBacklog runs a Batcher with limiter lim on a backlog of operations
// costing cost each, for run of fake time, and returns what it released and
// when it started. It must be called inside a synctest bubble.
func runBacklog(t *testing.T, lim batcher.RateLimiter, capacity, cost, batchSize int, run time.Duration) ([]releases.Release, time.Time) {
	t.Helper()
	var log releases.Log
	b := batcher.NewBatcher().WithRateLimiter(lim)
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer b.Close()
	t0 := time.Now()
	w := batcher.NewWatcher(processor(&log)).WithMaxBatchSize(batchSize)
	// A backlog of one and a half times what the run can release.
	n := int(run/time.Second) * capacity / cost * 3 / 2
	for i := range n {
		if err := b.Enqueue(batcher.NewOperation(w, cost, i, true)); err != nil {
			t.Fatalf("Enqueue #%d: %v", i, err)
		}
	}
	time.Sleep(run)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	synctest.Wait()
	rs := log.All()
	if len(rs) == 0 {
		t.Fatal("nothing was released")
	}
	return rs, t0
}

// checkBacklog fails t if any one-second window of rs holds more than
// capacity, or if any whole second of [t0+2s, t0+run) released less than 99%
// of it.
func checkBacklog(t *testing.T, rs []releases.Release, t0 time.Time, run time.Duration, capacity int) {
	t.Helper()
	if peak, at := releases.MaxWindow(rs, time.Second); peak > capacity {
		t.Errorf("the second from %v released %d, over the capacity %d", at.Sub(t0), peak, capacity)
	}
	for s := 2 * time.Second; s+time.Second <= run; s += time.Second {
		from := t0.Add(s)
		if got := releases.Between(rs, from, from.Add(time.Second)); float64(got) < 0.99*float64(capacity) {
			t.Errorf("second %v..%v released %d, under 99%% of the capacity %d", s, s+time.Second, got, capacity)
		}
	}
}

func TestProvisionedWithBatcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const capacity, run = 1000, 10 * time.Second
		rs, t0 := runBacklog(t, ratelimiter.NewProvisioned(capacity), capacity, 10, 20, run)
		checkBacklog(t, rs, t0, run, capacity)
	})
}

func TestProvisionedWithBatcherAfterSetCapacity(t *testing.T) {
	// The Batcher follows SetCapacity: after a drop it releases no more than
	// the new capacity in any second that begins once the last second's
	// releases fit under it, and still uses the new capacity fully.
	synctest.Test(t, func(t *testing.T) {
		const high, low = 1000, 300
		p := ratelimiter.NewProvisioned(high)
		var log releases.Log
		b := batcher.NewBatcher().WithRateLimiter(p)
		var ev eventLog
		b.AddListener(ev.add)
		if err := b.Start(t.Context()); err != nil {
			t.Fatalf("Start: %v", err)
		}
		defer b.Close()
		w := batcher.NewWatcher(processor(&log)).WithMaxBatchSize(10)
		for i := range 1500 {
			if err := b.Enqueue(batcher.NewOperation(w, 10, i, true)); err != nil {
				t.Fatalf("Enqueue #%d: %v", i, err)
			}
		}
		time.Sleep(3 * time.Second)
		t1 := time.Now()
		if err := p.SetCapacity(low); err != nil {
			t.Fatal(err)
		}
		time.Sleep(8 * time.Second)
		b.Close()
		synctest.Wait()

		rs := log.All()
		var after []releases.Release
		for _, r := range rs {
			if !r.At.Before(t1) {
				after = append(after, r)
			}
		}
		// The Batcher passed the limiter's event on.
		found := false
		for _, e := range ev.all() {
			found = found || (e.Kind == batcher.CapacityChanged && e.Val == low)
		}
		if !found {
			t.Errorf("the Batcher's listener got no CapacityChanged event with Val %d", low)
		}
		// Once the second before the change has passed, every window holds
		// at most the new capacity.
		var late []releases.Release
		for _, r := range after {
			if !r.At.Before(t1.Add(time.Second)) {
				late = append(late, r)
			}
		}
		if peak, at := releases.MaxWindow(late, time.Second); peak > low {
			t.Errorf("the second from %v after the change released %d, over the new capacity %d", at.Sub(t1), peak, low)
		}
		checkBacklog(t, after, t1, 8*time.Second, low)
	})
}
