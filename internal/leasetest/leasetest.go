// Package leasetest is a conformance suite for [ratelimiter.LeaseManager]
// implementations: every lease store (the in-memory one, Redis, etcd, Azure
// Blob Storage) runs the same subtests through [Run], so that a
// SharedResource can rely on the same behaviour whichever store it is given.
//
// The suite runs against a real store with real time. The subtests that wait
// for a lease or a demand to expire use [Options.MinDuration], the shortest
// duration the store accepts; they all run at once, so a run takes about
// twice that (RenewExtends renews for two durations).
//
// # What it checks
//
// Beyond the [ratelimiter.LeaseManager] docs, the suite holds every store to
// these choices:
//
//   - Acquire of a partition at or beyond the count that Provision recorded
//     fails, but not with ErrLeaseHeld; Provision never lowers the count, and
//     keeps the leases.
//   - Renew of a partition nobody holds, or another owner holds, wraps
//     ErrLeaseLost. Renew of a lease that expired unclaimed is not checked:
//     some stores keep it, others lose it.
//   - Release of a partition the owner does not hold, or nobody holds,
//     returns nil and changes nothing.
//   - Announce returns Owner, Want and Held as announced (Held in order; nil
//     and empty are the same), in any order of owners.
//   - With a ctx already cancelled or past its deadline, every method
//     returns at once an error wrapping ctx.Err(), and changes nothing.
//   - A negative partition or partition count is an error.
//   - No lease ends (nor demand disappears) before its duration, and none
//     outlives it by more than [Options.Grace].
package leasetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ratebatch/batcher/ratelimiter"
)

// Options describe the store under test. The zero value suits a store that
// accepts 1-second leases and expires them within a quarter second of their
// end.
type Options struct {
	// MinDuration is the shortest lease duration (and demand TTL) the store
	// accepts. The subtests that wait for an expiry use it. Zero means 1 s.
	// Azure Blob Storage needs 15 s; etcd rounds to whole seconds with a
	// server minimum (2 s by default); Redis takes milliseconds.
	MinDuration time.Duration

	// Grace is how long after a lease's or demand's end the store may still
	// report it live: the granularity of its clock and of its expiry sweep,
	// plus the test's own scheduling delays. It must be under MinDuration.
	// Zero means MinDuration/4.
	Grace time.Duration

	// Partitions is how many partitions each subtest provisions. Zero
	// means 4; the suite needs at least 2.
	Partitions int

	// Peer, if set, returns a second manager on the same store and the same
	// names as m, as another process sharing the capacity would build. The
	// suite then makes the other owners' calls through peers, which catches
	// state a manager keeps to itself. Nil means m serves every owner.
	Peer func(t *testing.T, m ratelimiter.LeaseManager) ratelimiter.LeaseManager
}

func (o Options) withDefaults() Options {
	if o.MinDuration <= 0 {
		o.MinDuration = time.Second
	}
	if o.Grace <= 0 {
		o.Grace = o.MinDuration / 4
	}
	if o.Partitions <= 0 {
		o.Partitions = 4
	}
	return o
}

// early is how much sooner than its duration a lease or demand may end in
// the store, measured on our clock: clocks tick differently.
const early = 20 * time.Millisecond

