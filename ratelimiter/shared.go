package ratelimiter

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ratebatch/batcher"
)

// Defaults of a SharedResource's settings.
const (
	DefaultFactor        = 1000
	DefaultMaxPartitions = 500
	DefaultLeaseDuration = 15 * time.Second
	DefaultHandoffGuard  = 2 * time.Second
	DefaultRoundInterval = 250 * time.Millisecond
	DefaultCallTimeout   = time.Second
	DefaultReleaseDelay  = time.Second
	maxErrorBackoff      = 500 * time.Millisecond
)

// SharedResource is a capacity made of two parts: a reserved capacity that
// is this instance's alone, and a shared capacity that several instances
// (replicas of a service, each with its own Batcher) divide between them
// through leases in a store they all reach: Azure Blob Storage, Redis or
// etcd (the subpackages azblob, redis and etcd), or any [LeaseManager].
//
// The shared capacity is split into partitions of Factor cost units each. An
// instance holding k partitions has Capacity reserved + k x Factor. It
// leases as many as its demand needs (the capacity its Batcher would use:
// see GiveMe), up to all of them when the others are idle, several at once
// when the demand jumps; it renews them while the demand needs them and
// lets them go, after the handoff guard, when it does not. When every instance wants more than there is, each gets its fair
// share: instances announce in the store what they want and hold, and one
// that holds more than its share lets the extra go while another waits.
//
// # Never over capacity across instances
//
// An instance stops counting a partition in its Capacity at least the
// handoff guard before any other instance can lease it: when it lets it go
// on purpose, it keeps the lease for the guard before releasing it; and a
// lease it could not renew stops counting the guard before it could expire.
// Lease times are measured from the moment the request was sent, so the
// store's own expiry is never earlier than ours. The guard (2 s by default)
// covers the one-second window of [batcher] guarantee G1, the Batcher's
// flush interval (the Batcher reads Capacity every flush) and clock drift
// between this machine and the store (1% of a 15-second lease is 150 ms).
// So the instances together never release more than the shared capacity
// plus their reserved capacities in any one-second window.
//
// # When the store fails
//
// On any store error (a call that fails or runs past the call timeout) the
// instance stops counting every partition at once and falls back to its
// reserved capacity. It keeps trying, every round with a back-off of at
// most half a second; when the store answers again it renews the leases it
// still holds and counts them again (a renewal that succeeds proves nobody
// else had them meanwhile), and leases more as its demand needs.
//
// A store that loses its leases while it stays up (a Redis restart without
// persistence that is quicker than one round) can give another instance a
// partition this one still counts, until this one's next renewal finds it
// lost (at most a third of the lease duration). Use a store that keeps its
// leases across restarts if that matters.
//
// Create it with [NewSharedResource] and configure it with the With*
// methods before Start. It is safe for concurrent use.
type SharedResource struct {
	// Settings, fixed by Start (but for the capacities; see mu).
	factor        int
	maxPartitions int
	manager       LeaseManager
	leaseDuration time.Duration
	guard         time.Duration
	interval      time.Duration
	callTimeout   time.Duration
	releaseDelay  time.Duration
	owner         string

	listeners batcher.Listeners
	wake      chan struct{}

	mu struct {
		sync.Mutex
		started    bool
		stopped    bool
		reserved   int
		shared     int
		partitions int // shared / factor
		leases     map[int]*heldLease
		demands    []demandAt      // the demands of the last releaseDelay
		reported   int             // the capacity last reported in an event
		events     []batcher.Event // to emit once the lock is let go
		cancel     context.CancelFunc
		done       chan struct{}
	}
}

// heldLease is a lease this instance holds in the store.
type heldLease struct {
	// validUntil is when the lease expires at the earliest, measured from
	// the moment the last successful acquire or renewal was sent.
	validUntil time.Time
	// counted says the partition's capacity counts in Capacity (while
	// now is before validUntil - guard).
	counted bool
	// uncountedAt is when it stopped counting; it may be released in the
	// store a guard later.
	uncountedAt time.Time
}

