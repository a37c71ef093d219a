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
	"github.com/ratebatch/batcher/internal/memlease"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// What a Batcher relies on: a SharedResource is a rate limiter whose events
// the Batcher passes on, and whose leases Shutdown releases.
var (
	_ batcher.RateLimiter = (*ratelimiter.SharedResource)(nil)
	_ batcher.EventSource = (*ratelimiter.SharedResource)(nil)
	_ batcher.Stopper     = (*ratelimiter.SharedResource)(nil)
)

// The figures of the issue: 10,000 shared in partitions of 1,000, and 500
// reserved per instance.
const (
	shared   = 10000
	factor   = 1000
	reserved = 500
)

func newShared(store ratelimiter.LeaseManager) *ratelimiter.SharedResource {
	return ratelimiter.NewSharedResource().
		WithReservedCapacity(reserved).
		WithSharedCapacity(shared, store).
		WithFactor(factor)
}

// start starts r until the test ends, and stops it then.
func start(t *testing.T, r *ratelimiter.SharedResource) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return cancel
}

// backlog keeps giving r a target above anything it can have, as a
// Batcher with a backlog does every capacity interval, until ctx ends.
func backlog(ctx context.Context, r *ratelimiter.SharedResource, target int) {
	go func() {
		for ctx.Err() == nil {
			r.GiveMe(target)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

// handoffs watches which partitions each instance counts, every 10 ms, and
// records every time a partition is counted by one instance less than a
// second after another counted it: what would let the instances together
// release more than the shared capacity in a one-second window (G6).
type handoffs struct {
	mu         sync.Mutex
	last       map[int]map[string]time.Time // partition -> owner -> last seen counting
	violations []string
	stop, done chan struct{}
}

func watchHandoffs(rs ...*ratelimiter.SharedResource) *handoffs {
	h := &handoffs{last: make(map[int]map[string]time.Time), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			h.sample(rs)
			select {
			case <-h.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return h
}

func (h *handoffs) sample(rs []*ratelimiter.SharedResource) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range rs {
		for _, p := range r.CountedPartitions() {
			seen := h.last[p]
			if seen == nil {
				seen = make(map[string]time.Time)
				h.last[p] = seen
			}
			for owner, at := range seen {
				if owner != r.Owner() && now.Sub(at) < time.Second {
					h.violations = append(h.violations, fmt.Sprintf("partition %d counted by %s %v after %s", p, r.Owner()[:8], now.Sub(at), owner[:8]))
				}
			}
			seen[r.Owner()] = now
		}
	}
}

// check stops watching and fails t on any violation.
func (h *handoffs) check(t *testing.T) {
	t.Helper()
	close(h.stop)
	<-h.done
	for _, v := range h.violations {
		t.Error(v)
	}
}

// counts returns how many partitions each instance counts.
func counts(rs []*ratelimiter.SharedResource) []int {
	n := make([]int, len(rs))
	for i, r := range rs {
		n[i] = r.Partitions()
	}
	return n
}

func TestSharedRampsUpInOneRound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		r := newShared(store)
		var events eventLog
		r.AddListener(events.add)
		start(t, r)
		if got := r.Capacity(); got != reserved {
			t.Fatalf("Capacity before any target = %d, want the reserved %d", got, reserved)
		}
		t0 := time.Now()
		r.GiveMe(50000) // a backlog: wants every partition
		for r.Partitions() < shared/factor {
			time.Sleep(time.Millisecond)
			if time.Since(t0) > 5*time.Second {
				t.Fatalf("after 5s: %d partitions", r.Partitions())
			}
		}
		if d := time.Since(t0); d > 100*time.Millisecond {
			t.Errorf("reached %d partitions after %v, want at once (one round)", shared/factor, d)
		}
		if got := r.Capacity(); got != reserved+shared {
			t.Errorf("Capacity = %d, want %d", got, reserved+shared)
		}
		if got := store.Acquires(); got != shared/factor {
			t.Errorf("%d Acquire calls, want one per partition (%d)", got, shared/factor)
		}
		acquired := 0
		for _, e := range events.all() {
			if e.Kind == batcher.PartitionAcquired {
				acquired++
			}
		}
		if acquired != shared/factor {
			t.Errorf("%d allocated events, want %d", acquired, shared/factor)
		}
		if last := events.all()[len(events.all())-1]; last.Kind != batcher.CapacityChanged || last.Val != reserved+shared {
			t.Errorf("last event %v, want capacity %d", last, reserved+shared)
		}
	})
}

func TestSharedTakesOnlyWhatTheTargetNeeds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		r := newShared(store)
		start(t, r)
		ctx, stop := context.WithCancel(t.Context())
		backlog(ctx, r, reserved+3*factor-1) // needs 3 partitions
		time.Sleep(2 * time.Second)
		if got := r.Partitions(); got != 3 {
			t.Errorf("Partitions = %d for a target of reserved + 2.999 factors, want 3", got)
		}
		stop()
	})
}