// Run runs the conformance subtests. newManager must return a manager on
// fresh names (a unique prefix, container or key space per call), so that
// subtests, which run at once, never see each other's state. It may
// register its own cleanup with t.Cleanup.
func Run(t *testing.T, newManager func(t *testing.T) ratelimiter.LeaseManager, opt Options) {
	opt = opt.withDefaults()
	if opt.Partitions < 2 {
		t.Fatalf("leasetest: Options.Partitions = %d, need at least 2", opt.Partitions)
	}
	if opt.Grace >= opt.MinDuration {
		t.Fatalf("leasetest: Options.Grace = %v must be under MinDuration = %v", opt.Grace, opt.MinDuration)
	}
	s := suite{newManager: newManager, opt: opt}
	// The subtests run at once, each on its own goroutine rather than with
	// t.Parallel, which -parallel (GOMAXPROCS by default) would limit: most
	// of their time is spent waiting for leases to expire. The group makes
	// them all end before Run returns.
	t.Run("LeaseManager", func(t *testing.T) {
		var wg sync.WaitGroup
		defer wg.Wait()
		for _, tc := range []struct {
			name string
			f    func(t *testing.T)
		}{
			{"AcquireFree", s.acquireFree},
			{"AcquireHeld", s.acquireHeld},
			{"AcquireAgain", s.acquireAgain},
			{"RenewExtends", s.renewExtends},
			{"RenewLonger", s.renewLonger},
			{"RenewNotHolder", s.renewNotHolder},
			{"ReleaseFrees", s.releaseFrees},
			{"ReleaseNotHolder", s.releaseNotHolder},
			{"Expiry", s.expiry},
			{"Announce", s.announce},
			{"AnnounceExpiry", s.announceExpiry},
			{"CancelledContext", s.cancelledContext},
			{"Race", s.race},
			{"Provision", s.provision},
			{"InvalidInput", s.invalidInput},
		} {
			wg.Go(func() { t.Run(tc.name, tc.f) })
		}
	})
}

type suite struct {
	newManager func(t *testing.T) ratelimiter.LeaseManager
	opt        Options
}

// long is a lease duration no subtest waits out.
func (s suite) long() time.Duration { return max(s.opt.MinDuration, 30*time.Second) }

// managers returns a provisioned manager and k managers for other owners:
// peers of it, or itself.
func (s suite) managers(t *testing.T, k int) (ratelimiter.LeaseManager, []ratelimiter.LeaseManager) {
	t.Helper()
	m := s.newManager(t)
	if err := m.Provision(t.Context(), s.opt.Partitions); err != nil {
		t.Fatalf("Provision(%d): %v", s.opt.Partitions, err)
	}
	others := make([]ratelimiter.LeaseManager, k)
	for i := range others {
		others[i] = m
		if s.opt.Peer != nil {
			others[i] = s.opt.Peer(t, m)
		}
	}
	return m, others
}

func mustAcquire(t *testing.T, m ratelimiter.LeaseManager, p int, owner string, d time.Duration) {
	t.Helper()
	if err := m.Acquire(t.Context(), p, owner, d); err != nil {
		t.Fatalf("Acquire(%d, %q, %v): %v", p, owner, d, err)
	}
}

func mustRenew(t *testing.T, m ratelimiter.LeaseManager, p int, owner string, d time.Duration) {
	t.Helper()
	if err := m.Renew(t.Context(), p, owner, d); err != nil {
		t.Fatalf("Renew(%d, %q, %v): %v", p, owner, d, err)
	}
}

func mustRelease(t *testing.T, m ratelimiter.LeaseManager, p int, owner string) {
	t.Helper()
	if err := m.Release(t.Context(), p, owner); err != nil {
		t.Fatalf("Release(%d, %q): %v", p, owner, err)
	}
}

// wantHeld checks that owner's Acquire of p fails with ErrLeaseHeld.
func wantHeld(t *testing.T, m ratelimiter.LeaseManager, p int, owner string, d time.Duration) {
	t.Helper()
	err := m.Acquire(t.Context(), p, owner, d)
	if !errors.Is(err, ratelimiter.ErrLeaseHeld) {
		t.Fatalf("Acquire(%d, %q, %v) = %v, want an error wrapping ErrLeaseHeld", p, owner, d, err)
	}
}

// wantLost checks that owner's Renew of p fails with ErrLeaseLost.
func wantLost(t *testing.T, m ratelimiter.LeaseManager, p int, owner string, d time.Duration) {
	t.Helper()
	err := m.Renew(t.Context(), p, owner, d)
	if !errors.Is(err, ratelimiter.ErrLeaseLost) {
		t.Fatalf("Renew(%d, %q, %v) = %v, want an error wrapping ErrLeaseLost", p, owner, d, err)
	}
}

