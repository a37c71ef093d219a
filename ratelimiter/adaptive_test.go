package ratelimiter_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// What a Batcher relies on.
var (
	_ batcher.RateLimiter = (*ratelimiter.Adaptive)(nil)
	_ batcher.EventSource = (*ratelimiter.Adaptive)(nil)
	_ batcher.Stopper     = (*ratelimiter.Adaptive)(nil)
)

var throttled = batcher.Event{Kind: batcher.Throttled, Err: errors.New("429")}

// fakeLimiter is a wrapped limiter that records what Adaptive does with it.
type fakeLimiter struct {
	capacity, max, target atomic.Int64
	starts, stops         atomic.Int32
	stopErr               error
	listeners             batcher.Listeners
}

func newFake(capacity int) *fakeLimiter {
	f := &fakeLimiter{}
	f.capacity.Store(int64(capacity))
	f.max.Store(int64(capacity))
	return f
}

func (f *fakeLimiter) Capacity() int                          { return int(f.capacity.Load()) }
func (f *fakeLimiter) MaxCapacity() int                       { return int(f.max.Load()) }
func (f *fakeLimiter) GiveMe(target int)                      { f.target.Store(int64(target)) }
func (f *fakeLimiter) Start(context.Context) error            { f.starts.Add(1); return nil }
func (f *fakeLimiter) Stop(context.Context) error             { f.stops.Add(1); return f.stopErr }
func (f *fakeLimiter) AddListener(fn func(batcher.Event)) int { return f.listeners.AddListener(fn) }
func (f *fakeLimiter) RemoveListener(id int)                  { f.listeners.RemoveListener(id) }

// step is one row of a step table: at this time after Start, report a
// throttle and/or set the wrapped capacity, then expect Capacity to be want.
// why is the Msg of the CapacityChanged event expected if Capacity changed.
type step struct {
	at       time.Duration
	throttle bool
	inner    int // set the wrapped capacity to this, if not 0
	want     int
	why      string
}

