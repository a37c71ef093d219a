package ratelimiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher"
)

// Controller defaults and constants; see [Controller] for the rule they
// belong to.
const (
	// DefaultControllerWindow is the observation window: throttles seen
	// within one window are one signal, and the throughput served is
	// measured over the last window. One second: the Batcher's capacity
	// window, and the window most datastores (Cosmos DB among them) count
	// their throughput by.
	DefaultControllerWindow = time.Second
	// DefaultControllerBackoff is how far below the throughput served in
	// the window of a throttle a cut sets the capacity: 5%, room for the
	// requests that reach the datastore's next second rather than the one
	// they were released in.
	DefaultControllerBackoff = 0.05
	// ControllerTicksPerWindow is how many times per window the Controller
	// decides: a tick is a quarter of the window (250ms by default).
	ControllerTicksPerWindow = 4
	// ControllerProbeStep is the first growth step past the knee, as a
	// fraction of the knee (0.25%); it is also the least step below the
	// knee. Small, because the overshoot it leads to is what a steady
	// datastore throttles: a probe with steps twice as big drew four times
	// the 429s in the scenario tests, and found a doubled throughput only
	// half a second sooner.
	ControllerProbeStep = 0.0025
	// ControllerProbeGrowth is how much bigger each growth step past the
	// knee is than the one before, once ControllerProbeFlat ticks have
	// passed: 1.5 times, so the capacity gains 3% of the knee in the first
	// window of growing steps, 18% by the second, 96% by the third.
	ControllerProbeGrowth = 1.5
	// ControllerProbeFlat is how many ticks past the knee the growth steps
	// stay ControllerProbeStep of the knee before they grow: 8, two
	// windows, in which the capacity gains 1% of the knee a window. A cut's
	// knee is what the datastore served in the window that throttled,
	// which may fall short of what it serves by a batch or so (a batch
	// that no longer fits in its window is throttled whole); near the knee
	// the probe goes slowly, so that it finds the datastore's limit a
	// percent or so over, not 10-25% over as a growing step does in the
	// second or so an answer takes to tell. Not longer: with 12 flat ticks
	// a throughput that came back from 40% to 100% was found so slowly
	// that 0.84-0.98 of it (median 0.90) was used from 5s after its
	// return, against 0.91-0.98 (median 0.98) with 8, for about one 429
	// more in a steady datastore's 30s (cmd/cosmosbench S2-S4,
	// docs/throughput.md).
	ControllerProbeFlat = 8
	// ControllerLooseCut is how many times the knee the capacity must have
	// been at the last cut for the probe to skip its flat steps: twice. A
	// capacity far over what the datastore's window served (a slow start
	// that doubled past it, a throughput that fell by more than half, a
	// window whose work was held back) says the knee is only a lower bound
	// of what the datastore serves, so the probe grows at once, as a
	// throughput that doubled needs.
	ControllerLooseCut = 2
	// ControllerUsedShare is the least share of the capacity the last
	// window must have served for the capacity to grow after a cut: 80%.
	// Capacity that is not used (the Batcher paused, a lane waiting out a
	// retry-after, work that needs less) proves nothing about the
	// datastore.
	ControllerUsedShare = 0.8
	// ControllerInitialShare is the share of the ceiling a Controller
	// starts at by default: 1/32, so that five doublings reach the ceiling.
	ControllerInitialShare = 32
	// ControllerLaneShare is the share of what the datastore's window
	// served that the lanes throttled in it must have carried for their
	// throttles to cut the capacity: more than half; and they must be more
	// than half of the lanes that served in it. A throttle that only a lane
	// or two see (a hot partition, with its own budget) is left to their
	// own pauses; one that most lanes, carrying most of the work, see is
	// the datastore's as a whole. Throttles of watchers without a
	// [batcher.Lane] always count as the whole datastore's.
	ControllerLaneShare = 0.5
	// MaxControllerHold bounds how long a retry-after holds growth back
	// (an hour's retry-after from a confused server holds it one minute).
	MaxControllerHold = time.Minute
)