// sleepUntil sleeps until at, or fails the test when its context ends.
func sleepUntil(t *testing.T, at time.Time) {
	t.Helper()
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
		t.Fatal("test context ended while waiting")
	}
}

func (s suite) acquireFree(t *testing.T) {
	m, _ := s.managers(t, 0)
	for p := range s.opt.Partitions {
		mustAcquire(t, m, p, "owner-a", s.long())
	}
}

func (s suite) acquireHeld(t *testing.T) {
	m, o := s.managers(t, 1)
	mustAcquire(t, m, 1, "owner-a", s.long())
	wantHeld(t, o[0], 1, "owner-b", s.long())
	// The failed attempt changed nothing: a still holds it, and the other
	// partitions are still free.
	mustRenew(t, m, 1, "owner-a", s.long())
	mustAcquire(t, o[0], 0, "owner-b", s.long())
}

func (s suite) acquireAgain(t *testing.T) {
	m, o := s.managers(t, 1)
	mustAcquire(t, m, 0, "owner-a", s.long())
	mustAcquire(t, m, 0, "owner-a", s.long())
	wantHeld(t, o[0], 0, "owner-b", s.long())
	mustRenew(t, m, 0, "owner-a", s.long())
}

// renewExtends renews a short lease every third of its duration for two
// durations; another owner must not get it in between.
func (s suite) renewExtends(t *testing.T) {
	m, o := s.managers(t, 1)
	d := s.opt.MinDuration
	start := time.Now()
	mustAcquire(t, m, 0, "owner-a", d)
	for i := 1; i <= 6; i++ {
		sleepUntil(t, start.Add(time.Duration(i)*d/3))
		mustRenew(t, m, 0, "owner-a", d)
	}
	// Two durations after the acquire, well past its first end plus the
	// grace; the last renew keeps it for about one more.
	wantHeld(t, o[0], 0, "owner-b", d)
	mustRenew(t, m, 0, "owner-a", d)
}

// renewLonger renews a short lease with a longer duration: it must outlive
// the first one.
func (s suite) renewLonger(t *testing.T) {
	m, o := s.managers(t, 1)
	d := s.opt.MinDuration
	start := time.Now()
	mustAcquire(t, m, 0, "owner-a", d)
	mustRenew(t, m, 0, "owner-a", 3*d)
	sleepUntil(t, start.Add(d+s.opt.Grace))
	wantHeld(t, o[0], 0, "owner-b", d)
	// And back to the short one, which still holds for a while.
	mustRenew(t, m, 0, "owner-a", d)
	wantHeld(t, o[0], 0, "owner-b", d)
}

func (s suite) renewNotHolder(t *testing.T) {
	m, o := s.managers(t, 1)
	mustAcquire(t, m, 0, "owner-a", s.long())
	wantLost(t, o[0], 0, "owner-b", s.long())
	// A partition nobody holds is not b's either.
	wantLost(t, o[0], 1, "owner-b", s.long())
	// The holder keeps it.
	mustRenew(t, m, 0, "owner-a", s.long())
	wantHeld(t, o[0], 0, "owner-b", s.long())
}

func (s suite) releaseFrees(t *testing.T) {
	m, o := s.managers(t, 1)
	mustAcquire(t, m, 0, "owner-a", s.long())
	mustRelease(t, m, 0, "owner-a")
	mustAcquire(t, o[0], 0, "owner-b", s.long())
	wantLost(t, m, 0, "owner-a", s.long())
	// Releasing twice is fine, and so is releasing a partition never held.
	mustRelease(t, m, 0, "owner-a")
	mustRelease(t, m, 1, "owner-a")
	// And a released partition can be taken back by its old owner.
	mustRelease(t, o[0], 0, "owner-b")
	mustAcquire(t, m, 0, "owner-a", s.long())
}

