package ratelimiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher"
)

// Adaptive defaults.
const (
	// DefaultAdaptiveDecrease is the factor a throttle multiplies the
	// capacity by: a cut of 20%, gentler than TCP's halving, because a
	// datastore's throughput is not a shared queue that overflows but a
	// budget that someone else uses part of.
	DefaultAdaptiveDecrease = 0.8
	// DefaultAdaptiveInterval is how often the capacity grows while no
	// throttle comes.
	DefaultAdaptiveInterval = time.Second
	// DefaultAdaptiveCooldown is how long after a cut further throttles
	// are taken as echoes of the same burst: one second, the Batcher's
	// window, which still holds what went out before the cut.
	DefaultAdaptiveCooldown = time.Second
)

// Adaptive wraps another rate limiter and grants less than it when the
// datastore throttles, as TCP does with its window: each throttle cuts the
// capacity it grants multiplicatively (by the decrease factor), and every
// interval without a throttle adds a step back, until it reaches the wrapped
// limiter's capacity again and follows it. It suits a datastore whose
// throughput others use too, such as a Cosmos DB container written by
// another service: the Batcher then settles just under what is left.
//
// [Controller] finds the throughput faster, cutting to what the datastore
// served rather than by a fixed factor, and probing back up in seconds;
// prefer it when the configured capacity may be far off.
//
// # Wiring
//
// None: Adaptive is a [batcher.Learner], so a Batcher whose rate limiter it
// is tells it of every batch's throttles itself:
//
//	lim := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(10000))
//	b := batcher.NewBatcher().WithRateLimiter(lim)
//
// A throttle of a batch released before the last cut is an echo of what
// caused that cut (the batch went out at the capacity before it) and is
// ignored. A program that sees throttles some other way calls
// [Adaptive.Observe] with an event of kind Throttled; adding Observe as a
// listener of the Batcher as well, as was needed before, is harmless (the
// two reports of one throttle fall within the cooldown).
//
// # The rule
//
// Capacity is the lower of the adaptive limit and the wrapped limiter's
// capacity; at first the adaptive limit is unset and Capacity is the wrapped
// limiter's. Then:
//
//   - A throttle cuts the limit to the decrease factor times Capacity
//     (rounded down), but not below the floor. Throttles within the cooldown
//     after a cut are taken as echoes of the same burst (the many operations
//     of a batch, several batches in flight, the releases the Batcher's
//     one-second window still holds) and do not cut again.
//   - Each interval after the last throttle or growth step, the limit grows
//     by the step. Once it has grown past the capacity of the last cut
//     without a throttle, what others took has probably gone: each step is
//     then twice the one before (up to 32 steps at once), to find the
//     throughput again quickly. Once the limit reaches the wrapped limiter's
//     capacity it is unset again, and Capacity follows the wrapped limiter
//     up and down.
//
// With the defaults (a factor of 0.8, a step of 0.5% of the wrapped capacity
// a second, a cooldown of 1s), a capacity P cut once from its whole takes 40
// seconds to grow back; a sudden loss of 60% of the throughput takes about
// four cuts, four seconds, to follow; and after the others leave, growth
// from 0.6 P back to P takes about 8 seconds once past the last cut. When
// others keep using part of the throughput, the limit cycles between the
// capacity left C and 0.8 C: one burst of throttles every 0.2 C / step
// seconds (40 s with C = P, 24 s with C = 0.6 P). The 429s of one burst are
// about one flush's worth of requests, so under 1% of requests are throttled
// when a cycle spans more than 100 flushes (10 s at the Batcher's default
// FlushInterval). A bigger step finds freed throughput sooner and is
// throttled more often.
//
// # Events
//
// Adaptive emits a [batcher.CapacityChanged] event each time Capacity
// changes: Val is the new capacity and Msg says why ("throttled", "grown",
// "probing" for steps past the last cut, "recovered" when it reaches the
// wrapped capacity again, or "wrapped limiter" when the wrapped limiter
// changed). Events are emitted by its own
// goroutine, one at a time, in order. The wrapped limiter's other events
// (leases, say) are passed on as they are; its CapacityChanged events are
// not, since Adaptive reports the capacity that results. Changes of a wrapped
// limiter that is not a [batcher.EventSource] are noticed at the next
// interval.
//
// Adaptive is not a [batcher.Pacer]: wrapping a [TokenBucket] keeps its rate,
// not its shape within the second.
//
// Create it with [NewAdaptive], configure it with the With* methods, and
// Start it (a Batcher starts its limiter). It is safe for concurrent use.
type Adaptive struct {
	inner batcher.RateLimiter

	// Settings, written by With* before Start.
	decrease float64
	step     int
	interval time.Duration
	cooldown time.Duration
	floor    int

	started atomic.Bool // With* panics once set

	// limit is the adaptive limit, or -1 when unset. Only the loop writes it.
	limit atomic.Int64

	running   atomic.Bool
	lastCut   atomic.Int64  // when the loop last cut, in Unix nanoseconds; 0 before any
	throttles chan struct{} // a throttle came; capacity 1, so bursts merge
	innerChg  chan struct{} // the wrapped limiter's capacity changed

	mu       sync.Mutex // serialises Start and Stop
	stopLoop context.CancelFunc
	loopDone chan struct{}

	listeners batcher.Listeners
}

