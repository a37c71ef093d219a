package batcher

import (
	"math"
	"time"
)

// window is the span over which capacity is counted: a Batcher with capacity
// C releases at most C in any half-open interval [t, t+window).
const window = time.Second

// mergeSpan is how close releases must be to share a ledger entry. Merged
// releases count until one window after the last of them, which is
// conservative, and keeps the ledger at most window/mergeSpan entries long.
const mergeSpan = time.Millisecond

// ledger records the cost released in the last window. A Batcher releases a
// batch at now only if ledger.used(now) plus its cost is within capacity;
// that alone keeps every window within capacity (G1), whatever the flush
// timing, manual flushes or the rate limiter do.
type ledger struct {
	ring   []ledgerEntry
	head   int // index of the oldest entry
	n      int // entries in use
	sum    int // cost of the entries in use
	nextID uint64
}

type ledgerEntry struct {
	id         uint64
	start, end time.Time // first and last release merged into the entry
	cost       int
}

// expire drops the entries whose last release is a full window before now.
func (l *ledger) expire(now time.Time) {
	for l.n > 0 {
		e := &l.ring[l.head]
		if now.Sub(e.end) < window {
			return
		}
		l.sum -= e.cost
		*e = ledgerEntry{}
		l.head = (l.head + 1) % len(l.ring)
		l.n--
	}
}

// used returns the cost released in the window that ends at now.
func (l *ledger) used(now time.Time) int {
	l.expire(now)
	return l.sum
}

// add records cost released at now, which must not be before the last
// release, and returns the id of the entry that holds it.
func (l *ledger) add(now time.Time, cost int) uint64 {
	l.expire(now)
	if l.n > 0 {
		last := &l.ring[(l.head+l.n-1)%len(l.ring)]
		if now.Sub(last.start) < mergeSpan {
			last.end = now
			last.cost += cost
			l.sum += cost
			return last.id
		}
	}
	if l.n == len(l.ring) {
		l.grow()
	}
	l.nextID++
	l.ring[(l.head+l.n)%len(l.ring)] = ledgerEntry{id: l.nextID, start: now, end: now, cost: cost}
	l.n++
	l.sum += cost
	return l.nextID
}

func (l *ledger) grow() {
	ring := make([]ledgerEntry, max(16, 2*len(l.ring)))
	for i := range l.n {
		ring[i] = l.ring[(l.head+i)%len(l.ring)]
	}
	l.ring, l.head = ring, 0
}

// adjust changes the cost recorded in entry id by delta, if the entry is
// still in the window, never below zero.
func (l *ledger) adjust(id uint64, delta int) {
	if l.n == 0 {
		return
	}
	first := l.ring[l.head].id
	if id < first || id >= first+uint64(l.n) {
		return
	}
	e := &l.ring[(l.head+int(id-first))%len(l.ring)]
	delta = max(delta, -e.cost)
	e.cost += delta
	l.sum += delta
}

// wait returns how long after now the window will have room for need within
// capacity, and false if it never will (need > capacity).
func (l *ledger) wait(now time.Time, capacity, need int) (time.Duration, bool) {
	if need > capacity {
		return 0, false
	}
	s := l.used(now)
	if s+need <= capacity {
		return 0, true
	}
	for i := range l.n {
		e := &l.ring[(l.head+i)%len(l.ring)]
		s -= e.cost
		if s+need <= capacity {
			return e.end.Add(window).Sub(now), true
		}
	}
	return 0, true // unreachable: s reaches 0
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
// shape the pace gave the first second goes on.
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

// fits reports whether cost may go out now; first says whether it is the
// first operation of a batch, which may go into debt when the bucket is full.
func (p *pace) fits(cost int, first bool) bool {
	c := mulSat(int64(cost), nano)
	return c <= p.tokens || (first && p.tokens >= p.burst)
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
	short := c - p.tokens
	return time.Duration((short + p.rate - 1) / p.rate), true
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