func (s suite) releaseNotHolder(t *testing.T) {
	m, o := s.managers(t, 2)
	mustAcquire(t, m, 0, "owner-a", s.long())
	mustRelease(t, o[0], 0, "owner-b")
	mustRenew(t, m, 0, "owner-a", s.long())
	wantHeld(t, o[1], 0, "owner-c", s.long())
}

// expiry polls another owner's Acquire until it wins the lease after the
// holder stopped renewing: not before the lease's end, and within the grace
// after it.
func (s suite) expiry(t *testing.T) {
	m, o := s.managers(t, 1)
	d := s.opt.MinDuration
	start := time.Now()
	mustAcquire(t, m, 0, "owner-a", d)
	every := min(max(d/50, 20*time.Millisecond), 250*time.Millisecond)
	tries := 0
	for {
		tries++
		err := o[0].Acquire(t.Context(), 0, "owner-b", d)
		now := time.Since(start)
		if err == nil {
			if now < d-early {
				t.Fatalf("another owner acquired a %v lease %v after it was acquired", d, now)
			}
			t.Logf("another owner acquired a %v lease %v after it was acquired (%d tries)", d, now, tries)
			break
		}
		if !errors.Is(err, ratelimiter.ErrLeaseHeld) {
			t.Fatalf("Acquire(0, %q, %v) after %v = %v, want nil or ErrLeaseHeld", "owner-b", d, now, err)
		}
		if now > d+s.opt.Grace {
			t.Fatalf("a %v lease still held %v after it was acquired (grace %v)", d, now, s.opt.Grace)
		}
		time.Sleep(every)
	}
	wantLost(t, m, 0, "owner-a", d)
	wantHeld(t, m, 0, "owner-a", d)
	mustRenew(t, o[0], 0, "owner-b", d)
}

// sortDemands returns the demands by owner, with nil Held made empty so that
// stores that drop empty lists compare equal.
func sortDemands(ds []ratelimiter.Demand) []ratelimiter.Demand {
	out := slices.Clone(ds)
	for i := range out {
		if out[i].Held == nil {
			out[i].Held = []int{}
		}
	}
	slices.SortFunc(out, func(a, b ratelimiter.Demand) int { return strings.Compare(a.Owner, b.Owner) })
	return out
}

func fmtDemands(ds []ratelimiter.Demand) string {
	var b strings.Builder
	for i, d := range ds {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "{%s want %d held %v}", d.Owner, d.Want, d.Held)
	}
	return "[" + b.String() + "]"
}

func wantDemands(t *testing.T, got []ratelimiter.Demand, want ...ratelimiter.Demand) {
	t.Helper()
	g, w := sortDemands(got), sortDemands(want)
	for i := range w {
		w[i].TTL = 0
	}
	eq := slices.EqualFunc(g, w, func(a, b ratelimiter.Demand) bool {
		return a.Owner == b.Owner && a.Want == b.Want && slices.Equal(a.Held, b.Held)
	})
	if !eq {
		t.Fatalf("Announce returned %s, want %s", fmtDemands(g), fmtDemands(w))
	}
}

func announce(t *testing.T, m ratelimiter.LeaseManager, d ratelimiter.Demand) []ratelimiter.Demand {
	t.Helper()
	got, err := m.Announce(t.Context(), d)
	if err != nil {
		t.Fatalf("Announce(%s): %v", fmtDemands([]ratelimiter.Demand{d}), err)
	}
	return got
}

