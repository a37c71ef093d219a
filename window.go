package batcher

import (
	"iter"
	"math"
	"time"
)

// window is the span over which capacity is counted: a Batcher with capacity
// C releases at most C in any half-open interval [t, t+window).
const window = time.Second

// slack is how much longer than a window the ledger keeps a release. A
// release is counted from the moment its ProcessBatch call starts, which the
// worker records just before the call; slack covers the few instructions
// between that moment and the datastore call itself, so that two releases
// a window apart by the ledger are also a window apart as ProcessBatch sees
// them. It costs a thousandth of the capacity under a backlog.
const slack = time.Millisecond

// mergeSpan is how close releases must be to share a ledger entry. Merged
// releases count until one window after the last of them, which is
// conservative, and keeps the ledger at most window/mergeSpan entries long.
const mergeSpan = time.Millisecond

// ledger records the cost released in the last window. A Batcher releases a
// batch only if the cost the ledger holds, plus the batch's, is within
// capacity; that alone keeps every window within capacity (G1), whatever the
// flush timing, manual flushes or the rate limiter do.
//
// A batch is recorded when it is taken for release, as pending: it counts,
// and cannot expire, until its worker reports the moment its ProcessBatch
// call starts (started), which may be a little later; from then on it counts
// for one window (and slack) after that moment. So a batch that waits for its
// goroutine to be scheduled does not end up in the same window as one taken
// a window after it.
type ledger struct {
	ring   []ledgerEntry
	head   int // index of the oldest entry
	n      int // entries in use
	sum    int // cost of the entries in use
	nextID uint64
}

type ledgerEntry struct {
	id      uint64
	start   time.Time // when the first batch merged into the entry was taken
	end     time.Time // when the last of its batches started
	cost    int
	pending int // batches taken whose ProcessBatch has not started
}

// expiry returns when the entry stops counting, or false if it is pending.
func (e *ledgerEntry) expiry() (time.Time, bool) {
	return e.end.Add(window + slack), e.pending == 0
}

// expire drops, from the oldest, the entries that have stopped counting.
// (An entry that ends later than the ones after it holds them back: the
// ledger errs on the side of counting.)
func (l *ledger) expire(now time.Time) {
	for l.n > 0 {
		e := &l.ring[l.head]
		if t, ok := e.expiry(); !ok || now.Before(t) {
			return
		}
		l.sum -= e.cost
		*e = ledgerEntry{}
		l.head = (l.head + 1) % len(l.ring)
		l.n--
	}
}

// used returns the cost that counts at now.
func (l *ledger) used(now time.Time) int {
	l.expire(now)
	return l.sum
}

// add records a batch costing cost taken at now, pending until started, and
// returns the id of the entry that holds it.
func (l *ledger) add(now time.Time, cost int) uint64 {
	l.expire(now)
	if l.n > 0 {
		last := &l.ring[(l.head+l.n-1)%len(l.ring)]
		if now.Sub(last.start) < mergeSpan {
			last.end = maxTime(last.end, now)
			last.cost += cost
			last.pending++
			l.sum += cost
			return last.id
		}
	}
	if l.n == len(l.ring) {
		l.grow()
	}
	l.nextID++
	l.ring[(l.head+l.n)%len(l.ring)] = ledgerEntry{id: l.nextID, start: now, end: now, cost: cost, pending: 1}
	l.n++
	l.sum += cost
	return l.nextID
}

// started records that a batch of entry id started at t.
func (l *ledger) started(id uint64, t time.Time) {
	if e := l.entry(id); e != nil && e.pending > 0 {
		e.pending--
		e.end = maxTime(e.end, t)
	}
}

// entry returns the entry with the given id, or nil if it has expired.
func (l *ledger) entry(id uint64) *ledgerEntry {
	if l.n == 0 {
		return nil
	}
	first := l.ring[l.head].id
	if id < first || id >= first+uint64(l.n) {
		return nil
	}
	return &l.ring[(l.head+int(id-first))%len(l.ring)]
}

func (l *ledger) grow() {
	ring := make([]ledgerEntry, max(16, 2*len(l.ring)))
	for i := range l.n {
		ring[i] = l.ring[(l.head+i)%len(l.ring)]
	}
	l.ring, l.head = ring, 0
}

// adjust changes the cost recorded in entry id by delta, if the entry still
// counts, never below zero.
func (l *ledger) adjust(id uint64, delta int) {
	if e := l.entry(id); e != nil {
		delta = max(delta, -e.cost)
		e.cost += delta
		l.sum += delta
	}
}

// expiries yields, in the order expire drops them, the cost of each entry
// that counts and the moment it will have stopped counting, with those
// before it: a pending entry is taken to start now.
func (l *ledger) expiries(now time.Time) iter.Seq2[time.Time, int] {
	return func(yield func(time.Time, int) bool) {
		var at time.Time
		for i := range l.n {
			e := &l.ring[(l.head+i)%len(l.ring)]
			t, ok := e.expiry()
			if !ok {
				t = now.Add(window + slack)
			}
			at = maxTime(at, t)
			if !yield(at, e.cost) {
				return
			}
		}
	}
}

// freedBy returns how much of what the ledger holds at now it will have
// let go of by t, a moment after now.
func (l *ledger) freedBy(now, t time.Time) int {
	l.expire(now)
	freed := 0
	for at, cost := range l.expiries(now) {
		if at.After(t) {
			break
		}
		freed += cost
	}
	return freed
}