// NewAdaptive returns a limiter that grants at most what inner grants, less
// after throttles; see [Adaptive] for the rule and the wiring. Its defaults:
// a decrease factor of 0.8, a growth step of 0.5% of inner's capacity every
// second, a cooldown of 1s and a floor of 1% of inner's capacity. Start
// reports a nil inner limiter and bad settings.
func NewAdaptive(inner batcher.RateLimiter) *Adaptive {
	a := &Adaptive{
		inner:     inner,
		decrease:  DefaultAdaptiveDecrease,
		interval:  DefaultAdaptiveInterval,
		cooldown:  DefaultAdaptiveCooldown,
		throttles: make(chan struct{}, 1),
		innerChg:  make(chan struct{}, 1),
	}
	a.limit.Store(-1)
	return a
}

func (a *Adaptive) checkNotStarted(method string) {
	if a.started.Load() {
		panic("ratelimiter: Adaptive." + method + " called after Start")
	}
}

// WithDecrease sets the factor a throttle multiplies the capacity by. The
// default is 0.8 (a cut of 20%); factor must be more than 0 and less than 1.
// It panics after Start.
func (a *Adaptive) WithDecrease(factor float64) *Adaptive {
	a.checkNotStarted("WithDecrease")
	a.decrease = factor
	return a
}

// WithIncrease sets how the capacity grows back while no throttle comes: by
// step cost units per second, every interval (and by twice as much at each
// step once past the capacity of the last cut; see [Adaptive]). The
// defaults are a step of 0.5% of the wrapped limiter's capacity at the time
// (at least 1) and an
// interval of 1s. A step of 0 means the default; a negative step is invalid,
// and interval must be more than 0. It panics after Start.
func (a *Adaptive) WithIncrease(step int, interval time.Duration) *Adaptive {
	a.checkNotStarted("WithIncrease")
	a.step, a.interval = step, interval
	return a
}

// WithCooldown sets how long after a cut further throttles are merged into
// it rather than cutting again. The default is 1s; 0 means every throttle
// cuts; negative values are invalid. It panics after Start.
func (a *Adaptive) WithCooldown(d time.Duration) *Adaptive {
	a.checkNotStarted("WithCooldown")
	a.cooldown = d
	return a
}

// WithFloor sets the least capacity throttles can cut to, so that releases
// never stop altogether. The default, 0, means 1% of the wrapped limiter's
// capacity at the time of the cut, at least 1; negative values are invalid.
// Capacity is still never more than the wrapped limiter's. It panics after
// Start.
func (a *Adaptive) WithFloor(units int) *Adaptive {
	a.checkNotStarted("WithFloor")
	a.floor = units
	return a
}