type demandAt struct {
	at     time.Time
	demand int
}

// NewSharedResource returns a SharedResource with no reserved capacity and
// no shared capacity; set them with WithReservedCapacity and
// WithSharedCapacity.
func NewSharedResource() *SharedResource {
	r := &SharedResource{
		factor:        DefaultFactor,
		maxPartitions: DefaultMaxPartitions,
		leaseDuration: DefaultLeaseDuration,
		guard:         DefaultHandoffGuard,
		interval:      DefaultRoundInterval,
		callTimeout:   DefaultCallTimeout,
		releaseDelay:  DefaultReleaseDelay,
		owner:         newOwnerID(),
		wake:          make(chan struct{}, 1),
	}
	r.mu.leases = make(map[int]*heldLease)
	return r
}

// newOwnerID returns a random UUID (version 4), unique per SharedResource.
func newOwnerID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (r *SharedResource) set(method string, f func()) *SharedResource {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.started {
		panic("ratelimiter: SharedResource." + method + " called after Start")
	}
	f()
	return r
}

// WithReservedCapacity sets the capacity that is this instance's alone, in
// cost units per second (default 0). It needs no store. Change it at run
// time with SetReservedCapacity.
func (r *SharedResource) WithReservedCapacity(capacity int) *SharedResource {
	return r.set("WithReservedCapacity", func() { r.mu.reserved = capacity })
}

// WithSharedCapacity sets the capacity shared by every instance that uses
// the same store (and the same names in it), and the store. The capacity
// must be a multiple of the factor; every instance must be given the same.
// Change it at run time with SetSharedCapacity.
func (r *SharedResource) WithSharedCapacity(capacity int, manager LeaseManager) *SharedResource {
	return r.set("WithSharedCapacity", func() { r.mu.shared, r.manager = capacity, manager })
}

// WithFactor sets the capacity of one partition (default 1000 cost units
// per second). Fewer, larger partitions mean fewer store calls; more,
// smaller ones a finer division between instances.
func (r *SharedResource) WithFactor(factor int) *SharedResource {
	return r.set("WithFactor", func() { r.factor = factor })
}

// WithMaxPartitions sets the most partitions the shared capacity may be
// split into (default 500): a shared capacity over MaxPartitions x Factor
// is refused by Start and SetSharedCapacity, naming both.
func (r *SharedResource) WithMaxPartitions(n int) *SharedResource {
	return r.set("WithMaxPartitions", func() { r.maxPartitions = n })
}

// WithLeaseDuration sets how long a lease lasts unless renewed (default
// 15 s). A dead instance's partitions go to the others about this long
// after it died. Azure Blob Storage accepts 15 to 60 seconds. It must be
// more than three times the handoff guard.
func (r *SharedResource) WithLeaseDuration(d time.Duration) *SharedResource {
	return r.set("WithLeaseDuration", func() { r.leaseDuration = d })
}

// WithHandoffGuard sets how long before another instance could lease a
// partition this instance stops counting it (default 2 s). It must exceed
// one second (the window of G1) plus the Batcher's flush interval plus the
// clock drift over one lease duration; Start refuses a guard of one second
// or less.
func (r *SharedResource) WithHandoffGuard(d time.Duration) *SharedResource {
	return r.set("WithHandoffGuard", func() { r.guard = d })
}

// WithRoundInterval sets how often the instance announces its demand,
// renews what is due and adjusts what it holds (default 250 ms). A demand
// over the capacity starts a round at once.
func (r *SharedResource) WithRoundInterval(d time.Duration) *SharedResource {
	return r.set("WithRoundInterval", func() { r.interval = d })
}

// WithCallTimeout sets how long one store call may take before it counts
// as a store error (default 1 s). While the store fails, rounds come every
// call timeout plus at most half a second, so the instance recovers within
// about that much of the store's return.
func (r *SharedResource) WithCallTimeout(d time.Duration) *SharedResource {
	return r.set("WithCallTimeout", func() { r.callTimeout = d })
}