// Controller is a rate limiter that finds the throughput a datastore really
// gives, up to a configured ceiling: when the ceiling is more than the
// datastore serves (a wrong figure, other tenants, a partition split, an
// autoscale that has not scaled yet), it cuts its capacity to what the
// datastore served while it throttled, and probes back up, fast once past
// that point, so that freed throughput is found again in seconds. It never
// grants more than the ceiling.
//
// A Controller is a [batcher.Learner]: a [batcher.Batcher] whose rate
// limiter it is tells it how each batch went, with no wiring.
//
// # The rule
//
// The Controller keeps its capacity L and the knee K: the throughput the
// datastore served in the window of the last cut, or L if that is less (0
// before any cut). A batch serves its Cost times Succeeded/Operations, which
// the Controller counts twice, in buckets of 1/40 of the observation window
// W (default 1s): at the moment the batch was released (when its requests
// reached the datastore, near enough) and at the moment it returned. It grows L at ticks, a quarter of W
// apart (250ms), and cuts it when throttles come.
//
//   - Start. L starts at the initial capacity (default 1/32 of the
//     ceiling) and, until the first cut, doubles at each tick that saw a
//     batch succeed that was released at the current L (since it last
//     doubled), and no throttle, up to the ceiling: as TCP's slow start, it
//     sends more only once what it sent has come back well, so a ceiling 20
//     times too high costs a few 429s, not a second's worth, however slow
//     the answers.
//   - Cut. When a throttle comes from a batch released at or after one
//     tick past the last cut (a batch released before that went out at the
//     capacity before the cut: it is an echo of the same signal), and a
//     whole window has passed since the last cut, L is cut at once: K =
//     min(L, served), with served what the datastore's window that
//     throttled has served so far (the batches released in it, or the
//     answers that came in it if they served more: answers slow to come,
//     or requests held up on their way, skew the first), and L =
//     (1 - backoff) * K, at least the floor. A retry-after shorter than W
//     says when that window ends, so where it began (a datastore such as
//     Cosmos DB counts throughput in fixed windows, and answers a throttle
//     with the time to the next); without one, the window is the last W. The ticks that follow settle
//     the cut on that window, with the answers that were still on their
//     way when the throttle came, until they have all come (the window's
//     end plus the longest a batch took in the last window, four windows
//     at most): if the window served more, K and L rise to match (a
//     settled cut is never deeper than the first).
//     One cut per window, however many operations, batches or watchers
//     throttled in it: one burst of throttles is one signal. And only
//     when the lanes throttled in the window are more than half of those
//     that served in it and carried more than ControllerLaneShare (half)
//     of what it served, or a watcher without a lane was throttled (see
//     Throttles per lane). A throttle
//     within the window of a cut that is not an echo waits for the
//     window's end, and the first tick after it cuts on that throttle's
//     window (what went out after the last cut only, at its rate over a
//     whole window).
//   - Hold. After a cut, L does not grow for a window, nor until the
//     longest retry-after the datastore gave with the throttles has passed
//     (at most MaxControllerHold): a retry-after says when the datastore's
//     own window starts again. A retry-after of zero or less is none.
//   - Recover. At each later tick with no throttle pending, the Batcher's
//     demand (what it gave GiveMe) at least L, and at least
//     ControllerUsedShare (80%) of L served in the last window (by the
//     batches released in it, or by the answers that came in it), L
//     grows:
//     below the knee, by half the way to it (at least
//     ControllerProbeStep*K), up to K; from K on, by steps of
//     ControllerProbeStep*K (of the floor if K is less), 1% of K a window,
//     for ControllerProbeFlat ticks (two windows; none if L was more
//     than ControllerLooseCut times K when the cut came), and then by steps
//     that grow ControllerProbeGrowth times each tick: from 0.95 K back to
//     K in about 1.5s, then 1%, 2% over K at the end of the two windows
//     that follow, then 5%, 20% and 99% at the end of the next three, and
//     more than twice K early in the sixth, up to the ceiling. So a
//     steady datastore is probed gently (an overshoot of a percent or two,
//     for about a window, every four to six seconds, though its knee
//     measures a batch or so short), and a throughput that doubles is
//     found within about six seconds.
//
// While the capacity is not used (the work needs less, or the Batcher or a
// lane waits out a pause) L does not grow: what is not used proves nothing.
//
// With a datastore that serves R in fixed one-second windows, limited at 2
// R or 20 R, the scenario tests measure (from 5s on) 98% of R used, with
// 0.15% of the requests throttled: L cycles between 0.95 R and a percent or
// so over R. Written to as the cosmosbulk Loader writes (16 watchers in one
// lane, transactional batches of 5% of R, answers in 100ms), 95-96% of R
// is used, the capacity peaks at most 6% over R (10-22% with steps that
// grow at once) and 0.8-0.9% of the requests are throttled. When R drops
// to 40%, the next window's throttles cut L under it at once (98% of the
// new R used from 5s after the change); when it comes back, L finds it
// within about seven seconds (93% of R used from 5s after the change). With
// four partitions whose lanes throttle apart and a hot one, the cold ones
// finish at 1.27 times their ideal (1.6-1.9 times when every throttle cut
// the capacity).
//
// # Throttles per lane
//
// The Batcher pauses the releases a throttle concerns (its watcher's lane)
// for the datastore's retry-after. The two do not fight: the lane waits out the
// datastore's window, and the Controller adjusts the rate of the windows
// that follow, from one signal per window. A lane's wait is not taken as
// lost throughput or demand: the Controller cuts only on throttles, never
// on a low measure of what was served or asked for; it holds its growth
// while the retry-after runs, and while the capacity is not used; and it
// measures a cut on the datastore's window, not on a second that holds a
// lane's wait.
//
// A throttle that only some lanes see does not cut the capacity of all: it
// cuts only when the lanes throttled in the datastore's window (each
// [batcher.Watcher.Lane], counted once however many of its watchers were
// throttled) are more than half of the lanes that served in it, and
// carried more than ControllerLaneShare of what it served. So the Loader's
// lanes, one per physical partition of a Cosmos DB container, keep the
// whole capacity while one hot partition waits out its own 429s, and the
// cold partitions use it, even while the hot one carries most of the work;
// when most partitions (or the only one) throttle, or the hot one is all
// that is left to write, the capacity is cut as before. Watchers without a lane are taken as one
// budget: their throttles cut as the rule says.
//
// # Events
//
// The Controller emits a [batcher.CapacityChanged] event each time its
// capacity changes: Val is the new capacity; Msg is why: "starting"
// (doubling before the first cut), "throttled" (a cut; Duration is the
// hold), "recovering" (growth below the knee) or "probing" (growth past
// it). Events are emitted by its own goroutine, one at a time, in order.
//
// Create it with [NewController], configure it with the With* methods, and
// Start it (a Batcher starts its limiter). Its methods are safe for
// concurrent use.
type Controller struct {
	// Settings, written by With* before Start.
	ceiling int
	floor   int
	initial int
	window  time.Duration
	backoff float64

	started atomic.Bool // With* panics once set

	capacity atomic.Int64 // L, rounded down, for Capacity
	demand   atomic.Int64 // the last GiveMe

	mu struct {
		sync.Mutex
		limit    float64   // L
		knee     float64   // K; 0 before the first cut
		step     float64   // the next growth step past the knee, 0 until the first
		cutAt    time.Time // when the last cut was made; zero before any
		holdTo   time.Time // no growth before it
		pending  bool      // a throttle came that is not an echo, within the window of the last cut
		probes   int       // ticks of growth past the knee since the last cut
		cutFrom  float64   // L when the last cut came
		after    time.Duration
		settle   float64                        // L before a cut made between ticks, which the ticks that follow settle; 0 if none
		events   []batcher.Event                // changes for the goroutine to emit, in order
		wake     chan struct{}                  // tells the goroutine of events; capacity 1
		good     bool                           // a batch released since changed succeeded, since the last tick
		changed  time.Time                      // when L last grew while starting
		served   []bucket                       // served, by the moment of release; a ring of two windows
		answered []bucket                       // the same by the moment of the answer
		byAnswer float64                        // what the answers since the datastore's window began served, at the last cut
		from     time.Time                      // the start of the window a cut between ticks measured, for the tick to settle it on
		pendFrom time.Time                      // the same for a pending throttle
		latNow   time.Duration                  // the longest a batch took, since the last tick
		lats     []time.Duration                // the same for each of the last ticks of a window, a ring
		latNext  int                            // where the tick ending now goes in lats
		lanes    map[*batcher.Lane]*laneMeasure // what each lane served, and when it was last throttled
		throttle int64                          // operations throttled, in all
		ops      int64                          // operations observed, in all
	}

	running  atomic.Bool
	startMu  sync.Mutex // serialises Start and Stop
	stopLoop context.CancelFunc
	loopDone chan struct{}

	listeners batcher.Listeners
}