func TestSharedRenewsWhileNeeded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		r := newShared(store)
		start(t, r)
		backlog(t.Context(), r, 50000)
		time.Sleep(time.Second)
		// A minute is four lease durations: without renewals the leases
		// would lapse.
		for range 60 {
			if got := r.Partitions(); got != shared/factor {
				t.Fatalf("Partitions = %d, want %d", got, shared/factor)
			}
			for p := range shared / factor {
				if h := store.Holder(p); h != r.Owner() {
					t.Fatalf("partition %d held by %q, want this instance", p, h)
				}
			}
			time.Sleep(time.Second)
		}
		if got := store.Acquires(); got != shared/factor {
			t.Errorf("%d Acquire calls, want %d: renewals keep the leases", got, shared/factor)
		}
	})
}

func TestSharedReleasesWhenNotNeeded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		r := newShared(store)
		var events eventLog
		r.AddListener(events.add)
		start(t, r)
		ctx, stopBacklog := context.WithCancel(t.Context())
		backlog(ctx, r, 50000)
		time.Sleep(time.Second)
		stopBacklog()
		r.GiveMe(0)
		t0 := time.Now()
		for r.Partitions() > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		// The largest target of the last release delay (1 s) still counts.
		if d := time.Since(t0); d > time.Second+300*time.Millisecond {
			t.Errorf("stopped counting %v after the target fell to 0, want within the release delay and a round", d)
		}
		if got := r.Capacity(); got != reserved {
			t.Errorf("Capacity = %d, want the reserved %d", got, reserved)
		}
		// The store still has them for the handoff guard...
		uncounted := time.Now()
		if h := store.Held(r.Owner()); h != shared/factor {
			t.Errorf("store holds %d for this instance right after it stopped counting, want %d for the guard", h, shared/factor)
		}
		// ...then they are released, long before they would lapse.
		for store.Held(r.Owner()) > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		if d := time.Since(uncounted); d < ratelimiter.DefaultHandoffGuard || d > ratelimiter.DefaultHandoffGuard+300*time.Millisecond {
			t.Errorf("released %v after it stopped counting, want the guard %v (and a round)", d, ratelimiter.DefaultHandoffGuard)
		}
		released := 0
		for _, e := range events.all() {
			if e.Kind == batcher.PartitionReleased {
				released++
				if e.Msg != "not needed" {
					t.Errorf("released event %v, want msg \"not needed\"", e)
				}
			}
		}
		if released != shared/factor {
			t.Errorf("%d released events, want %d", released, shared/factor)
		}
	})
}