// WithReleaseDelay sets for how long the demand must have been low before
// partitions it no longer needs are let go (default 1 s): the largest demand
// given to GiveMe in that time decides how many partitions are kept.
func (r *SharedResource) WithReleaseDelay(d time.Duration) *SharedResource {
	return r.set("WithReleaseDelay", func() { r.releaseDelay = d })
}

// Owner returns the id this instance holds its leases and announces its
// demand under: a random UUID.
func (r *SharedResource) Owner() string { return r.owner }

// validateLocked returns an error naming every bad setting.
func (r *SharedResource) validateLocked() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: SharedResource "+format, append([]any{batcher.ErrInvalidSetting}, args...)...))
	}
	if r.mu.reserved < 0 {
		bad("reserved capacity is %d; it must be 0 or more", r.mu.reserved)
	}
	if r.factor <= 0 {
		bad("factor is %d; it must be more than 0", r.factor)
	}
	if r.maxPartitions <= 0 {
		bad("max partitions is %d; it must be more than 0", r.maxPartitions)
	}
	if err := r.checkShared(r.mu.shared); err != nil {
		errs = append(errs, err)
	}
	if r.mu.shared > 0 && r.manager == nil {
		bad("shared capacity is %d but the lease manager is nil", r.mu.shared)
	}
	if r.guard <= time.Second {
		bad("handoff guard is %v; it must be more than 1s", r.guard)
	}
	if r.leaseDuration <= 3*r.guard {
		bad("lease duration is %v; it must be more than 3 times the handoff guard (%v)", r.leaseDuration, r.guard)
	}
	if r.interval <= 0 {
		bad("round interval is %v; it must be more than 0", r.interval)
	}
	if r.callTimeout <= 0 {
		bad("call timeout is %v; it must be more than 0", r.callTimeout)
	}
	if r.releaseDelay < 0 {
		bad("release delay is %v; it must be 0 or more", r.releaseDelay)
	}
	return errors.Join(errs...)
}

// checkShared checks a shared capacity against the factor and the
// partition cap.
func (r *SharedResource) checkShared(shared int) error {
	switch {
	case shared < 0:
		return fmt.Errorf("%w: SharedResource shared capacity is %d; it must be 0 or more", batcher.ErrInvalidSetting, shared)
	case r.factor <= 0:
		return nil // reported on its own
	case shared%r.factor != 0:
		return fmt.Errorf("%w: SharedResource shared capacity %d is not a multiple of the factor %d", batcher.ErrInvalidSetting, shared, r.factor)
	case shared/r.factor > r.maxPartitions:
		return fmt.Errorf("%w: SharedResource shared capacity %d at factor %d makes %d partitions, more than the max partitions %d (raise WithMaxPartitions or WithFactor)",
			batcher.ErrInvalidSetting, shared, r.factor, shared/r.factor, r.maxPartitions)
	}
	return nil
}

// Start checks the settings, naming every bad one, and starts the work of
// leasing partitions until ctx ends or Stop is called. It does not wait for
// the store: an unreachable store is reported in LimiterError events and
// leaves the reserved capacity only, until it answers.
func (r *SharedResource) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.started {
		return fmt.Errorf("%w: SharedResource started twice", batcher.ErrImproperOrder)
	}
	if err := r.validateLocked(); err != nil {
		return err
	}
	r.mu.started = true
	r.mu.partitions = r.mu.shared / r.factor
	r.mu.reported = r.mu.reserved
	if r.manager == nil {
		return nil // reserved capacity only: nothing to do
	}
	ctx, r.mu.cancel = context.WithCancel(ctx)
	r.mu.done = make(chan struct{})
	go r.loop(ctx, r.mu.done)
	return nil
}