// runSteps runs the table against a, which wraps p, inside a synctest
// bubble, and checks Capacity and the events after each row: one
// CapacityChanged event with the new value when it changed, none otherwise.
func runSteps(t *testing.T, a *ratelimiter.Adaptive, p *ratelimiter.Provisioned, steps []step) {
	t.Helper()
	var ev eventLog
	a.AddListener(ev.add)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t0 := time.Now()
	prev, seen := a.Capacity(), 0
	for _, s := range steps {
		time.Sleep(time.Until(t0.Add(s.at)))
		if s.inner != 0 {
			if err := p.SetCapacity(s.inner); err != nil {
				t.Fatal(err)
			}
		}
		if s.throttle {
			a.Observe(throttled)
		}
		synctest.Wait()
		if got := a.Capacity(); got != s.want {
			t.Errorf("at %v: Capacity() = %d, want %d", s.at, got, s.want)
		}
		evs := ev.all()[seen:]
		seen += len(evs)
		switch {
		case s.want == prev && len(evs) != 0:
			t.Errorf("at %v: events %v, want none (Capacity stayed %d)", s.at, evs, s.want)
		case s.want != prev && (len(evs) != 1 || evs[0].Kind != batcher.CapacityChanged || evs[0].Val != s.want || evs[0].Msg != s.why):
			t.Errorf("at %v: events %v, want one CapacityChanged with Val %d, Msg %q", s.at, evs, s.want, s.why)
		}
		prev = s.want
	}
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestAdaptiveSteps(t *testing.T) {
	// The defaults over a wrapped capacity of 2000: cuts of 20%, a step of
	// 10 a second (0.5%), a cooldown of 1s, a floor of 20.
	steps := []step{
		{at: ms(300), want: 2000},
		{at: ms(500), throttle: true, want: 1600, why: "throttled"},
		{at: ms(900), throttle: true, want: 1600},                    // within the cooldown: merged
		{at: ms(1400), want: 1600},                                   // a second after the first throttle: no growth, the second restarted the clock
		{at: ms(1900), want: 1610, why: "grown"},                     // a second after the last throttle
		{at: ms(2900), want: 1620, why: "grown"},                     // and every second after
		{at: ms(3200), throttle: true, want: 1296, why: "throttled"}, // 1620*0.8
		{at: ms(4199), want: 1296},
		{at: ms(4200), want: 1306, why: "grown"},
		{at: ms(4700), throttle: true, want: 1044, why: "throttled"}, // 1306*0.8 = 1044.8, rounded down
		{at: ms(5000), throttle: true, want: 1044},                   // merged
		{at: ms(5999), want: 1044},
		{at: ms(6000), want: 1054, why: "grown"},
		{at: ms(7000), want: 1064, why: "grown"},
	}
	synctest.Test(t, func(t *testing.T) {
		p := ratelimiter.NewProvisioned(2000)
		runSteps(t, ratelimiter.NewAdaptive(p), p, steps)
	})
}

func TestAdaptiveProbesPastTheLastCut(t *testing.T) {
	// Past the capacity of the last cut, each step doubles.
	steps := []step{
		{at: ms(100), throttle: true, want: 500, why: "throttled"},
		{at: ms(200), throttle: true, want: 250, why: "throttled"}, // cut from 500
		{at: ms(1200), want: 350, why: "grown"},
		{at: ms(2200), want: 450, why: "grown"},
		{at: ms(3200), want: 550, why: "probing"}, // past 500
		{at: ms(4200), want: 750, why: "probing"}, // two steps
		{at: ms(4500), throttle: true, want: 375, why: "throttled"},
		{at: ms(5500), want: 475, why: "grown"}, // one step again, up to 750
		{at: ms(6500), want: 575, why: "grown"},
		{at: ms(7500), want: 675, why: "grown"},
		{at: ms(8500), want: 775, why: "probing"}, // past 750
		{at: ms(9500), want: 975, why: "probing"},
		{at: ms(10500), want: 1000, why: "recovered"}, // four steps: the wrapped capacity
	}
	synctest.Test(t, func(t *testing.T) {
		p := ratelimiter.NewProvisioned(1000)
		a := ratelimiter.NewAdaptive(p).WithDecrease(0.5).WithCooldown(0).WithIncrease(100, time.Second)
		runSteps(t, a, p, steps)
	})
	// The steps double up to 32 at once.
	steps = []step{
		{at: ms(100), throttle: true, want: 500, why: "throttled"},
		{at: ms(200), throttle: true, want: 250, why: "throttled"},
		{at: ms(300), throttle: true, want: 125, why: "throttled"},
		{at: ms(400), throttle: true, want: 62, why: "throttled"},
		{at: ms(500), throttle: true, want: 31, why: "throttled"},
		{at: ms(600), throttle: true, want: 15, why: "throttled"},
		{at: ms(700), throttle: true, want: 10, why: "throttled"}, // the floor, cut from 15
		{at: ms(1700), want: 11, why: "grown"},
		{at: ms(2700), want: 12, why: "grown"},
		{at: ms(3700), want: 13, why: "grown"},
		{at: ms(4700), want: 14, why: "grown"},
		{at: ms(5700), want: 15, why: "grown"},   // not past 15 yet
		{at: ms(6700), want: 16, why: "probing"}, // past 15
		{at: ms(7700), want: 18, why: "probing"},
		{at: ms(8700), want: 22, why: "probing"},
		{at: ms(9700), want: 30, why: "probing"},
		{at: ms(10700), want: 46, why: "probing"},
		{at: ms(11700), want: 78, why: "probing"},  // 32 steps
		{at: ms(12700), want: 110, why: "probing"}, // and no more
	}
	synctest.Test(t, func(t *testing.T) {
		p := ratelimiter.NewProvisioned(1000)
		a := ratelimiter.NewAdaptive(p).WithDecrease(0.5).WithCooldown(0).WithIncrease(1, time.Second)
		runSteps(t, a, p, steps)
	})
}

func TestAdaptiveFloor(t *testing.T) {
	t.Run("set", func(t *testing.T) {
		steps := []step{
			{at: ms(100), throttle: true, want: 500, why: "throttled"},
			{at: ms(200), throttle: true, want: 250, why: "throttled"},
			{at: ms(300), throttle: true, want: 125, why: "throttled"},
			{at: ms(400), throttle: true, want: 100, why: "throttled"}, // 62 is below the floor
			{at: ms(500), throttle: true, want: 100},
			{at: ms(1499), want: 100},
			{at: ms(1500), want: 110, why: "probing"}, // past 100, the capacity of the last cut
			{at: ms(2500), want: 130, why: "probing"},
			{at: ms(3500), want: 170, why: "probing"},
		}
		synctest.Test(t, func(t *testing.T) {
			p := ratelimiter.NewProvisioned(1000)
			a := ratelimiter.NewAdaptive(p).WithDecrease(0.5).WithCooldown(0).WithFloor(100).WithIncrease(10, time.Second)
			runSteps(t, a, p, steps)
		})
	})
	t.Run("default", func(t *testing.T) {
		// 1% of the wrapped capacity, and never 0, however small it is.
		synctest.Test(t, func(t *testing.T) {
			for _, c := range []int{1000, 50, 1} {
				p := ratelimiter.NewProvisioned(c)
				a := ratelimiter.NewAdaptive(p).WithDecrease(0.1).WithCooldown(0).WithIncrease(1, time.Hour)
				ctx, cancel := context.WithCancel(t.Context())
				if err := a.Start(ctx); err != nil {
					t.Fatal(err)
				}
				for range 10 {
					a.Observe(throttled)
					synctest.Wait()
				}
				if got, want := a.Capacity(), max(1, c/100); got != want {
					t.Errorf("wrapped capacity %d: Capacity() = %d after 10 cuts, want the floor %d", c, got, want)
				}
				cancel()
			}
		})
	})
}

func TestAdaptiveMergesABurstOfThrottles(t *testing.T) {
	// Every operation of a batch, and several batches in flight, may report
	// the same moment's throttle: one cut.
	synctest.Test(t, func(t *testing.T) {
		p := ratelimiter.NewProvisioned(1000)
		a := ratelimiter.NewAdaptive(p)
		var ev eventLog
		a.AddListener(ev.add)
		if err := a.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() { a.Observe(throttled) })
		}
		wg.Wait()
		synctest.Wait()
		time.Sleep(ms(999)) // more within the cooldown
		for range 100 {
			wg.Go(func() { a.Observe(throttled) })
		}
		wg.Wait()
		synctest.Wait()
		if got := a.Capacity(); got != 800 {
			t.Errorf("Capacity() = %d after two bursts within the cooldown, want 800", got)
		}
		ev.wantEvents(t, 800)
	})
}