func (s suite) announce(t *testing.T) {
	m, o := s.managers(t, 2)
	ttl := s.long()
	a := ratelimiter.Demand{Owner: "owner-a", Want: 3, Held: []int{0, 2, 3}, TTL: ttl}
	b := ratelimiter.Demand{Owner: "owner-b", Want: 0, TTL: ttl}
	c := ratelimiter.Demand{Owner: "owner-c", Want: s.opt.Partitions, Held: []int{1}, TTL: ttl}
	wantDemands(t, announce(t, m, a), a)
	wantDemands(t, announce(t, o[0], b), a, b)
	wantDemands(t, announce(t, o[1], c), a, b, c)
	// A new demand replaces the owner's previous one.
	a2 := ratelimiter.Demand{Owner: "owner-a", Want: 1, Held: []int{2}, TTL: ttl}
	wantDemands(t, announce(t, m, a2), a2, b, c)
	b2 := ratelimiter.Demand{Owner: "owner-b", Want: 2, Held: []int{}, TTL: ttl}
	wantDemands(t, announce(t, o[0], b2), a2, b2, c)
}

// announceExpiry polls one owner's announcements until the demand of
// another, which stopped announcing, is gone: not before its TTL, and within
// the grace after it.
func (s suite) announceExpiry(t *testing.T) {
	m, o := s.managers(t, 1)
	ttl := s.opt.MinDuration
	start := time.Now()
	short := ratelimiter.Demand{Owner: "owner-a", Want: 2, Held: []int{0}, TTL: ttl}
	wantDemands(t, announce(t, m, short), short)
	every := min(max(ttl/50, 20*time.Millisecond), 250*time.Millisecond)
	for {
		b := ratelimiter.Demand{Owner: "owner-b", Want: 1, Held: []int{1}, TTL: s.long()}
		got := announce(t, o[0], b)
		now := time.Since(start)
		if len(got) == 1 {
			wantDemands(t, got, b)
			if now < ttl-early {
				t.Fatalf("a demand with a TTL of %v was gone %v after it was announced", ttl, now)
			}
			t.Logf("a demand with a TTL of %v was gone %v after it was announced", ttl, now)
			break
		}
		wantDemands(t, got, short, b)
		if now > ttl+s.opt.Grace {
			t.Fatalf("a demand with a TTL of %v still there %v after it was announced (grace %v)", ttl, now, s.opt.Grace)
		}
		time.Sleep(every)
	}
}

// cancelledContext calls every method with a cancelled context and with one
// past its deadline: each must fail at once with the context's error, and
// change nothing.
func (s suite) cancelledContext(t *testing.T) {
	m, o := s.managers(t, 1)
	mustAcquire(t, m, 1, "owner-a", s.long())

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()
	calls := []struct {
		name string
		f    func(ctx context.Context) error
	}{
		{"Provision", func(ctx context.Context) error { return m.Provision(ctx, s.opt.Partitions+1) }},
		{"Acquire", func(ctx context.Context) error { return m.Acquire(ctx, 0, "owner-a", s.long()) }},
		{"Renew", func(ctx context.Context) error { return m.Renew(ctx, 1, "owner-a", s.long()) }},
		{"Release", func(ctx context.Context) error { return m.Release(ctx, 1, "owner-a") }},
		{"Announce", func(ctx context.Context) error {
			_, err := m.Announce(ctx, ratelimiter.Demand{Owner: "owner-a", Want: 1, TTL: s.long()})
			return err
		}},
	}
	for _, c := range calls {
		for _, ctx := range []context.Context{cancelled, expired} {
			start := time.Now()
			err := c.f(ctx)
			took := time.Since(start)
			if !errors.Is(err, ctx.Err()) {
				t.Errorf("%s with a done context (%v) = %v, want an error wrapping it", c.name, ctx.Err(), err)
			}
			if took > time.Second {
				t.Errorf("%s with a done context took %v", c.name, took)
			}
		}
	}
	if t.Failed() {
		return
	}
	// Nothing changed: partition 0 is free, 1 is still a's, a announced
	// nothing, and no partition beyond the count appeared.
	mustAcquire(t, o[0], 0, "owner-b", s.long())
	wantHeld(t, o[0], 1, "owner-b", s.long())
	b := ratelimiter.Demand{Owner: "owner-b", Want: 1, TTL: s.long()}
	wantDemands(t, announce(t, o[0], b), b)
	if err := o[0].Acquire(t.Context(), s.opt.Partitions, "owner-b", s.long()); err == nil {
		t.Errorf("Acquire(%d) succeeded after a cancelled Provision(%d)", s.opt.Partitions, s.opt.Partitions+1)
	}
}