// Stop stops the work Start began, stops counting every partition, waits
// the handoff guard (so that this instance's last releases fall out of the
// one-second window before another instance can use its partitions) and
// releases its leases. If ctx ends first, Stop returns ctx's error and the
// leases lapse by themselves. A Batcher calls Stop from Shutdown, after its
// last ProcessBatch returned.
func (r *SharedResource) Stop(ctx context.Context) error {
	r.mu.Lock()
	if !r.mu.started || r.mu.stopped || r.manager == nil {
		r.mu.stopped = true
		r.mu.Unlock()
		return nil
	}
	r.mu.stopped = true
	cancel, done := r.mu.cancel, r.mu.done
	r.mu.Unlock()
	cancel()
	<-done

	now := time.Now()
	r.mu.Lock()
	var held []int
	for p, l := range r.mu.leases {
		if l.counted {
			r.uncountLocked(p, l, now, "stopping")
		}
		held = append(held, p)
	}
	latest := now
	for _, l := range r.mu.leases {
		latest = later(latest, l.uncountedAt.Add(r.guard))
	}
	r.mu.Unlock()
	r.emitPending()

	// Withdraw the demand at once, so that the others stop counting this
	// instance in their fair shares.
	cctx, ccancel := context.WithTimeout(ctx, r.callTimeout)
	_, announceErr := r.manager.Announce(cctx, Demand{Owner: r.owner, TTL: r.demandTTL()})
	ccancel()

	t := time.NewTimer(latest.Sub(now))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return fmt.Errorf("ratelimiter: SharedResource stopped without releasing %d leases (they lapse by themselves): %w", len(held), ctx.Err())
	}
	errs := r.parallel(ctx, held, func(ctx context.Context, p int) error {
		return r.manager.Release(ctx, p, r.owner)
	})
	r.mu.Lock()
	clear(r.mu.leases)
	r.mu.Unlock()
	return errors.Join(announceErr, errors.Join(errs...))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// SetReservedCapacity changes the reserved capacity at run time. A negative
// capacity is refused, and nothing changes, with an error wrapping
// [batcher.ErrInvalidSetting].
func (r *SharedResource) SetReservedCapacity(capacity int) error {
	if capacity < 0 {
		return fmt.Errorf("%w: SharedResource reserved capacity is %d; it must be 0 or more", batcher.ErrInvalidSetting, capacity)
	}
	r.mu.Lock()
	r.mu.reserved = capacity
	r.mu.Unlock()
	r.emitPending()
	r.poke()
	return nil
}

// SetSharedCapacity changes the shared capacity at run time; every instance
// must be given the same. It must be a multiple of the factor and within
// the partition cap, else nothing changes and the error says why. When it
// drops, partitions beyond the new count stop counting at once; when it
// grows, the store is provisioned for the new partitions at the next round.
// A SharedResource without a lease manager refuses any shared capacity.
func (r *SharedResource) SetSharedCapacity(capacity int) error {
	if err := r.checkShared(capacity); err != nil {
		return err
	}
	if capacity > 0 && r.manager == nil {
		return fmt.Errorf("%w: SharedResource shared capacity %d needs a lease manager (WithSharedCapacity)", batcher.ErrInvalidSetting, capacity)
	}
	now := time.Now()
	r.mu.Lock()
	r.mu.shared = capacity
	if r.mu.started {
		r.mu.partitions = capacity / r.factor
		for p, l := range r.mu.leases {
			if p >= r.mu.partitions && l.counted {
				r.uncountLocked(p, l, now, "shared capacity lowered")
			}
		}
	}
	r.mu.Unlock()
	r.emitPending()
	r.poke()
	return nil
}

// Provision prepares the lease store for the partitions of the shared
// capacity, as Start's rounds also do. Call it to prepare the store ahead,
// at deployment say.
func (r *SharedResource) Provision(ctx context.Context) error {
	r.mu.Lock()
	n := r.mu.shared / max(r.factor, 1)
	r.mu.Unlock()
	if r.manager == nil {
		return nil
	}
	return r.provision(ctx, n)
}