func TestAdaptiveIgnoresOtherEventsAndStoppedTimes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := ratelimiter.NewProvisioned(1000)
		a := ratelimiter.NewAdaptive(p).WithCooldown(0)
		a.Observe(throttled) // before Start: ignored
		ctx, cancel := context.WithCancel(t.Context())
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		for k := batcher.BatchReleased; k <= batcher.TimedOut; k++ {
			if k != batcher.Throttled {
				a.Observe(batcher.Event{Kind: k, Val: 1})
			}
		}
		synctest.Wait()
		if got := a.Capacity(); got != 1000 {
			t.Errorf("Capacity() = %d after other events, want 1000", got)
		}
		cancel()
		synctest.Wait()
		a.Observe(throttled) // after its ctx ended: ignored
		synctest.Wait()
		if got := a.Capacity(); got != 1000 {
			t.Errorf("Capacity() = %d after a throttle once stopped, want 1000", got)
		}
		// It may start again, and then cuts.
		if err := a.Start(t.Context()); err != nil {
			t.Fatalf("Start after its ctx ended: %v", err)
		}
		a.Observe(throttled)
		synctest.Wait()
		if got := a.Capacity(); got != 800 {
			t.Errorf("Capacity() = %d after a throttle once restarted, want 800", got)
		}
	})
}