// race has several owners acquire one free partition at once: exactly one
// wins, and the others get ErrLeaseHeld.
func (s suite) race(t *testing.T) {
	const n = 8
	m, o := s.managers(t, n-1)
	ms := append([]ratelimiter.LeaseManager{m}, o...)
	for round := range 3 {
		p := round % s.opt.Partitions
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []string
		)
		startc := make(chan struct{})
		for i := range n {
			owner := fmt.Sprintf("owner-%d-%d", round, i)
			wg.Go(func() {
				<-startc
				err := ms[i].Acquire(t.Context(), p, owner, s.long())
				switch {
				case err == nil:
					mu.Lock()
					winners = append(winners, owner)
					mu.Unlock()
				case !errors.Is(err, ratelimiter.ErrLeaseHeld):
					t.Errorf("Acquire(%d, %q): %v, want nil or ErrLeaseHeld", p, owner, err)
				}
			})
		}
		close(startc)
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d owners acquired partition %d at once: %v", round, len(winners), p, winners)
		}
		// The winner really holds it.
		mustRenew(t, m, p, winners[0], s.long())
		mustRelease(t, m, p, winners[0])
	}
}

func (s suite) provision(t *testing.T) {
	m, o := s.managers(t, 1)
	n := s.opt.Partitions
	ctx := t.Context()
	mustAcquire(t, m, 0, "owner-a", s.long())
	for _, k := range []int{n, n, 1, 0} {
		if err := m.Provision(ctx, k); err != nil {
			t.Fatalf("Provision(%d) after Provision(%d): %v", k, n, err)
		}
	}
	// Provisioning again keeps the leases, and a smaller count does not
	// take partitions away.
	wantHeld(t, o[0], 0, "owner-b", s.long())
	mustAcquire(t, o[0], n-1, "owner-b", s.long())
	// Growing it makes the new partitions usable, and keeps the old ones.
	if err := o[0].Provision(ctx, n+2); err != nil {
		t.Fatalf("Provision(%d) after Provision(%d): %v", n+2, n, err)
	}
	for p := n; p < n+2; p++ {
		mustAcquire(t, m, p, "owner-a", s.long())
		wantHeld(t, o[0], p, "owner-b", s.long())
	}
	wantHeld(t, o[0], 0, "owner-b", s.long())
	mustRenew(t, o[0], n-1, "owner-b", s.long())
	// Beyond the count is an error, and not "held".
	err := m.Acquire(ctx, n+2, "owner-a", s.long())
	if err == nil || errors.Is(err, ratelimiter.ErrLeaseHeld) {
		t.Errorf("Acquire(%d) after Provision(%d) = %v, want an error that is not ErrLeaseHeld", n+2, n+2, err)
	}
}

// invalidInput checks the inputs every store must refuse.
func (s suite) invalidInput(t *testing.T) {
	m, _ := s.managers(t, 0)
	ctx := t.Context()
	if err := m.Provision(ctx, -1); err == nil {
		t.Error("Provision(-1) succeeded")
	}
	if err := m.Acquire(ctx, -1, "owner-a", s.long()); err == nil || errors.Is(err, ratelimiter.ErrLeaseHeld) {
		t.Errorf("Acquire(-1) = %v, want an error that is not ErrLeaseHeld", err)
	}
	if err := m.Renew(ctx, -1, "owner-a", s.long()); err == nil {
		t.Error("Renew(-1) succeeded")
	}
	if err := m.Release(ctx, -1, "owner-a"); err == nil {
		t.Error("Release(-1) succeeded")
	}
}