func (a *Adaptive) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{batcher.ErrInvalidSetting}, args...)...))
	}
	if a.inner == nil {
		bad("Adaptive wrapped limiter is nil")
	}
	if !(a.decrease > 0 && a.decrease < 1) {
		bad("Adaptive decrease factor is %v; it must be more than 0 and less than 1", a.decrease)
	}
	if a.step < 0 {
		bad("Adaptive increase step is %d; it must be 0 (the default) or more", a.step)
	}
	if a.interval <= 0 {
		bad("Adaptive increase interval is %v; it must be more than 0", a.interval)
	}
	if a.cooldown < 0 {
		bad("Adaptive cooldown is %v; it must be 0 or more", a.cooldown)
	}
	if a.floor < 0 {
		bad("Adaptive floor is %d; it must be 0 (the default) or more", a.floor)
	}
	return errors.Join(errs...)
}

// Start checks the settings, starts the wrapped limiter with ctx, and starts
// Adaptive's own goroutine, which runs until ctx is cancelled or Stop is
// called. It returns an error naming every bad setting (each wrapping
// [batcher.ErrInvalidSetting]), the wrapped limiter's error, or, while
// already running, an error wrapping [batcher.ErrImproperOrder]. Once ctx has
// ended, Adaptive may be started again; it keeps its limit.
func (a *Adaptive) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running.Load() {
		return fmt.Errorf("%w: Adaptive started twice", batcher.ErrImproperOrder)
	}
	if err := a.validate(); err != nil {
		return err
	}
	if err := a.inner.Start(ctx); err != nil {
		return fmt.Errorf("ratelimiter: starting Adaptive's wrapped limiter: %w", err)
	}
	a.started.Store(true)
	// Throttles reported while stopped are stale.
	select {
	case <-a.throttles:
	default:
	}
	loopCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	a.stopLoop, a.loopDone = cancel, done
	a.running.Store(true)
	src, _ := a.inner.(batcher.EventSource)
	id := 0
	if src != nil {
		id = src.AddListener(a.innerEvent)
	}
	go func() {
		defer close(done)
		defer a.running.Store(false)
		if src != nil {
			defer src.RemoveListener(id)
		}
		a.run(loopCtx)
	}()
	return nil
}

// Stop stops Adaptive's goroutine and waits for it, then stops the wrapped
// limiter if it is a [batcher.Stopper] and returns its error; a Batcher's
// Shutdown calls it. It returns ctx.Err() if ctx ends first. After Stop,
// Capacity keeps the last limit.
func (a *Adaptive) Stop(ctx context.Context) error {
	a.mu.Lock()
	cancel, done := a.stopLoop, a.loopDone
	a.mu.Unlock()
	if cancel != nil {
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s, ok := a.inner.(batcher.Stopper); ok {
		return s.Stop(ctx)
	}
	return nil
}

// Observe takes note of e if it reports a throttle (kind
// [batcher.Throttled]) and ignores any other event, so it can be added as a
// listener of a Batcher: b.AddListener(lim.Observe). It never blocks; the cut
// is made by Adaptive's goroutine a moment later. Throttles while Adaptive is
// not running are ignored.
func (a *Adaptive) Observe(e batcher.Event) {
	if e.Kind != batcher.Throttled || !a.running.Load() {
		return
	}
	select {
	case a.throttles <- struct{}{}:
	default: // one is pending already: the same burst
	}
}

// ObserveBatch takes note of a batch's throttles, unless the batch was
// released before the last cut (an echo); a Batcher calls it for each batch
// (see [batcher.Learner]). It never blocks; the cut is made by Adaptive's
// goroutine a moment later, as with Observe.
func (a *Adaptive) ObserveBatch(o batcher.BatchOutcome) {
	if o.Throttled <= 0 || !a.running.Load() {
		return
	}
	if lc := a.lastCut.Load(); lc != 0 && o.Released.UnixNano() < lc {
		return
	}
	select {
	case a.throttles <- struct{}{}:
	default: // one is pending already: the same burst
	}
}

// innerEvent passes the wrapped limiter's events on, except its capacity
// changes, which the loop turns into changes of Capacity.
func (a *Adaptive) innerEvent(e batcher.Event) {
	if e.Kind != batcher.CapacityChanged {
		a.listeners.Emit(e)
		return
	}
	select {
	case a.innerChg <- struct{}{}:
	default:
	}
}

// maxProbe is the most steps one growth step may take while probing.
const maxProbe = 32

// run is Adaptive's goroutine: it makes the cuts, the growth steps, and
// emits the changes.
func (a *Adaptive) run(ctx context.Context) {
	last := a.Capacity() // the capacity last announced, or found at Start
	emit := func(why string) {
		if c := a.Capacity(); c != last {
			last = c
			a.listeners.Emit(batcher.Event{Kind: batcher.CapacityChanged, Val: c, Msg: why})
		}
	}
	var (
		lastCut time.Time
		cut     bool
		g       growth
	)
	tick := time.NewTimer(a.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.throttles:
			now := time.Now()
			// Growth waits a whole interval after any throttle, merged or not.
			tick.Reset(a.interval)
			if cut && now.Sub(lastCut) < a.cooldown {
				continue
			}
			cut, lastCut = true, now
			g = growth{from: a.cutLimit(), steps: 1}
			a.lastCut.Store(now.UnixNano())
			emit("throttled")
		case <-a.innerChg:
			emit("wrapped limiter")
		case <-tick.C:
			tick.Reset(a.interval)
			emit(a.grow(&g))
		}
	}
}

