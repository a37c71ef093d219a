package ratelimiter_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// What a Batcher relies on.
var (
	_ batcher.RateLimiter = (*ratelimiter.Controller)(nil)
	_ batcher.Learner     = (*ratelimiter.Controller)(nil)
	_ batcher.EventSource = (*ratelimiter.Controller)(nil)
	_ batcher.Stopper     = (*ratelimiter.Controller)(nil)
	_ batcher.Learner     = (*ratelimiter.Adaptive)(nil)
)

// A ctlStep is one row of a Controller step table: at the time at after
// Start, the test gives the demand (if set), then the outcome (if set), and
// then checks the capacity (if want is set). Ticks come every 250ms (a
// window of 1s), so the rows avoid those moments.
type ctlStep struct {
	at     time.Duration
	demand int                   // GiveMe, if not 0
	o      *batcher.BatchOutcome // Released and Returned are durations after Start, in ns
	want   int                   // the capacity after, if not 0
	full   bool                  // then a batch released now serves the capacity: it is used
}

// ok is an outcome of n operations, all served, costing cost.
func ok(released time.Duration, n, cost int) *batcher.BatchOutcome {
	return &batcher.BatchOutcome{Released: time.Unix(0, int64(released)), Operations: n, Cost: cost, Succeeded: n}
}

// thr is an outcome of n operations, of which th were throttled with
// the retry-after ra; the others succeeded, and cost is their cost.
func thr(released time.Duration, n, th, cost int, ra time.Duration) *batcher.BatchOutcome {
	return &batcher.BatchOutcome{Released: time.Unix(0, int64(released)), Operations: n, Cost: cost,
		Succeeded: n - th, Throttled: th, RetryAfter: ra}
}

// runCtl runs the table against c in a synctest bubble and returns the
// events c emitted, as "Val Msg" (and the Duration, if any).
func runCtl(t *testing.T, c *ratelimiter.Controller, steps []ctlStep) []string {
	t.Helper()
	var (
		mu     sync.Mutex
		events []string
	)
	synctest.Test(t, func(t *testing.T) {
		c.AddListener(func(e batcher.Event) {
			mu.Lock()
			defer mu.Unlock()
			s := fmt.Sprintf("%d %s", e.Val, e.Msg)
			if e.Duration != 0 {
				s += " " + e.Duration.String()
			}
			events = append(events, s)
		})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		t0 := time.Now()
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		for i, s := range steps {
			time.Sleep(time.Until(t0.Add(s.at)))
			if s.demand != 0 {
				c.GiveMe(s.demand)
			}
			if s.o != nil {
				o := *s.o
				o.Released = t0.Add(time.Duration(o.Released.UnixNano()))
				o.Returned = time.Now()
				c.ObserveBatch(o)
			}
			synctest.Wait()
			if s.want != 0 {
				if got := c.Capacity(); got != s.want {
					t.Errorf("row %d, at %v: capacity %d, want %d", i, s.at, got, s.want)
				}
			}
			if s.full {
				now := time.Now()
				c.ObserveBatch(batcher.BatchOutcome{Released: now, Returned: now, Operations: 1, Succeeded: 1, Cost: c.Capacity()})
			}
		}
		if err := c.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	mu.Lock()
	defer mu.Unlock()
	return events
}

const msec = time.Millisecond

// Limited at 20 times what the datastore serves, the Controller cuts, at
// the first throttle, to 95% of what was served in the datastore's window
// (which the retry-after says ends 800ms later); holds for the window;
// recovers to the knee in halves; then probes with steps that grow 1.5
// times a tick from the first (the cut came from 20 times the knee, which
// is then only a lower bound of what the datastore serves), as long as the
// capacity is used. Echoes of batches released
// before the cut do not cut again.
func TestControllerCutsToWhatWasServedThenProbes(t *testing.T) {
	c := ratelimiter.NewController(10000).WithInitial(10000)
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20, want: 10000},
		{at: 100 * msec, o: ok(0, 100, 500)},
		{at: 200 * msec, o: thr(100*msec, 100, 100, 0, 800*msec), want: 475}, // at once: K 500, L 0.95 K; hold to 1.2s
		{at: 260 * msec, want: 475},                                          // settled at the tick: the same
		{at: 400 * msec, o: thr(200*msec, 10, 10, 0, 0)},                     // an echo: released before the cut
		{at: 1100 * msec, o: thr(400*msec, 10, 10, 0, 0)},                    // one too (within a tick of it)
		{at: 1240 * msec, want: 475, full: true},                             // held for a window
		{at: 1260 * msec, want: 487, full: true},                             // 475 + (500-475)/2 = 487.5
		{at: 1510 * msec, want: 493, full: true},                             // 493.75
		{at: 1760 * msec, want: 496, full: true},                             // 496.875
		{at: 2010 * msec, want: 498, full: true},                             // 498.4375
		{at: 2260 * msec, want: 499, full: true},                             // 499.6875 (the least step, 1.25)
		{at: 2510 * msec, want: 500, full: true},                             // the knee
		{at: 2760 * msec, want: 501, full: true},                             // + 1.25 (0.25% of K)
		{at: 3010 * msec, want: 503, full: true},                             // + 1.875: no flat steps, the cut came from 20 K
		{at: 3260 * msec, want: 505, full: true},                             // + 2.8125
		{at: 3510 * msec, want: 510},                                         // + 4.21875
		{at: 3760 * msec, want: 516},                                         // + 6.328125 (the window served 1509)
		{at: 4010 * msec, want: 525},                                         // + 9.49 (the window served 1008)
		{at: 4260 * msec, want: 540},                                         // + 14.24 (505: over 80% of 525.97)
		{at: 4760 * msec, want: 540},                                         // nothing served since 3.26s: no growth
	})
	want := []string{"475 throttled 1s", "487 recovering", "493 recovering", "496 recovering", "498 recovering",
		"499 recovering", "500 recovering", "501 probing", "503 probing", "505 probing", "510 probing", "516 probing",
		"525 probing", "540 probing"}
	if !slices.Equal(events, want) {
		t.Errorf("events\n got %q\nwant %q", events, want)
	}
	if k := c.Knee(); k != 500 {
		t.Errorf("Knee = %d, want 500", k)
	}
	if th, n := c.Throttled(); th != 120 || n != 230 {
		t.Errorf("Throttled = %d of %d, want 120 of 230", th, n)
	}
}