func TestSharedFairShares(t *testing.T) {
	for _, n := range []int{2, 3, 4} {
		t.Run(fmt.Sprintf("%d instances", n), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := memlease.New()
				var rs []*ratelimiter.SharedResource
				h := watchHandoffs()
				// The first one has everything when the others arrive, one
				// a second.
				for range n {
					r := newShared(store)
					rs = append(rs, r)
					start(t, r)
					backlog(t.Context(), r, 50000)
					time.Sleep(time.Second)
				}
				h.check(t) // nothing to watch yet; see below
				h = watchHandoffs(rs...)
				time.Sleep(10 * time.Second)
				got := counts(rs)
				total := 0
				for i, c := range got {
					total += c
					if lo, hi := shared/factor/n, (shared/factor+n-1)/n; c < lo || c > hi {
						t.Errorf("instance %d counts %d partitions, want %d to %d (all: %v)", i, c, lo, hi, got)
					}
				}
				if total != shared/factor {
					t.Errorf("the instances count %d partitions in all, want all %d (%v)", total, shared/factor, got)
				}
				// Settled: nothing moves any more.
				before := store.Acquires()
				time.Sleep(20 * time.Second)
				if after := counts(rs); !slices.Equal(after, got) {
					t.Errorf("shares moved from %v to %v once settled", got, after)
				}
				if a := store.Acquires() - before; a != 0 {
					t.Errorf("%d Acquire calls once settled, want none", a)
				}
				h.check(t)
			})
		})
	}
}

func TestSharedDeadInstancesPartitionsGoToTheOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		a, b := newShared(store), newShared(store)
		killA := start(t, a)
		backlog(t.Context(), a, 50000)
		time.Sleep(time.Second)
		start(t, b)
		backlog(t.Context(), b, 50000)
		time.Sleep(10 * time.Second)
		if got := counts([]*ratelimiter.SharedResource{a, b}); got[0] != 5 || got[1] != 5 {
			t.Fatalf("counts %v, want 5 each", got)
		}
		h := watchHandoffs(a, b)
		killA() // as kill -9: no Stop, no release
		died := time.Now()
		for b.Partitions() < shared/factor {
			time.Sleep(10 * time.Millisecond)
		}
		if d := time.Since(died); d > ratelimiter.DefaultLeaseDuration+2*time.Second {
			t.Errorf("the survivor had every partition %v after the other died, want within the lease duration %v + 2s", d, ratelimiter.DefaultLeaseDuration)
		}
		h.check(t)
	})
}

func TestSharedFallsBackWhenTheStoreFails(t *testing.T) {
	for _, mode := range []string{"errors", "hangs"} {
		t.Run(mode, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := memlease.New()
				r := newShared(store)
				var events eventLog
				r.AddListener(events.add)
				start(t, r)
				backlog(t.Context(), r, 50000)
				time.Sleep(time.Second)
				broke := time.Now()
				if mode == "errors" {
					store.SetErr(errors.New("connection refused"))
				} else {
					store.SetHang(true)
				}
				for r.Capacity() != reserved {
					time.Sleep(10 * time.Millisecond)
				}
				limit := ratelimiter.DefaultRoundInterval + 10*time.Millisecond
				if mode == "hangs" {
					limit += ratelimiter.DefaultCallTimeout
				}
				if d := time.Since(broke); d > limit {
					t.Errorf("fell back to the reserved capacity %v after the store broke, want within %v", d, limit)
				}
				// It stays there for as long as the store is down, ten
				// seconds here, though the leases are still valid.
				for range 100 {
					if c := r.Capacity(); c != reserved {
						t.Fatalf("Capacity = %d while the store is down, want %d", c, reserved)
					}
					time.Sleep(100 * time.Millisecond)
				}
				acquires := store.Acquires()
				store.SetErr(nil)
				store.SetHang(false)
				back := time.Now()
				for r.Capacity() != reserved+shared {
					time.Sleep(10 * time.Millisecond)
				}
				if d := time.Since(back); d > 2*time.Second {
					t.Errorf("recovered %v after the store came back, want within 2s", d)
				}
				if a := store.Acquires() - acquires; a != 0 {
					t.Errorf("%d Acquire calls to recover, want none: the leases were still this instance's and are renewed", a)
				}
				var errs int
				for _, e := range events.all() {
					if e.Kind == batcher.LimiterError {
						errs++
						if e.Err == nil {
							t.Errorf("error event without Err: %v", e)
						}
					}
				}
				if errs == 0 {
					t.Error("no error event while the store was down")
				}
			})
		})
	}
}