func (r *SharedResource) provision(ctx context.Context, n int) error {
	r.listeners.Emit(batcher.Event{Kind: batcher.ProvisionStarted, Val: n})
	if err := r.manager.Provision(ctx, n); err != nil {
		return fmt.Errorf("ratelimiter: provisioning %d partitions: %w", n, err)
	}
	r.listeners.Emit(batcher.Event{Kind: batcher.ProvisionDone, Val: n})
	return nil
}

// Capacity returns the reserved capacity plus Factor for each partition
// counted now.
func (r *SharedResource) Capacity() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.capacityLocked(time.Now())
}

func (r *SharedResource) capacityLocked(now time.Time) int {
	return r.mu.reserved + r.factor*r.countedLocked(now)
}

// countedLocked returns how many partitions count at now.
func (r *SharedResource) countedLocked(now time.Time) int {
	n := 0
	for p, l := range r.mu.leases {
		if l.counted && p < r.mu.partitions && now.Before(l.validUntil.Add(-r.guard)) {
			n++
		}
	}
	return n
}

// Partitions returns how many partitions this instance counts now.
func (r *SharedResource) Partitions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.countedLocked(time.Now())
}

// CountedPartitions returns the partitions this instance counts now,
// ascending.
func (r *SharedResource) CountedPartitions() []int {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var ps []int
	for p, l := range r.mu.leases {
		if l.counted && p < r.mu.partitions && now.Before(l.validUntil.Add(-r.guard)) {
			ps = append(ps, p)
		}
	}
	slices.Sort(ps)
	return ps
}

// MaxCapacity returns the reserved plus the whole shared capacity: the most
// this instance could have, when the others want nothing.
func (r *SharedResource) MaxCapacity() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.reserved + r.mu.shared
}

// GiveMe sets the demand: the capacity, in cost units per second, that the
// Batcher would use (what it released in the last second plus what waits).
// The instance wants enough partitions for the largest demand of the last
// release delay, beyond its reserved capacity. A demand over the capacity
// starts a round at once, to lease more.
func (r *SharedResource) GiveMe(demand int) {
	if r.manager == nil {
		return // reserved capacity only
	}
	now := time.Now()
	r.mu.Lock()
	if len(r.mu.demands) >= 64 {
		r.pruneDemandsLocked(now)
	}
	r.mu.demands = append(r.mu.demands, demandAt{now, max(demand, 0)})
	short := demand > r.capacityLocked(now)
	r.mu.Unlock()
	if short {
		r.poke()
	}
}

// poke starts a round soon.
func (r *SharedResource) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// AddListener adds a listener for the limiter's events (capacity changes,
// partitions acquired and released, store errors) and returns its id.
func (r *SharedResource) AddListener(fn func(batcher.Event)) int { return r.listeners.AddListener(fn) }

// RemoveListener removes the listener with the given id.
func (r *SharedResource) RemoveListener(id int) { r.listeners.RemoveListener(id) }

// loop runs the rounds until ctx ends.
func (r *SharedResource) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	provisioned := -1
	backoff := time.Duration(0)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
			if backoff > 0 {
				continue // wait out the back-off; the timer is set
			}
		}
		err := r.round(ctx, &provisioned)
		if ctx.Err() != nil {
			return
		}
		wait := r.interval
		if err != nil {
			backoff = min(max(2*backoff, r.interval), maxErrorBackoff)
			wait = backoff
			// Provision again once the store answers: it may have come
			// back without its partitions (Azurite in memory does).
			provisioned = -1
			r.fail(err)
		} else {
			backoff = 0
		}
		r.emitPending()
		t.Reset(wait)
	}
}