// Until the first throttle, the capacity starts at 1/32 of the ceiling and
// doubles at each tick that saw a batch released since the last doubling
// succeed, if the demand is there.
func TestControllerStartsSlowly(t *testing.T) {
	c := ratelimiter.NewController(10000)
	if got := c.Capacity(); got != 312 {
		t.Errorf("Capacity before Start: %d, want 312", got)
	}
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20, want: 312},
		{at: 260 * msec, want: 312},                 // no news: no growth
		{at: 300 * msec, o: ok(0, 10, 100)},         //
		{at: 510 * msec, want: 624},                 // 312 doubled
		{at: 600 * msec, o: ok(500*msec, 10, 100)},  //
		{at: 700 * msec, demand: 600},               // demand under the capacity
		{at: 760 * msec, want: 624},                 // no growth
		{at: 800 * msec, demand: 1 << 20},           //
		{at: 900 * msec, o: ok(700*msec, 10, 0)},    // (a success that cost nothing is news too)
		{at: 1010 * msec, want: 1248},               //
		{at: 1100 * msec, o: ok(900*msec, 10, 200)}, // released before the last doubling: no news
		{at: 1260 * msec, want: 1248},
		{at: 1300 * msec, o: ok(1010*msec, 10, 0)},          //
		{at: 1510 * msec, want: 2496},                       //
		{at: 1600 * msec, o: thr(1000*msec, 10, 5, 300, 0)}, // 150 served
		{at: 1610 * msec, want: 427},                        // at once: 0.95 * 450, answered in the second to 1.6s (released: 350)
		{at: 1760 * msec, want: 427},                        // settled at the tick: the same
	})
	want := []string{"624 starting", "1248 starting", "2496 starting", "427 throttled 1s"}
	if !slices.Equal(events, want) {
		t.Errorf("events\n got %q\nwant %q", events, want)
	}
}