func TestSharedStoreThatForgetsItsLeases(t *testing.T) {
	// The store comes back empty (a restart without persistence, 10 s
	// down): the instance renews nothing, leases afresh, and another
	// instance that leased meanwhile keeps G6 with it.
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		a, b := newShared(store), newShared(store)
		start(t, a)
		backlog(t.Context(), a, 50000)
		time.Sleep(time.Second)
		h := watchHandoffs(a, b)
		store.SetErr(errors.New("connection refused"))
		time.Sleep(10 * time.Second)
		store.Forget()
		store.SetErr(nil)
		start(t, b)
		backlog(t.Context(), b, 50000)
		time.Sleep(20 * time.Second)
		if got := counts([]*ratelimiter.SharedResource{a, b}); got[0]+got[1] != shared/factor || got[0] != 5 {
			t.Errorf("counts %v, want 5 each", got)
		}
		h.check(t)
	})
}

func TestSharedLostLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		r := newShared(store)
		var events eventLog
		r.AddListener(events.add)
		start(t, r)
		backlog(t.Context(), r, 3*factor+reserved) // 3 partitions
		time.Sleep(time.Second)
		held := r.CountedPartitions()
		if len(held) != 3 {
			t.Fatalf("counts %v, want 3 partitions", held)
		}
		// The store loses one lease and a foreign owner takes it.
		store.Forget()
		if err := store.Acquire(t.Context(), held[0], "thief", time.Hour); err != nil {
			t.Fatal(err)
		}
		// At the next renewal it is found lost, and another is leased.
		time.Sleep(ratelimiter.DefaultLeaseDuration / 3)
		time.Sleep(time.Second)
		now := r.CountedPartitions()
		if slices.Contains(now, held[0]) || len(now) != 3 {
			t.Errorf("counts %v after losing %d, want 3 others", now, held[0])
		}
		lost := false
		for _, e := range events.all() {
			lost = lost || e.Kind == batcher.PartitionReleased && e.Val == held[0] && e.Msg == "lease lost"
		}
		if !lost {
			t.Errorf("no \"lease lost\" event for partition %d: %v", held[0], events.all())
		}
	})
}

func TestSharedCapacityChangedAtRunTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		r := newShared(store)
		start(t, r)
		backlog(t.Context(), r, 100000)
		time.Sleep(time.Second)

		if err := r.SetSharedCapacity(5 * factor); err != nil {
			t.Fatal(err)
		}
		// Lowered: at once, for Capacity and MaxCapacity.
		if c, m := r.Capacity(), r.MaxCapacity(); c != reserved+5*factor || m != reserved+5*factor {
			t.Errorf("after SetSharedCapacity(5000): Capacity %d, MaxCapacity %d, want %d both", c, m, reserved+5*factor)
		}
		time.Sleep(ratelimiter.DefaultHandoffGuard + time.Second)
		for p := 5; p < 10; p++ {
			if h := store.Holder(p); h != "" {
				t.Errorf("partition %d still held after the guard: %s", p, h)
			}
		}
		// Raised: the new partitions are provisioned and leased.
		if err := r.SetSharedCapacity(20 * factor); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if c := r.Capacity(); c != reserved+20*factor {
			t.Errorf("after SetSharedCapacity(20000): Capacity %d, want %d", c, reserved+20*factor)
		}
		if err := r.SetReservedCapacity(800); err != nil {
			t.Fatal(err)
		}
		if c := r.Capacity(); c != 800+20*factor {
			t.Errorf("after SetReservedCapacity(800): Capacity %d, want %d", c, 800+20*factor)
		}
		// Refused, and nothing changes.
		for _, bad := range []int{-1, 1500, 600 * factor} {
			if err := r.SetSharedCapacity(bad); !errors.Is(err, batcher.ErrInvalidSetting) || !strings.Contains(err.Error(), fmt.Sprint(bad)) {
				t.Errorf("SetSharedCapacity(%d) = %v, want ErrInvalidSetting naming it", bad, err)
			}
		}
		if err := r.SetReservedCapacity(-5); !errors.Is(err, batcher.ErrInvalidSetting) || !strings.Contains(err.Error(), "-5") {
			t.Errorf("SetReservedCapacity(-5) = %v", err)
		}
		if c := r.Capacity(); c != 800+20*factor {
			t.Errorf("after refused changes: Capacity %d, want %d", c, 800+20*factor)
		}
	})
}

func TestSharedReservedOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := ratelimiter.NewSharedResource().WithReservedCapacity(700)
		start(t, r)
		r.GiveMe(1 << 20)
		time.Sleep(time.Second)
		if c, m := r.Capacity(), r.MaxCapacity(); c != 700 || m != 700 {
			t.Errorf("Capacity %d MaxCapacity %d, want 700 both", c, m)
		}
		if err := r.SetSharedCapacity(factor); !errors.Is(err, batcher.ErrInvalidSetting) {
			t.Errorf("SetSharedCapacity without a lease manager = %v, want ErrInvalidSetting", err)
		}
		if err := r.Stop(t.Context()); err != nil {
			t.Errorf("Stop = %v", err)
		}
	})
}

func TestSharedRefusesBadSettings(t *testing.T) {
	store := memlease.New()
	for _, tc := range []struct {
		name  string
		r     *ratelimiter.SharedResource
		wants []string
	}{
		{"negative reserved", ratelimiter.NewSharedResource().WithReservedCapacity(-1), []string{"reserved capacity is -1"}},
		{"zero factor", ratelimiter.NewSharedResource().WithFactor(0), []string{"factor is 0"}},
		{"not a multiple", newShared(store).WithFactor(3000), []string{"10000 is not a multiple of the factor 3000"}},
		{"too many partitions", newShared(store).WithFactor(10), []string{"1000 partitions", "max partitions 500"}},
		{"no manager", ratelimiter.NewSharedResource().WithSharedCapacity(shared, nil), []string{"lease manager is nil"}},
		{"short guard", newShared(store).WithHandoffGuard(time.Second), []string{"handoff guard is 1s"}},
		{"short lease", newShared(store).WithLeaseDuration(5 * time.Second), []string{"lease duration is 5s"}},
		{"several", newShared(store).WithRoundInterval(0).WithCallTimeout(-time.Second).WithReleaseDelay(-1),
			[]string{"round interval is 0s", "call timeout is -1s", "release delay is -1ns"}},
	} {
		err := tc.r.Start(t.Context())
		if !errors.Is(err, batcher.ErrInvalidSetting) {
			t.Errorf("%s: Start = %v, want ErrInvalidSetting", tc.name, err)
			continue
		}
		for _, w := range tc.wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Start = %q, want it to say %q", tc.name, err, w)
			}
		}
	}
	r := newShared(store)
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer r.Stop(t.Context())
	if err := r.Start(t.Context()); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("second Start = %v, want ErrImproperOrder", err)
	}
	defer func() {
		if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "WithFactor") {
			t.Errorf("WithFactor after Start: panic %v, want one naming it", p)
		}
	}()
	r.WithFactor(10)
}

func TestSharedStopReleasesAfterTheGuard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		r := newShared(store)
		start(t, r)
		r.GiveMe(50000)
		time.Sleep(time.Second)
		t0 := time.Now()
		if err := r.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); d != ratelimiter.DefaultHandoffGuard {
			t.Errorf("Stop took %v, want the guard %v", d, ratelimiter.DefaultHandoffGuard)
		}
		if r.Capacity() != reserved || store.Held(r.Owner()) != 0 {
			t.Errorf("after Stop: Capacity %d, %d leases held", r.Capacity(), store.Held(r.Owner()))
		}

		// A Stop whose ctx ends first says so; the leases lapse.
		r2 := newShared(store)
		start(t, r2)
		r2.GiveMe(50000)
		time.Sleep(time.Second)
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		if err := r2.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "10 leases") {
			t.Errorf("Stop with a short ctx = %v, want DeadlineExceeded naming the 10 leases", err)
		}
		if r2.Capacity() != reserved {
			t.Errorf("after a cut-short Stop: Capacity %d, want %d", r2.Capacity(), reserved)
		}
	})
}