func TestAdaptivePassesThrough(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(1000)
		f.max.Store(5000)
		f.stopErr = errors.New("lease release failed")
		a := ratelimiter.NewAdaptive(f)
		var ev eventLog
		a.AddListener(ev.add)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if n := f.starts.Load(); n != 1 {
			t.Errorf("the wrapped limiter was started %d times, want 1", n)
		}
		if err := a.Start(ctx); !errors.Is(err, batcher.ErrImproperOrder) {
			t.Errorf("Start while running = %v, want ErrImproperOrder", err)
		}
		a.GiveMe(1234)
		if got := f.target.Load(); got != 1234 {
			t.Errorf("the wrapped limiter's target = %d, want 1234", got)
		}
		a.Observe(throttled)
		synctest.Wait()
		if got := a.MaxCapacity(); got != 5000 {
			t.Errorf("MaxCapacity() = %d after a cut, want the wrapped 5000", got)
		}
		// Events other than capacity changes are passed on as they are; a
		// capacity change is reported as the capacity that results.
		f.listeners.Emit(batcher.Event{Kind: batcher.AuditFailed, Msg: "lease"})
		f.capacity.Store(2000)
		f.listeners.Emit(batcher.Event{Kind: batcher.CapacityChanged, Val: 2000})
		synctest.Wait()
		f.capacity.Store(700)
		f.listeners.Emit(batcher.Event{Kind: batcher.CapacityChanged, Val: 700})
		synctest.Wait()
		got := ev.all()
		want := []string{"capacity val=800 msg=throttled", "audit-fail msg=lease", "capacity val=700 msg=wrapped limiter"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("events = %v, want %v", got, want)
		}
		// A wrapped limiter that changes without an event is noticed at the
		// next interval.
		f.capacity.Store(600)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := ev.all(); len(got) != 4 || got[3].Val != 600 {
			t.Errorf("events = %v, want a fourth with Val 600", got)
		}
		if err := a.Stop(t.Context()); err != f.stopErr {
			t.Errorf("Stop() = %v, want the wrapped limiter's %v", err, f.stopErr)
		}
		if n := f.stops.Load(); n != 1 {
			t.Errorf("the wrapped limiter was stopped %d times, want 1", n)
		}
		// Stopped: no more listening to the wrapped limiter.
		if n := f.listeners.Len(); n != 0 {
			t.Errorf("the wrapped limiter has %d listeners after Stop, want 0", n)
		}
	})
}

func TestAdaptiveStopWithoutStopper(t *testing.T) {
	a := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(10))
	if err := a.Stop(t.Context()); err != nil {
		t.Errorf("Stop before Start = %v", err)
	}
	synctest.Test(t, func(t *testing.T) {
		a := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(10))
		if err := a.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := a.Stop(t.Context()); err != nil {
			t.Errorf("Stop = %v", err)
		}
	})
}

func TestAdaptiveRefusesBadSettings(t *testing.T) {
	cases := []struct {
		name    string
		a       *ratelimiter.Adaptive
		setting string
		value   string
	}{
		{"nil", ratelimiter.NewAdaptive(nil), "wrapped limiter", "nil"},
		{"decrease 0", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithDecrease(0), "decrease factor", "0"},
		{"decrease 1", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithDecrease(1), "decrease factor", "1"},
		{"decrease 1.5", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithDecrease(1.5), "decrease factor", "1.5"},
		{"decrease -0.5", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithDecrease(-0.5), "decrease factor", "-0.5"},
		{"step", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithIncrease(-3, time.Second), "increase step", "-3"},
		{"interval", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithIncrease(1, 0), "increase interval", "0s"},
		{"cooldown", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithCooldown(-time.Second), "cooldown", "-1s"},
		{"floor", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).WithFloor(-7), "floor", "-7"},
		{"wrapped", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(-2)), "capacity", "-2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.a.Start(t.Context())
			if !errors.Is(err, batcher.ErrInvalidSetting) {
				t.Fatalf("Start = %v, want an error wrapping ErrInvalidSetting", err)
			}
			if msg := err.Error(); !strings.Contains(msg, c.setting) || !strings.Contains(msg, c.value) {
				t.Errorf("Start = %q, want a message naming %q and %q", msg, c.setting, c.value)
			}
			// A Batcher reports the same.
			b := batcher.NewBatcher().WithRateLimiter(c.a)
			if err := b.Start(t.Context()); !errors.Is(err, batcher.ErrInvalidSetting) {
				t.Errorf("Batcher.Start = %v, want an error wrapping ErrInvalidSetting", err)
			}
			b.Close()
		})
	}
	t.Run("all at once", func(t *testing.T) {
		a := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1)).
			WithDecrease(2).WithIncrease(-1, -time.Second).WithCooldown(-1).WithFloor(-1)
		err := a.Start(t.Context())
		for _, s := range []string{"decrease factor is 2", "step is -1", "interval is -1s", "cooldown is -1ns", "floor is -1"} {
			if err == nil || !strings.Contains(err.Error(), s) {
				t.Errorf("Start = %v, want it to say %q", err, s)
			}
		}
	})
}

func TestAdaptiveWithAfterStartPanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1))
		if err := a.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		for name, f := range map[string]func(){
			"WithDecrease": func() { a.WithDecrease(0.5) },
			"WithIncrease": func() { a.WithIncrease(1, time.Second) },
			"WithCooldown": func() { a.WithCooldown(time.Second) },
			"WithFloor":    func() { a.WithFloor(1) },
		} {
			func() {
				defer func() {
					if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), name) {
						t.Errorf("%s after Start: recovered %v, want a panic naming it", name, r)
					}
				}()
				f()
			}()
		}
	})
}

func TestAdaptiveConcurrentUse(t *testing.T) {
	// Run with -race: Observe, Capacity, the wrapped limiter's changes and
	// listeners from many goroutines, in real time.
	p := ratelimiter.NewProvisioned(1000)
	a := ratelimiter.NewAdaptive(p).WithCooldown(0).WithIncrease(100, time.Millisecond)
	var events atomic.Int64
	a.AddListener(func(batcher.Event) { events.Add(1) })
	ctx, cancel := context.WithCancel(t.Context())
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				a.Observe(throttled)
				if c := a.Capacity(); c < 1 || c > 2000 {
					t.Errorf("Capacity() = %d", c)
					return
				}
				if i%50 == 0 {
					p.SetCapacity(1000 + g*100 + i)
				}
				a.RemoveListener(a.AddListener(func(batcher.Event) {}))
			}
		})
	}
	wg.Wait()
	cancel()
	if err := a.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if events.Load() == 0 {
		t.Error("no events")
	}
}

// overloaded is a datastore that accepts at most limit cost in any
// one-second window and throttles batches beyond it.
type overloaded struct {
	limit         int
	tried         releases.Log
	mu            sync.Mutex
	window        []releases.Release // accepted in the last second
	accepted      releases.Log
	throttleTimes []time.Time
}

func (d *overloaded) processBatch(_ context.Context, batch []*batcher.Operation) error {
	cost := 0
	for _, op := range batch {
		cost += op.Cost()
	}
	now := time.Now()
	d.tried.AddAt(now, cost)
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.window) > 0 && !d.window[0].At.After(now.Add(-time.Second)) {
		d.window = d.window[1:]
	}
	sum := 0
	for _, r := range d.window {
		sum += r.Cost
	}
	if sum+cost > d.limit {
		d.throttleTimes = append(d.throttleTimes, now)
		return batcher.Throttle(10*time.Millisecond, errors.New("429 too many requests"))
	}
	d.window = append(d.window, releases.Release{At: now, Cost: cost})
	d.accepted.AddAt(now, cost)
	return nil
}

func TestAdaptiveWithBatcherConvergesUnderTheDatastoresLimit(t *testing.T) {
	// The wrapped limiter grants 1000 a second; the datastore takes only
	// 600 (someone else uses the rest). The Batcher starts at 1000, is
	// throttled, and settles under 600 with rare throttles.
	synctest.Test(t, func(t *testing.T) {
		const provisioned, free, cost, run = 1000, 600, 5, 60 * time.Second
		d := &overloaded{limit: free}
		a := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(provisioned))
		b := batcher.NewBatcher().WithRateLimiter(a).WithBufferSize(20000)
		b.AddListener(a.Observe)
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		t0 := time.Now()
		w := batcher.NewWatcher(d.processBatch).WithMaxBatchSize(10)
		for i := range int(run/time.Second) * free / cost {
			if err := b.Enqueue(batcher.NewOperation(w, cost, i, true)); err != nil {
				t.Fatalf("Enqueue #%d: %v", i, err)
			}
		}
		time.Sleep(run)
		b.Close()
		synctest.Wait()

		d.mu.Lock()
		defer d.mu.Unlock()
		tried := d.tried.All()
		accepted := d.accepted.All()
		settle := 10 * time.Second
		var late []releases.Release
		for _, r := range tried {
			if !r.At.Before(t0.Add(settle)) {
				late = append(late, r)
			}
		}
		peak, at := releases.MaxWindow(late, time.Second)
		lateThrottles := 0
		for _, tt := range d.throttleTimes {
			if !tt.Before(t0.Add(settle)) {
				lateThrottles++
			}
		}
		lateBatches := len(late)
		got := releases.Between(accepted, t0.Add(settle), t0.Add(run))
		rate := float64(got) / (run - settle).Seconds()
		t.Logf("after %v: peak released window %d at %v (datastore takes %d), %d of %d batches throttled (%.2f%%), accepted %.0f/s (%.0f%% of %d); %d throttles in all",
			settle, peak, at.Sub(t0), free, lateThrottles, lateBatches, 100*float64(lateThrottles)/float64(lateBatches), rate, 100*rate/free, free, len(d.throttleTimes))
		// Released (tried) cost converges under the datastore's limit: one
		// growth step over it at most, and that second is throttled.
		if peak > free+provisioned/100+cost*10 {
			t.Errorf("peak released window after %v = %d, want at most %d + a step", settle, peak, free)
		}
		if frac := float64(lateThrottles) / float64(lateBatches); frac > 0.01 {
			t.Errorf("%.2f%% of batches throttled after %v, want under 1%%", 100*frac, settle)
		}
		if rate < 0.8*free {
			t.Errorf("accepted %.0f a second after %v, want at least 80%% of the %d the datastore takes", rate, settle, free)
		}
	})
}