// A throttle cuts at once, on what was served so far; the ticks that
// follow settle the cut on what the window served, with the answers still
// on their way when the throttle came, until they have all come (a window
// and the longest a batch took, or a second window if that is more, after
// the window began), and only ever raise it.
func TestControllerSettlesACutAtTheTick(t *testing.T) {
	c := ratelimiter.NewController(1000).WithInitial(1000)
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20},
		{at: 1000 * msec, o: ok(200*msec, 10, 200)},                   // answers take 800ms
		{at: 1150 * msec, o: thr(1050*msec, 10, 10, 0, 0), want: 190}, // 0.95 * 200 (released from 150ms)
		{at: 1200 * msec, o: ok(1060*msec, 10, 300), want: 190},       // released before the throttle, answered after it
		{at: 1260 * msec, want: 475},                                  // settled: 0.95 * 500
		{at: 1600 * msec, o: ok(1100*msec, 10, 300)},                  // another answer on its way
		{at: 1760 * msec, want: 760},                                  // settled: 0.95 * 800
		{at: 2240 * msec, want: 760, full: true},                      // held from the cut at 1.15s (not from the tick)
		{at: 2260 * msec, want: 780, full: true},                      // recovering toward 800; the last tick that settles
		{at: 2300 * msec, o: ok(1140*msec, 10, 100)},                  // too late: 150ms + 1s + 1s (800ms is less) has passed
		{at: 2510 * msec, want: 790},                                  // recovering toward 800, not 900
	})
	want := []string{"190 throttled 1s", "475 throttled 1s", "760 throttled 1s", "780 recovering", "790 recovering"}
	if !slices.Equal(events, want) {
		t.Errorf("events\n got %q\nwant %q", events, want)
	}
}

// A retry-after shorter than the window says when the datastore's window
// ends, and so where it began: the cut counts what was released since then.
func TestControllerTakesTheRetryAfterAsTheDatastoresWindow(t *testing.T) {
	c := ratelimiter.NewController(1000).WithInitial(1000)
	runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20},
		{at: 450 * msec, o: ok(400*msec, 10, 400)},                           // the datastore's previous window
		{at: 750 * msec, o: ok(700*msec, 10, 300)},                           // its window from 700ms
		{at: 1200 * msec, o: thr(1100*msec, 10, 10, 0, 500*msec), want: 285}, // it ends at 1.7s: K 300, not 700
	})
}

// A retry-after of zero or less says nothing: the window is the last one,
// and the hold a window.
func TestControllerIgnoresANegativeRetryAfter(t *testing.T) {
	c := ratelimiter.NewController(1000).WithInitial(1000)
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20},
		{at: 450 * msec, o: ok(400*msec, 10, 400)},
		{at: 1200 * msec, o: thr(1100*msec, 10, 10, 0, -5*time.Second), want: 380},
	})
	if want := []string{"380 throttled 1s"}; !slices.Equal(events, want) {
		t.Errorf("events %q, want %q", events, want)
	}
}

// Throttles of many batches and operations within a window are one cut;
// a throttle from a batch released after the cut, within its window, cuts
// again only once the window has passed, on what went out after the cut,
// at its rate over a whole window (half a window's 180 is 360 a window:
// not a cut to 171, as before). A probe that draws a throttle cuts to 95%
// of what was served, and the step starts small again.
func TestControllerCutsOncePerWindow(t *testing.T) {
	c := ratelimiter.NewController(1000).WithFloor(10).WithInitial(1000)
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20},
		{at: 100 * msec, o: ok(0, 10, 300)},
		{at: 150 * msec, o: thr(50*msec, 10, 5, 300, 0)}, // 150 served (half of the cost)
		{at: 160 * msec, o: thr(60*msec, 10, 10, 0, 0)},
		{at: 170 * msec, o: thr(70*msec, 10, 3, 0, 0)},
		{at: 260 * msec, want: 427}, // K 450: 0.95 K = 427.5
		{at: 600 * msec, o: ok(500*msec, 10, 100)},
		{at: 800 * msec, o: ok(700*msec, 10, 80)},
		{at: 900 * msec, o: thr(800*msec, 10, 1, 0, 0)},   // released after the cut: real, but within its window
		{at: 1010 * msec, want: 427},                      // tick at 1s: not yet a window since the cut (150ms)
		{at: 1260 * msec, want: 342},                      // tick at 1.25s: 180 served in the 500ms from the echo (400ms) to the window's end: 360 a window, K 360, L 342
		{at: 2240 * msec, want: 342, full: true},          // held
		{at: 2260 * msec, want: 351},                      // 342 + max(9, 0.9)
		{at: 2300 * msec, o: thr(2000*msec, 10, 1, 0, 0)}, // a window since the last cut: a cut at once
		{at: 2310 * msec, want: 324},                      // the last second served 342: 324.9
	})
	want := []string{"427 throttled 1s", "342 throttled 1s", "351 recovering", "324 throttled 1s"}
	if !slices.Equal(events, want) {
		t.Errorf("events\n got %q\nwant %q", events, want)
	}
}