// growth is the state of growth since the last cut.
type growth struct {
	from  int64 // the capacity the last cut was made from
	steps int64 // how many steps the next growth step takes
}

// cutLimit sets the limit to the decrease factor times the capacity, but not
// below the floor, and returns the capacity it cut from.
func (a *Adaptive) cutLimit() int64 {
	c := a.Capacity()
	floor := a.floor
	if floor == 0 {
		floor = max(1, a.inner.Capacity()/100)
	}
	// The small addend keeps 0.29*100 at 29, not 28.999... rounded down.
	n := int(math.Floor(float64(c)*a.decrease + 1e-9))
	a.limit.Store(int64(max(n, floor)))
	return int64(c)
}

// grow adds g's steps to the limit, and unsets it once it reaches the
// wrapped limiter's capacity. It returns the reason to give if Capacity
// changed.
func (a *Adaptive) grow(g *growth) string {
	l := a.limit.Load()
	if l < 0 {
		return "wrapped limiter" // nothing to grow; the wrapped one may have changed
	}
	inner := int64(a.inner.Capacity())
	step := int64(a.step)
	if step == 0 {
		step = max(1, inner/200)
	}
	l += step * max(g.steps, 1)
	if l >= inner {
		a.limit.Store(-1)
		*g = growth{}
		return "recovered"
	}
	a.limit.Store(l)
	if l > g.from {
		// Past the last cut without a throttle: probe.
		g.steps = min(2*max(g.steps, 1), maxProbe)
		return "probing"
	}
	return "grown"
}

// Capacity returns the capacity granted now: the wrapped limiter's, or the
// adaptive limit if that is lower.
func (a *Adaptive) Capacity() int {
	c := a.inner.Capacity()
	if l := a.limit.Load(); l >= 0 && l < int64(c) {
		return int(l)
	}
	return c
}

// Limit returns the adaptive limit, or -1 while there is none (after
// growing back, Capacity follows the wrapped limiter).
func (a *Adaptive) Limit() int { return int(a.limit.Load()) }

// MaxCapacity returns the wrapped limiter's MaxCapacity: a throttle does not
// make an operation too expensive, it only has to wait longer.
func (a *Adaptive) MaxCapacity() int { return a.inner.MaxCapacity() }

// GiveMe passes the target on to the wrapped limiter.
func (a *Adaptive) GiveMe(target int) { a.inner.GiveMe(target) }

// AddListener adds a listener for capacity changes, and for the wrapped
// limiter's other events, and returns its id.
func (a *Adaptive) AddListener(fn func(batcher.Event)) int { return a.listeners.AddListener(fn) }

// RemoveListener removes the listener with the given id.
func (a *Adaptive) RemoveListener(id int) { a.listeners.RemoveListener(id) }