// wait returns how long after now the ledger will have room for need within
// capacity, and false if it never will (need > capacity). For a pending
// entry it assumes the batch starts now.
func (l *ledger) wait(now time.Time, capacity, need int) (time.Duration, bool) {
	if need > capacity {
		return 0, false
	}
	// need <= capacity-s, not s+need <= capacity: s and need are at most
	// capacity (or a little over it), and capacity may be near
	// math.MaxInt.
	s := l.used(now)
	if need <= capacity-s {
		return 0, true
	}
	for at, cost := range l.expiries(now) {
		s -= cost
		if need <= capacity-s {
			return at.Sub(now), true
		}
	}
	return 0, true // unreachable: s reaches 0
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// pace spreads each second's capacity over the flushes: a token bucket that
// fills at the capacity rate and, while nothing waits, holds one flush
// interval's worth, so that work arriving after a lull goes out a flush
// interval's share at a time. It may go into debt, which it pays back before
// anything else goes: when it is full, a single operation that costs more
// than it holds may go.
//
// While operations wait (backlog), it holds up to a second's worth instead:
// then the ledger is what holds releases back, and a bucket that overflowed
// while the ledger made it wait would waste capacity. Under a backlog the
// ledger lets out, each second, what went out the second before, so the
// shape the pace gave the first second goes on. When costs vary, or
// operations report actual costs below their declared ones, a share that
// ages out of the ledger leaves a little less room than the next share
// wants; a flush the ledger holds back then goes with the room that comes
// within half an interval (see formLocked), rather than skip and send two
// shares at the next. (Capping the bucket at one share under a backlog too
// also keeps the shares apart, but released 90% of the capacity in
// TestBacklogStaysWithinCapacityAndUsesIt: a bucket of burst B and rate R
// lets B+R through in some second, so the ledger stops it now and then and
// it overflows.)
//
// Tokens are kept in nano-units (cost × 1e9), so that refilling at rate C is
// exact integer arithmetic: C nano-units per nanosecond.
type pace struct {
	rate    int64 // cost units per second
	burst   int64 // nano-units
	tokens  int64 // nano-units; negative while in debt
	last    time.Time
	backlog bool // operations waited at the last release attempt
}

const nano = int64(time.Second)

// maxTokens bounds the bucket both ways, so that its arithmetic cannot
// overflow.
const maxTokens = math.MaxInt64 / 4

// set sets the bucket for a capacity per second and a flush interval; a new
// bucket starts full.
func (p *pace) set(now time.Time, capacity int, interval time.Duration) {
	fresh := p.last.IsZero()
	if !fresh {
		p.advance(now)
	}
	p.rate = int64(capacity)
	p.burst = min(max(mulSat(int64(capacity), int64(interval)), 1), maxTokens)
	if fresh {
		p.tokens = p.burst
	}
	p.tokens = min(p.tokens, max(p.burst, mulSat(p.rate, nano)))
	p.last = now
}

// advance refills the bucket for the time since the last call.
func (p *pace) advance(now time.Time) {
	dt := int64(now.Sub(p.last))
	if dt <= 0 {
		return
	}
	p.last = now
	limit := p.burst
	if p.backlog {
		limit = max(limit, min(mulSat(p.rate, nano), maxTokens))
	}
	if add := mulSat(p.rate, dt); add >= limit-p.tokens {
		p.tokens = max(limit, p.tokens)
	} else {
		p.tokens += add
	}
	if !p.backlog && p.tokens > p.burst {
		p.tokens = p.burst
	}
}

// fits reports whether a batch's first operations, costing cost in all,
// may go out now; first says whether they are its first operation alone.
// When the bucket is full, the first operation may go into debt, and so may
// the operations after it while they cost no more than one unit in all: a
// bucket that holds less than one unit (capacity × flush interval under 1)
// has no other way to let a unit go with operations of cost 0, and wait,
// which says how long until the bucket is full, must agree with fits, or
// the owner goroutine would wake again at once, for ever.
func (p *pace) fits(cost int, first bool) bool {
	c := mulSat(int64(cost), nano)
	return c <= p.tokens || (p.tokens >= p.burst && (first || cost <= 1))
}

// take spends cost; a negative cost gives it back.
func (p *pace) take(cost int) {
	if cost < 0 {
		p.tokens = min(p.tokens+min(mulSat(int64(-cost), nano), maxTokens), p.burst)
		return
	}
	p.tokens = max(p.tokens-min(mulSat(int64(cost), nano), maxTokens), -maxTokens)
}

// wait returns how long after the last advance the bucket will let a batch
// of cost need go, and false if it never will (a zero rate).
func (p *pace) wait(need int) (time.Duration, bool) {
	c := min(mulSat(int64(need), nano), p.burst)
	if c <= p.tokens {
		return 0, true
	}
	if p.rate <= 0 {
		return 0, false
	}
	short := c - p.tokens // at most 2*maxTokens
	// Rounded up, without adding rate to short first: a rate near
	// math.MaxInt64 would make that overflow to a wait in the past.
	d := short / p.rate
	if short%p.rate != 0 {
		d++
	}
	return time.Duration(d), true
}

// mulSat returns a*b for a, b >= 0, or MaxInt64 if that overflows.
func mulSat(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}