// fail falls back to the reserved capacity: no partition counts until a
// renewal proves it is still held.
func (r *SharedResource) fail(err error) {
	now := time.Now()
	r.mu.Lock()
	for p, l := range r.mu.leases {
		if l.counted {
			r.uncountLocked(p, l, now, "store error")
		}
		// Counted again only after a renewal that succeeds.
		if l.validUntil.After(now) {
			l.validUntil = now
		}
	}
	r.mu.events = append(r.mu.events, batcher.Event{Kind: batcher.LimiterError, Err: err,
		Msg: "falling back to the reserved capacity until the lease store answers"})
	r.mu.Unlock()
}

// uncountLocked stops counting partition p now.
func (r *SharedResource) uncountLocked(p int, l *heldLease, now time.Time, why string) {
	l.counted = false
	l.uncountedAt = now
	r.mu.events = append(r.mu.events, batcher.Event{Kind: batcher.PartitionReleased, Val: p, Msg: why})
}

// emitPending emits the events noted under the lock, and CapacityChanged if
// the capacity changed since the last report. Listeners never run under the
// lock, so they may call any method.
func (r *SharedResource) emitPending() {
	r.mu.Lock()
	evs := r.mu.events
	r.mu.events = nil
	c := r.capacityLocked(time.Now())
	if c != r.mu.reported {
		r.mu.reported = c
		evs = append(evs, batcher.Event{Kind: batcher.CapacityChanged, Val: c})
	}
	r.mu.Unlock()
	for _, e := range evs {
		r.listeners.Emit(e)
	}
}

// callCtx returns a context for one store call.
func (r *SharedResource) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.callTimeout)
}

// parallel calls f for every partition in ps at once, each with its own
// call timeout, and returns the errors by position.
func (r *SharedResource) parallel(ctx context.Context, ps []int, f func(context.Context, int) error) []error {
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() {
			cctx, cancel := r.callCtx(ctx)
			defer cancel()
			errs[i] = f(cctx, p)
		})
	}
	wg.Wait()
	return errs
}