// NewController returns a Controller whose capacity never exceeds ceiling
// cost units per second, the throughput configured for the datastore. Its
// defaults: an initial capacity of 1/32 of the ceiling, a floor of 1% of
// the ceiling (at least 1), an observation window of 1s and a backoff of
// 5%. Start reports a ceiling under 1 and bad settings.
func NewController(ceiling int) *Controller {
	return &Controller{
		ceiling: ceiling,
		window:  DefaultControllerWindow,
		backoff: DefaultControllerBackoff,
	}
}

func (c *Controller) checkNotStarted(method string) {
	if c.started.Load() {
		panic("ratelimiter: Controller." + method + " called after Start")
	}
}

// WithFloor sets the least capacity a cut leaves, so that releases never
// stop altogether. The default, 0, means 1% of the ceiling, at least 1; it
// must not be negative nor more than the ceiling. It panics after Start.
func (c *Controller) WithFloor(units int) *Controller {
	c.checkNotStarted("WithFloor")
	c.floor = units
	return c
}

// WithInitial sets the capacity the Controller starts at, before anything
// is known of the datastore. The default, 0, means 1/32 of the ceiling (at
// least the floor): until the first throttle, the capacity doubles at
// every tick that saw a batch released at the current capacity succeed
// (five doublings reach the ceiling, in about 1.25s if batches take less
// than a tick), so that a ceiling far above what the datastore serves
// does not send a whole second of it at once before the first answer
// comes back. It must not be negative nor more than the ceiling; the
// ceiling itself starts there, for a datastore known to serve it. It
// panics after Start.
func (c *Controller) WithInitial(units int) *Controller {
	c.checkNotStarted("WithInitial")
	c.initial = units
	return c
}