// Growth waits for the retry-after (at most MaxControllerHold), for demand
// at least the capacity, for the capacity to be used, and stops at the
// ceiling; past the knee, its steps stay 0.25% of the knee for 8 ticks,
// then grow 1.5 times a tick (at once after a cut from more than twice the
// knee).
func TestControllerHoldsAndStopsAtTheCeiling(t *testing.T) {
	c := ratelimiter.NewController(110).WithInitial(110).WithFloor(50)
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1000},
		{at: 100 * msec, o: ok(0, 10, 100)},
		{at: 200 * msec, o: thr(0, 10, 10, 0, 3*time.Second)},
		{at: 260 * msec, want: 95},               // K 100; hold 3s, the retry-after
		{at: 3240 * msec, want: 95, full: true},  // held
		{at: 3260 * msec, want: 97},              // 97.5
		{at: 3300 * msec, demand: 90},            // demand under the capacity: no growth
		{at: 4010 * msec, want: 97},              //
		{at: 4100 * msec, demand: 1000},          // the capacity not used in the last window: no growth
		{at: 4260 * msec, want: 97, full: true},  //
		{at: 4510 * msec, want: 98, full: true},  // 98.75
		{at: 4760 * msec, want: 99, full: true},  // 99.375
		{at: 5010 * msec, want: 99, full: true},  // 99.6875
		{at: 5260 * msec, want: 99, full: true},  // 99.9375 (least step 0.25)
		{at: 5510 * msec, want: 100, full: true}, // the knee
		{at: 6510 * msec, want: 101, full: true}, // probing, flat: 0.25 a tick (0.0025 of the knee)
		{at: 7510 * msec, want: 102, full: true}, // 8 flat steps
		{at: 8510 * msec, want: 105, full: true}, // then growing: 102.375, 102.94, 103.78, 105.05
		{at: 9010 * msec, want: 109, full: true}, // 106.95, 109.8
		{at: 9260 * msec, want: 110},             // 114.1: the ceiling
		{at: 11000 * msec, want: 110},            // and stays there
		{at: 11100 * msec, o: thr(11000*msec, 10, 10, 0, 2*time.Hour)},
		{at: 11260 * msec, want: 50},             // the floor: nothing served in the last second
		{at: 71090 * msec, want: 50, full: true}, // an absurd retry-after holds for MaxControllerHold only
		{at: 71260 * msec, want: 50, full: true}, // 50.125: the first probe step from the floor is 0.0025 of it
		{at: 71510 * msec, want: 50, full: true}, // 50.3125: the cut came from far over the knee (0): no flat steps
		{at: 71760 * msec, want: 50, full: true}, // 50.59
		{at: 72010 * msec, want: 51},             // 51.02
	})
	if len(events) == 0 || events[0] != "95 throttled 3s" {
		t.Errorf("events %q, want the first to be a cut to 95 holding 3s", events)
	}
	if !slices.Contains(events, "50 throttled 1m0s") {
		t.Errorf("events %q, want a cut to 50 holding 1m0s", events)
	}
	for _, e := range events {
		var v int
		fmt.Sscan(e, &v)
		if v > 110 {
			t.Errorf("event %q above the ceiling", e)
		}
	}
}

func TestControllerSettings(t *testing.T) {
	cases := []struct {
		name string
		c    *ratelimiter.Controller
		want []string // in the error; none: valid
	}{
		{"defaults", ratelimiter.NewController(10), nil},
		{"zero ceiling", ratelimiter.NewController(0), []string{"ceiling is 0"}},
		{"all bad", ratelimiter.NewController(100).WithFloor(101).WithWindow(5 * msec).WithBackoff(1),
			[]string{"floor is 101", "window is 5ms", "backoff is 1"}},
		{"negative", ratelimiter.NewController(100).WithFloor(-1).WithBackoff(-0.1),
			[]string{"floor is -1", "backoff is -0.1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			err := tc.c.Start(ctx)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if err := tc.c.Start(ctx); !errors.Is(err, batcher.ErrImproperOrder) {
					t.Errorf("second Start: %v, want ErrImproperOrder", err)
				}
				return
			}
			if !errors.Is(err, batcher.ErrInvalidSetting) {
				t.Fatalf("Start: %v, want ErrInvalidSetting", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "WithFloor") {
				t.Errorf("WithFloor after Start: panic %v, want one naming it", r)
			}
		}()
		c := ratelimiter.NewController(10)
		if err := c.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		c.WithFloor(1)
	}()
}