// The Batcher tells Adaptive of throttles itself (it is a Learner); a
// throttle of a batch released before the last cut is an echo and does not
// cut again, even after the cooldown.
func TestAdaptiveObservesBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := ratelimiter.NewProvisioned(2000)
		a := ratelimiter.NewAdaptive(p)
		var ev eventLog
		a.AddListener(ev.add)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		observe := func(at, released time.Duration, th int) {
			time.Sleep(time.Until(t0.Add(at)))
			a.ObserveBatch(batcher.BatchOutcome{Released: t0.Add(released), Returned: time.Now(),
				Operations: 10, Cost: 100, Succeeded: 10 - th, Throttled: th})
			synctest.Wait()
		}
		want := func(c int) {
			t.Helper()
			if got := a.Capacity(); got != c {
				t.Errorf("at %v: Capacity() = %d, want %d", time.Since(t0), got, c)
			}
		}
		observe(ms(100), 0, 0) // no throttle
		want(2000)
		observe(ms(500), ms(400), 3)
		want(1600)
		observe(ms(1600), ms(450), 10) // released before the cut at 500ms: an echo
		want(1610)                     // grown at 1.5s, and not cut
		observe(ms(1700), ms(1000), 1) // released after it
		want(1288)
		if n := len(ev.all()); n != 3 {
			t.Errorf("%d events, want 3: %v", n, ev.all())
		}
	})
}

// A limiter in a Batcher learns of throttles with no wiring: a
// ProcessBatch that throttles everything over 100 units a second brings the
// capacity down from 1000.
func TestLimitersLearnFromTheBatcher(t *testing.T) {
	cases := []struct {
		name   string
		lim    func() batcher.RateLimiter
		lo, hi int // the capacity wanted after 10s
	}{
		{"Controller", func() batcher.RateLimiter { return ratelimiter.NewController(1000) }, 90, 120},
		{"Adaptive", func() batcher.RateLimiter { return ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(1000)) }, 1, 800},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				lim := tc.lim()
				var (
					mu     sync.Mutex
					window time.Time
					used   int
				)
				w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
					mu.Lock()
					defer mu.Unlock()
					now := time.Now()
					if now.Sub(window) >= time.Second {
						window, used = now.Truncate(time.Second), 0
					}
					for _, op := range batch {
						if used+op.Cost() > 100 {
							op.Throttle(window.Add(time.Second).Sub(now), errors.New("429"))
							continue
						}
						used += op.Cost()
					}
					return nil
				})
				b := batcher.NewBatcher().WithRateLimiter(lim)
				if err := b.Start(t.Context()); err != nil {
					t.Fatal(err)
				}
				for i := range 3000 {
					if err := b.Enqueue(batcher.NewOperation(w, 1, i, true)); err != nil {
						t.Fatal(err)
					}
				}
				time.Sleep(10 * time.Second)
				if got := lim.Capacity(); got < tc.lo || got > tc.hi {
					t.Errorf("capacity after 10s: %d, want %d to %d", got, tc.lo, tc.hi)
				}
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}