// WithWindow sets the observation window: throttles within one are one
// signal, the throughput served is measured over it, and a cut holds growth
// back for one. The default is 1s, the window the Batcher and most
// datastores count throughput by; it must be at least 10ms. It panics after
// Start.
func (c *Controller) WithWindow(d time.Duration) *Controller {
	c.checkNotStarted("WithWindow")
	c.window = d
	return c
}

// WithBackoff sets how far below the throughput served in the window of a
// throttle a cut sets the capacity, as a fraction: the default is 0.05
// (5%); it must be 0 or more and less than 1. A bigger backoff throttles
// less often and leaves more of the throughput unused. It panics after
// Start.
func (c *Controller) WithBackoff(fraction float64) *Controller {
	c.checkNotStarted("WithBackoff")
	c.backoff = fraction
	return c
}

func (c *Controller) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{batcher.ErrInvalidSetting}, args...)...))
	}
	if c.ceiling < 1 {
		bad("Controller ceiling is %d; it must be 1 or more", c.ceiling)
	}
	if c.floor < 0 || (c.ceiling >= 1 && c.floor > c.ceiling) {
		bad("Controller floor is %d; it must be 0 (the default) to the ceiling, %d", c.floor, c.ceiling)
	}
	if c.initial < 0 || (c.ceiling >= 1 && c.initial > c.ceiling) {
		bad("Controller initial capacity is %d; it must be 0 (the default) to the ceiling, %d", c.initial, c.ceiling)
	}
	if c.window < 10*time.Millisecond {
		bad("Controller window is %v; it must be at least 10ms", c.window)
	}
	if !(c.backoff >= 0 && c.backoff < 1) {
		bad("Controller backoff is %v; it must be 0 or more and less than 1", c.backoff)
	}
	return errors.Join(errs...)
}

// Start checks the settings and starts the Controller's goroutine, which
// runs until ctx is cancelled or Stop is called. It returns an error naming
// every bad setting (each wrapping [batcher.ErrInvalidSetting]) or, while
// already running, an error wrapping [batcher.ErrImproperOrder]. Once ctx
// has ended, the Controller may be started again; it keeps its capacity and
// knee, and forgets what it measured.
func (c *Controller) Start(ctx context.Context) error {
	c.startMu.Lock()
	defer c.startMu.Unlock()
	if c.running.Load() {
		return fmt.Errorf("%w: Controller started twice", batcher.ErrImproperOrder)
	}
	if err := c.validate(); err != nil {
		return err
	}
	c.mu.Lock()
	if !c.started.Load() {
		if c.floor == 0 {
			c.floor = max(1, c.ceiling/100)
		}
		if c.initial == 0 {
			c.initial = min(max(c.ceiling/ControllerInitialShare, c.floor), c.ceiling)
		}
		c.mu.limit = float64(c.initial)
		c.capacity.Store(int64(c.initial))
		c.started.Store(true)
	}
	c.mu.served = make([]bucket, 2*controllerBuckets)
	c.mu.answered = make([]bucket, 2*controllerBuckets)
	c.mu.lats, c.mu.latNow, c.mu.latNext = make([]time.Duration, ControllerTicksPerWindow), 0, 0
	c.mu.pending, c.mu.after, c.mu.settle = false, 0, 0
	// Made here, not in NewController, so that it belongs to a synctest
	// bubble the Controller is started in.
	wake := make(chan struct{}, 1)
	c.mu.wake = wake
	c.mu.Unlock()
	loopCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	c.stopLoop, c.loopDone = cancel, done
	c.running.Store(true)
	go func() {
		defer close(done)
		defer c.running.Store(false)
		c.run(loopCtx, wake)
	}()
	return nil
}