// A throttle that only some lanes see (a hot partition with its own
// budget) does not cut the capacity: the lane's pause is its control. Once
// the lanes throttled in the window are more than half of those that
// served in it and carried more than half of what it served, the capacity
// is cut. A watcher without a lane is taken as the whole datastore's
// budget.
func TestControllerCutsOnlyOnThrottlesOfMostLanes(t *testing.T) {
	hot, cold1, cold2 := batcher.NewLane(), batcher.NewLane(), batcher.NewLane()
	in := func(l *batcher.Lane, o *batcher.BatchOutcome) *batcher.BatchOutcome {
		o.Watcher = batcher.NewWatcherFor(nil).WithLane(l)
		return o
	}
	c := ratelimiter.NewController(1000).WithInitial(1000)
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20},
		{at: 100 * msec, o: in(hot, ok(50*msec, 10, 200))},
		{at: 110 * msec, o: in(cold1, ok(60*msec, 10, 200))},
		{at: 120 * msec, o: in(cold2, ok(70*msec, 10, 400))},
		{at: 200 * msec, o: in(hot, thr(150*msec, 10, 10, 0, 0)), want: 1000},   // the hot lane: 200 of 800
		{at: 300 * msec, o: in(cold1, thr(250*msec, 10, 10, 0, 0)), want: 1000}, // and one cold: 400 of 800, not more than half
		{at: 400 * msec, o: in(cold2, thr(350*msec, 10, 10, 0, 0)), want: 760},  // all three: 0.95 * 800
		{at: 2500 * msec, o: in(hot, ok(2450*msec, 10, 100))},
		{at: 2510 * msec, o: in(cold1, ok(2460*msec, 10, 300))},
		{at: 2600 * msec, o: thr(2550*msec, 10, 10, 0, 0), want: 380}, // a watcher of no lane: 0.95 * 400
		{at: 3910 * msec, o: in(hot, ok(3900*msec, 10, 600))},
		{at: 3920 * msec, o: in(cold1, ok(3905*msec, 10, 100))},
		{at: 3930 * msec, o: in(cold2, ok(3910*msec, 10, 100))},
		{at: 4010 * msec, want: 390},                                             // recovering: 380 + (400-380)/2
		{at: 4110 * msec, o: in(hot, thr(4050*msec, 10, 10, 0, 0)), want: 390},   // 600 of 800, but one lane of three
		{at: 4160 * msec, o: in(cold1, thr(4100*msec, 10, 10, 0, 0)), want: 370}, // two of three, 700 of 800: 0.95 * 390
	})
	want := []string{"760 throttled 1s", "380 throttled 1s", "390 recovering", "370 throttled 1s"}
	if !slices.Equal(events, want) {
		t.Errorf("events\n got %q\nwant %q", events, want)
	}
}

// A cut is settled on the answers of the datastore's window for a window
// after its end at least, even when the batches seen lately took less: a
// stalled process holds answers back longer than the longest batch it has
// seen.
func TestControllerSettlesOnAnswersHeldBack(t *testing.T) {
	c := ratelimiter.NewController(1000).WithInitial(1000)
	events := runCtl(t, c, []ctlStep{
		{at: 10 * msec, demand: 1 << 20},
		{at: 210 * msec, o: ok(200*msec, 10, 300)},                    // answers take 10ms
		{at: 1120 * msec, o: ok(1110*msec, 10, 10)},                   //
		{at: 1150 * msec, o: thr(1140*msec, 10, 10, 0, 0), want: 294}, // 0.95 * 310 (the window from 150ms)
		{at: 2100 * msec, o: ok(1120*msec, 10, 400)},                  // held back 980ms: after the window and 10ms
		{at: 2260 * msec, want: 674},                                  // settled at the tick: 0.95 * 710
	})
	want := []string{"294 throttled 1s", "674 throttled 1s"}
	if !slices.Equal(events, want) {
		t.Errorf("events\n got %q\nwant %q", events, want)
	}
}