func TestFairShares(t *testing.T) {
	d := func(owner string, want int) ratelimiter.Demand { return ratelimiter.Demand{Owner: owner, Want: want} }
	for _, tc := range []struct {
		demands    []ratelimiter.Demand
		partitions int
		want       map[string]int
	}{
		{[]ratelimiter.Demand{d("a", 10)}, 10, map[string]int{"a": 10}},
		{[]ratelimiter.Demand{d("a", 10), d("b", 10)}, 10, map[string]int{"a": 5, "b": 5}},
		{[]ratelimiter.Demand{d("a", 10), d("b", 10), d("c", 10), d("d", 10)}, 10, map[string]int{"a": 2, "b": 2, "c": 3, "d": 3}},
		{[]ratelimiter.Demand{d("a", 1), d("b", 10), d("c", 10)}, 10, map[string]int{"a": 1, "b": 4, "c": 5}},
		{[]ratelimiter.Demand{d("a", 0), d("b", 3)}, 10, map[string]int{"a": 0, "b": 3}},
		{nil, 10, map[string]int{}},
	} {
		got := ratelimiter.FairShares(tc.demands, tc.partitions)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("FairShares(%v, %d) = %v, want %v", tc.demands, tc.partitions, got, tc.want)
		}
	}
}

// TestSharedWithBatchersNeverOverCapacity runs four Batchers, each on its
// own SharedResource over one store, all backlogged, with instances
// stopping and starting, and checks every one-second window of their
// releases together against the shared plus reserved capacity (G6), and
// that they use it (G2).
func TestSharedWithBatchersNeverOverCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memlease.New()
		var log releases.Log
		w := batcher.NewWatcher(func(_ context.Context, ops []*batcher.Operation) error {
			c := 0
			for _, op := range ops {
				c += op.Cost()
			}
			log.Add(c)
			return nil
		})
		run := func(ctx context.Context, d time.Duration) *batcher.Batcher {
			r := newShared(store)
			// A small buffer, so that a Shutdown drains within a second
			// and no more than four instances (four reserved capacities)
			// ever release at once.
			b := batcher.NewBatcher().WithRateLimiter(r).WithBufferSize(200)
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}
			go func() {
				for i := 0; ; i++ {
					if err := b.EnqueueContext(ctx, batcher.NewOperation(w, 10, i, true)); err != nil {
						return
					}
				}
			}()
			go func() {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				b.Shutdown(sctx)
			}()
			return b
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		t0 := time.Now()
		const span = 60 * time.Second
		for range 3 {
			run(ctx, span)
		}
		// The fourth comes and goes: 10 s on, 5 s off.
		for i := 0; i < 4; i++ {
			run(ctx, 10*time.Second)
			time.Sleep(15 * time.Second)
		}
		time.Sleep(span - time.Since(t0))
		cancel()
		time.Sleep(20 * time.Second) // the Shutdowns drain
		synctest.Wait()

		for p := range shared / factor {
			if h := store.Holder(p); h != "" {
				t.Errorf("partition %d still held by %s after every Batcher shut down", p, h)
			}
		}
		all := log.All()
		limit := shared + 4*reserved
		peak, at := releases.MaxWindow(all, time.Second)
		t.Logf("peak 1 s window %d at %v (limit %d)", peak, at.Sub(t0), limit)
		if peak > limit {
			t.Errorf("peak 1 s window %d at %v, over the shared + reserved %d", peak, at.Sub(t0), limit)
		}
		// Utilization with three instances always on (two of three
		// reserved, and the shared capacity) after the first seconds.
		used := releases.Between(all, t0.Add(5*time.Second), t0.Add(span-5*time.Second))
		rate := float64(used) / (span - 10*time.Second).Seconds()
		t.Logf("released %.0f a second from 5 s to 55 s", rate)
		if min := 0.9 * float64(shared+3*reserved); rate < min {
			t.Errorf("released %.0f a second, want at least %.0f (90%% of shared + 3 reserved)", rate, min)
		}
	})
}