// round announces the demand, works out the fair share, and renews,
// acquires and releases leases to match it. It returns the first store
// error.
func (r *SharedResource) round(ctx context.Context, provisioned *int) error {
	now := time.Now()
	r.mu.Lock()
	partitions := r.mu.partitions
	r.mu.Unlock()
	if *provisioned < partitions {
		cctx, cancel := r.callCtx(ctx)
		err := r.provision(cctx, partitions)
		cancel()
		if err != nil {
			return err
		}
		*provisioned = partitions
	}

	// What this instance wants, and holds.
	r.mu.Lock()
	want := r.wantLocked(now)
	held := r.heldLocked()
	r.mu.Unlock()
	cctx, cancel := r.callCtx(ctx)
	demands, err := r.manager.Announce(cctx, Demand{Owner: r.owner, Want: want, Held: held, TTL: r.demandTTL()})
	cancel()
	if err != nil {
		return fmt.Errorf("ratelimiter: announcing the demand: %w", err)
	}
	r.mu.Lock()
	desired, taken := r.planLocked(demands, want, partitions)
	r.mu.Unlock()

	var renew, acquire, release []int
	now = time.Now()
	r.mu.Lock()
	// Leases to let go: uncounted for a guard, and not wanted back.
	counted := 0
	for p, l := range r.mu.leases {
		if l.counted && !now.Before(l.validUntil.Add(-r.guard)) {
			// Not renewed in time (the store answered, but not for this
			// one): it stops counting; a renewal may bring it back.
			r.uncountLocked(p, l, now, "expired")
		}
		if l.counted {
			counted++
		}
	}
	// Too many: stop counting the ones that expire first.
	if extra := counted - desired; extra > 0 {
		why := "not needed"
		if desired < want {
			why = "fair share"
		}
		for _, p := range r.byExpiryLocked(true) {
			if extra == 0 {
				break
			}
			r.uncountLocked(p, r.mu.leases[p], now, why)
			extra--
		}
		counted = desired
	}
	// Too few: take back uncounted leases first (a renewal proves them),
	// then lease new partitions.
	need := desired - counted
	for _, p := range r.byExpiryLocked(false) {
		if need == 0 {
			break
		}
		if p < partitions {
			renew = append(renew, p)
			need--
		}
	}
	for p, l := range r.mu.leases {
		if !l.counted && !slices.Contains(renew, p) && !now.Before(l.uncountedAt.Add(r.guard)) {
			release = append(release, p)
		}
		// Renew counted leases a third of the way through.
		if l.counted && now.After(l.validUntil.Add(-r.leaseDuration*2/3)) {
			renew = append(renew, p)
		}
	}
	r.mu.Unlock()

	// The calls: renewals and releases at once, then, for what the
	// renewals did not bring back, acquisitions.
	var firstErr error
	note := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	sent := time.Now()
	var wg sync.WaitGroup
	var resMu sync.Mutex
	results := func(ps []int, f func(context.Context, int) error, done func(p int, err error)) {
		wg.Go(func() {
			errs := r.parallel(ctx, ps, f)
			resMu.Lock()
			defer resMu.Unlock()
			for i, p := range ps {
				done(p, errs[i])
			}
		})
	}
	var acquired []int
	results(renew, func(ctx context.Context, p int) error {
		return r.manager.Renew(ctx, p, r.owner, r.leaseDuration)
	}, func(p int, err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		l := r.mu.leases[p]
		switch {
		case l == nil:
		case err == nil:
			l.validUntil = sent.Add(r.leaseDuration)
			if !l.counted && p < r.mu.partitions {
				// Taken back: an uncounted lease is renewed only for that.
				l.counted, l.uncountedAt = true, time.Time{}
				acquired = append(acquired, p)
			}
		case errors.Is(err, ErrLeaseLost):
			if l.counted {
				r.uncountLocked(p, l, time.Now(), "lease lost")
			}
			delete(r.mu.leases, p)
		default:
			note(fmt.Errorf("ratelimiter: renewing the lease on partition %d: %w", p, err))
		}
	})
	results(release, func(ctx context.Context, p int) error {
		return r.manager.Release(ctx, p, r.owner)
	}, func(p int, err error) {
		if err != nil {
			note(fmt.Errorf("ratelimiter: releasing the lease on partition %d: %w", p, err))
			return
		}
		r.mu.Lock()
		if l := r.mu.leases[p]; l != nil && !l.counted {
			delete(r.mu.leases, p)
		}
		r.mu.Unlock()
	})
	wg.Wait()
	if firstErr == nil {
		r.mu.Lock()
		counted := 0
		for _, l := range r.mu.leases {
			if l.counted {
				counted++
			}
		}
		if n := desired - counted; n > 0 {
			acquire = r.candidatesLocked(partitions, taken, n)
		}
		r.mu.Unlock()
		sent = time.Now()
		results(acquire, func(ctx context.Context, p int) error {
			return r.manager.Acquire(ctx, p, r.owner, r.leaseDuration)
		}, func(p int, err error) {
			switch {
			case err == nil:
				r.mu.Lock()
				r.mu.leases[p] = &heldLease{validUntil: sent.Add(r.leaseDuration), counted: true}
				r.mu.Unlock()
				acquired = append(acquired, p)
			case errors.Is(err, ErrLeaseHeld):
				// Someone else has it: another candidate next round.
			default:
				note(fmt.Errorf("ratelimiter: acquiring the lease on partition %d: %w", p, err))
			}
		})
		wg.Wait()
	}
	slices.Sort(acquired)
	r.mu.Lock()
	for _, p := range acquired {
		r.mu.events = append(r.mu.events, batcher.Event{Kind: batcher.PartitionAcquired, Val: p})
	}
	r.mu.Unlock()
	return firstErr
}

// demandTTL is how long the store keeps an announced demand: a few rounds,
// so a dead instance stops counting in others' fair shares soon.
func (r *SharedResource) demandTTL() time.Duration {
	return max(4*r.interval, 2*time.Second)
}