// Stop stops the Controller's goroutine and waits for it, or returns
// ctx.Err() if ctx ends first; a Batcher's Shutdown calls it. Capacity
// keeps its last value.
func (c *Controller) Stop(ctx context.Context) error {
	c.startMu.Lock()
	cancel, done := c.stopLoop, c.loopDone
	c.startMu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ObserveBatch takes note of what a batch showed: what it served and
// whether the datastore throttled it. The Batcher calls it; it is quick and
// never blocks (the event of a cut is emitted by the Controller's
// goroutine). A throttle that may cut cuts at once (see [Controller]);
// growth waits for the next tick. Outcomes while the Controller is not
// running are ignored.
func (c *Controller) ObserveBatch(o batcher.BatchOutcome) {
	if !c.running.Load() || o.Operations <= 0 {
		return
	}
	served := float64(max(o.Cost, 0))
	if o.Succeeded < o.Operations {
		served = served * float64(max(o.Succeeded, 0)) / float64(o.Operations)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := &c.mu
	c.addLocked(m.served, o.Released, served)
	c.addLocked(m.answered, o.Returned, served)
	var lm *laneMeasure
	if o.Watcher != nil && o.Watcher.Lane() != nil {
		lane := o.Watcher.Lane()
		if lm = m.lanes[lane]; lm == nil {
			if m.lanes == nil {
				m.lanes = map[*batcher.Lane]*laneMeasure{}
			}
			lm = &laneMeasure{served: make([]bucket, 2*controllerBuckets)}
			m.lanes[lane] = lm
		}
		c.addLocked(lm.served, o.Released, served)
		lm.seen = o.Returned
	}
	m.latNow = max(m.latNow, o.Returned.Sub(o.Released))
	m.good = m.good || (o.Succeeded > 0 && !o.Released.Before(m.changed))
	m.ops += int64(o.Operations)
	if o.Throttled <= 0 {
		return
	}
	m.throttle += int64(o.Throttled)
	if !m.cutAt.IsZero() && o.Released.Before(m.cutAt.Add(c.tick())) {
		return // released before the last cut reached the Batcher: an echo
	}
	now := time.Now()
	// The datastore's window that throttled: a retry-after under the
	// window says when it ends; otherwise take the window up to now.
	from := now.Add(-c.window)
	if o.RetryAfter > 0 && o.RetryAfter < c.window {
		from = now.Add(o.RetryAfter - c.window)
	}
	if lm != nil {
		lm.throttled = now
		if !c.wideLocked(from, now) {
			return // a lane's own budget: its pause is its control
		}
	}
	m.after = max(m.after, o.RetryAfter)
	if !m.cutAt.IsZero() && now.Before(m.cutAt.Add(c.window)) {
		m.pending, m.pendFrom = true, from // the window's end cuts (see decide)
		return
	}
	// Cut at once, on what was served so far; the ticks that follow settle
	// it on what the window served, with the answers still on their way.
	before := m.limit
	c.cutLocked(now, from, c.servedLocked(m.served, from, now))
	m.settle, m.from = before, from
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// A laneMeasure is what one lane's batches served, by the moments of
// release, and when the lane was last throttled.
type laneMeasure struct {
	served    []bucket
	throttled time.Time // the last throttle that was not an echo; zero if none
	seen      time.Time // the last outcome's return
}

// wideLocked reports whether the lanes throttled since from are more than
// half of the lanes that served or were throttled since then, and carried
// more than ControllerLaneShare of what the batches released since then
// served (or nothing was served): whether their throttles are the
// datastore's as a whole rather than a lane's own budget.
func (c *Controller) wideLocked(from, now time.Time) bool {
	m := &c.mu
	all := c.servedLocked(m.served, from, now)
	if all <= 0 {
		return true
	}
	throttled, lanes, active := 0.0, 0, 0
	for _, lm := range m.lanes {
		served := c.servedLocked(lm.served, from, now)
		switch {
		case !lm.throttled.Before(from):
			throttled += served
			lanes++
			active++
		case served > 0:
			active++
		}
	}
	return throttled > ControllerLaneShare*all && 2*lanes > active
}

func (c *Controller) tick() time.Duration { return c.window / ControllerTicksPerWindow }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// controllerBuckets is how many buckets a window's measure of what was
// served is kept in (25ms each, by default).
const controllerBuckets = 40

// A bucket is what the batches released within one bucket's time served.
type bucket struct {
	idx    int64 // the moment of release / the bucket's length
	served float64
}

// addLocked adds what a batch served to ring, at t.
func (c *Controller) addLocked(ring []bucket, t time.Time, served float64) {
	idx := t.UnixNano() / int64(c.window/controllerBuckets)
	b := &ring[int(idx%int64(len(ring)))]
	switch {
	case b.idx == idx:
		b.served += served
	case b.idx < idx:
		b.idx, b.served = idx, served
	} // else older than the ring: forgotten
}

// servedLocked returns what ring holds from from to to, to the bucket.
func (c *Controller) servedLocked(ring []bucket, from, to time.Time) float64 {
	g := int64(c.window / controllerBuckets)
	lo, hi := from.UnixNano()/g, to.UnixNano()/g
	served := 0.0
	for _, b := range ring {
		if b.idx >= lo && b.idx <= hi {
			served += b.served
		}
	}
	return served
}

// cutLocked cuts L on what the datastore's window, which began at from,
// served (served, counted by the moments of release), or what the answers
// that came since from served if that is more, and notes the change.
// Taking the more of the two keeps a cut from going deep on a measure that
// slow answers, or requests held up on their way, skew.
func (c *Controller) cutLocked(now, from time.Time, served float64) {
	m := &c.mu
	m.byAnswer = c.servedLocked(m.answered, from, now)
	served = max(served, m.byAnswer)
	m.knee = min(m.limit, served)
	m.cutFrom = m.limit
	m.limit = max((1-c.backoff)*m.knee, float64(c.floor))
	m.cutAt = now
	hold := max(c.window, min(m.after, MaxControllerHold))
	m.holdTo = now.Add(hold)
	m.pending, m.after, m.step, m.settle, m.probes = false, 0, 0, 0, 0
	c.noteLocked(batcher.Event{Kind: batcher.CapacityChanged, Msg: "throttled", Duration: hold})
}

// noteLocked stores L for Capacity and, if Capacity changed, queues e with
// the new capacity for the goroutine to emit.
func (c *Controller) noteLocked(e batcher.Event) {
	c.mu.limit = min(c.mu.limit, float64(c.ceiling))
	after := int64(math.Floor(c.mu.limit + 1e-9))
	if c.capacity.Swap(after) == after {
		return
	}
	e.Val = int(after)
	c.mu.events = append(c.mu.events, e)
}

// run is the Controller's goroutine: it decides at every tick and emits the
// changes.
func (c *Controller) run(ctx context.Context, wake <-chan struct{}) {
	t := time.NewTicker(c.tick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.decide(now)
		case <-wake:
		}
		c.mu.Lock()
		evs := c.mu.events
		c.mu.events = nil
		c.mu.Unlock()
		for _, e := range evs {
			c.listeners.Emit(e)
		}
	}
}

// decide applies the rule at the tick at now.
func (c *Controller) decide(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := &c.mu
	good := m.good
	m.good = false
	m.lats[m.latNext] = m.latNow
	m.latNext = (m.latNext + 1) % len(m.lats)
	m.latNow = 0
	lat := slices.Max(m.lats) // the longest a batch took in the last window
	for lane, lm := range m.lanes {
		if now.Sub(lm.seen) > 2*c.window {
			delete(m.lanes, lane) // forgotten: nothing of it in the rings
		}
	}
	if m.settle > 0 {
		// A cut made on what had been served when the throttle came:
		// settle it on what the datastore's window served, with the
		// answers that came after, until they have all come (a window,
		// and the longest a batch took in the last window, or a window if
		// that is more, after the window began; four windows at most: a
		// stalled process holds answers the longest batch seen does not
		// measure). It only ever raises the cut.
		served := max(c.servedLocked(m.served, m.from, minTime(now, m.from.Add(c.window))), m.byAnswer)
		if k := min(m.settle, served); k > m.knee {
			m.knee = k
			if l := (1 - c.backoff) * k; l > m.limit {
				m.limit = l
				c.noteLocked(batcher.Event{Kind: batcher.CapacityChanged, Msg: "throttled", Duration: m.holdTo.Sub(m.cutAt)})
			}
		}
		if now.After(m.from.Add(c.window+max(lat, c.window))) || now.After(m.cutAt.Add(4*c.window)) {
			m.settle = 0
		}
	}
	used := max(c.servedLocked(m.served, now.Add(-c.window), now), c.servedLocked(m.answered, now.Add(-c.window), now))
	switch {
	case m.pending && !now.Before(m.cutAt.Add(c.window)):
		// On the datastore's window that throttled, but only what went out
		// after the last cut, at the capacity being judged: at its rate over
		// a whole window (a part of a window served a part of it).
		from := m.pendFrom
		if echo := m.cutAt.Add(c.tick()); from.Before(echo) {
			from = echo
		}
		to := minTime(now, m.pendFrom.Add(c.window))
		served := c.servedLocked(m.served, from, to)
		if span := to.Sub(from); span > 0 && span < c.window {
			served *= float64(c.window) / float64(span)
		}
		c.cutLocked(now, from, served)
	case m.pending, now.Before(m.holdTo), c.demand.Load() < int64(m.limit), m.limit >= float64(c.ceiling):
		// no growth
	case !m.cutAt.IsZero() && used < ControllerUsedShare*m.limit:
		// no growth: the capacity is not being used (a pause, a lane's
		// wait, work that does not need it), so it proves nothing
	case m.cutAt.IsZero():
		if good {
			m.limit *= 2
			m.changed = now
			c.noteLocked(batcher.Event{Kind: batcher.CapacityChanged, Msg: "starting"})
		}
	case m.limit < m.knee:
		least := ControllerProbeStep * m.knee
		m.limit = min(m.knee, m.limit+max((m.knee-m.limit)/2, least))
		c.noteLocked(batcher.Event{Kind: batcher.CapacityChanged, Msg: "recovering"})
	default:
		if m.step == 0 {
			m.step = ControllerProbeStep * max(m.knee, float64(c.floor))
		} else if m.probes >= ControllerProbeFlat || m.cutFrom > ControllerLooseCut*m.knee {
			m.step *= ControllerProbeGrowth
		}
		m.probes++
		m.limit += m.step
		c.noteLocked(batcher.Event{Kind: batcher.CapacityChanged, Msg: "probing"})
	}
}

// Capacity returns the capacity granted now, in cost units per second.
// Before the first Start it is the initial capacity, or the ceiling if the
// settings are bad.
func (c *Controller) Capacity() int {
	if !c.started.Load() {
		if err := c.validate(); err != nil {
			return max(c.ceiling, 0)
		}
		if c.initial > 0 {
			return c.initial
		}
		return min(max(c.ceiling/ControllerInitialShare, c.floor, 1), c.ceiling)
	}
	return int(c.capacity.Load())
}

// MaxCapacity returns the ceiling: a throttle does not make an operation
// too expensive, it only has to wait longer.
func (c *Controller) MaxCapacity() int { return c.ceiling }

// GiveMe records the Batcher's demand: the capacity grows only while the
// demand is at least the capacity.
func (c *Controller) GiveMe(demand int) { c.demand.Store(int64(demand)) }

// Knee returns the throughput the datastore served, in cost units per
// second, in the window of the last cut, or 0 before any.
func (c *Controller) Knee() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.mu.knee)
}

// Throttled returns how many of the operations observed were throttled,
// and how many were observed, since the Controller was created.
func (c *Controller) Throttled() (throttled, observed int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.throttle, c.mu.ops
}

// AddListener adds a listener for capacity changes and returns its id.
func (c *Controller) AddListener(fn func(batcher.Event)) int { return c.listeners.AddListener(fn) }

// RemoveListener removes the listener with the given id.
func (c *Controller) RemoveListener(id int) { c.listeners.RemoveListener(id) }