// wantLocked returns how many partitions the largest demand of the last
// release delay needs, beyond the reserved capacity.
func (r *SharedResource) wantLocked(now time.Time) int {
	r.pruneDemandsLocked(now)
	top := 0
	for _, d := range r.mu.demands {
		top = max(top, d.demand)
	}
	need := top - r.mu.reserved
	if need <= 0 || r.mu.partitions == 0 {
		return 0
	}
	return min((need+r.factor-1)/r.factor, r.mu.partitions)
}

// pruneDemandsLocked drops the demands older than the release delay, but
// the last one.
func (r *SharedResource) pruneDemandsLocked(now time.Time) {
	cut := now.Add(-r.releaseDelay)
	i := 0
	for i < len(r.mu.demands)-1 && r.mu.demands[i].at.Before(cut) {
		i++
	}
	r.mu.demands = r.mu.demands[:copy(r.mu.demands, r.mu.demands[i:])]
}

// heldLocked returns the partitions this instance holds, ascending.
func (r *SharedResource) heldLocked() []int {
	held := make([]int, 0, len(r.mu.leases))
	for p := range r.mu.leases {
		held = append(held, p)
	}
	slices.Sort(held)
	return held
}

// byExpiryLocked returns the counted (or, with counted false, the uncounted)
// partitions, the soonest to expire first.
func (r *SharedResource) byExpiryLocked(counted bool) []int {
	var ps []int
	for p, l := range r.mu.leases {
		if l.counted == counted {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b int) int {
		return r.mu.leases[a].validUntil.Compare(r.mu.leases[b].validUntil)
	})
	return ps
}

// planLocked returns how many partitions this instance should count, given
// every instance's demand, and the partitions others hold. While another
// instance holds less than its fair share, this one keeps to its own share;
// otherwise it may have, up to its want, what nobody holds.
func (r *SharedResource) planLocked(demands []Demand, want, partitions int) (desired int, taken map[int]bool) {
	shares := FairShares(demands, partitions)
	taken = make(map[int]bool)
	waiting := false
	for _, d := range demands {
		if d.Owner == r.owner {
			continue
		}
		for _, p := range d.Held {
			if p < partitions {
				taken[p] = true
			}
		}
		if len(d.Held) < shares[d.Owner] {
			waiting = true
		}
	}
	if waiting {
		return min(want, shares[r.owner]), taken
	}
	free, counted := 0, 0
	for p := range partitions {
		l, mine := r.mu.leases[p]
		switch {
		case mine && l.counted:
			counted++
		case !taken[p]:
			free++ // nobody's, or mine but not counted
		}
	}
	return min(want, counted+free), taken
}

// candidatesLocked returns up to need partitions to try to lease: ones
// neither this instance nor, as far as the demands say, another holds, in
// random order so that instances seldom race for the same one.
func (r *SharedResource) candidatesLocked(partitions int, taken map[int]bool, need int) []int {
	var free []int
	for p := range partitions {
		if _, mine := r.mu.leases[p]; !mine && !taken[p] {
			free = append(free, p)
		}
	}
	mrand.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	return free[:min(need, len(free))]
}

// FairShares divides partitions between the demands: each gets what it
// wants if that is no more than an equal split of what the smaller demands
// left, else the split, the remainder of which goes to the demands that
// sort last by (want, owner). Every instance computes the same shares from
// the same demands.
func FairShares(demands []Demand, partitions int) map[string]int {
	ds := slices.Clone(demands)
	slices.SortFunc(ds, func(a, b Demand) int {
		if a.Want != b.Want {
			return a.Want - b.Want
		}
		if a.Owner < b.Owner {
			return -1
		} else if a.Owner > b.Owner {
			return 1
		}
		return 0
	})
	shares := make(map[string]int, len(ds))
	left := partitions
	for i, d := range ds {
		fair := left / (len(ds) - i)
		s := min(max(d.Want, 0), fair)
		shares[d.Owner] = s
		left -= s
	}
	return shares
}
