package cosmosmodel

import (
	"hash/fnv"
	"math"
	"sync"
	"time"
)

// Stats is a snapshot of what a Model served since it was created.
type Stats struct {
	// ProvisionedRU is the budget enforced now, in RU per second, over all
	// partitions (0: unlimited): the manual throughput, or the maximum of
	// an autoscale one (which Azure scales to at once under load).
	ProvisionedRU float64
	// AutoscaleMaxRU is the autoscale maximum, 0 for manual throughput.
	AutoscaleMaxRU float64
	// CurrentRU is the throughput the account is scaled to now: the manual
	// throughput; for autoscale, the RU served in the last whole second
	// (the other workload's included), between 10% and 100% of the maximum.
	CurrentRU float64
	// Partitions is the number of physical partitions.
	Partitions int
	// Requests counts the document requests answered (reads, writes,
	// batches, queries), the throttled ones included.
	Requests int64
	// Throttled counts the 429 answers.
	Throttled int64
	// RU is the total request charge of the document requests served.
	RU float64
	// PeakRU is the most RU served in one second (the other workload's
	// not included).
	PeakRU float64
	// MetadataRequests counts requests on the account, databases,
	// containers and offers, which draw on no budget.
	MetadataRequests int64
	// OtherRequests, OtherThrottled and OtherRU count the simulated other
	// workload's requests (see [Model.SetOtherWorkload]), its 429s and
	// the RU it was served. They are not in Requests, Throttled and RU.
	OtherRequests, OtherThrottled int64
	OtherRU                       float64
	// Elapsed is the time since the model was created.
	Elapsed time.Duration
}

// A Second is what a Model served in one second of its life: the second
// [At, At+1s) counted from the model's creation. For the whole model (see
// [Model.History]) or one physical partition ([Model.PartitionHistory]).
type Second struct {
	At        time.Duration // start of the second, since the model was created
	RU        float64       // request charge of the requests admitted in it
	Requests  int64         // document requests answered, throttled ones included
	Throttled int64         // 429 answers
	// OtherRU, OtherRequests and OtherThrottled are the simulated other
	// workload's (see [Model.SetOtherWorkload]).
	OtherRU                       float64
	OtherRequests, OtherThrottled int64
	// BudgetRU is the budget of the second (of the whole model, or of the
	// partition): what could be served in it, as it was at the second's
	// last request (0: unlimited).
	BudgetRU float64
}

// PartitionStats is what one physical partition served since the model
// was created.
type PartitionStats struct {
	// BudgetRU is the partition's budget now, in RU per second (0:
	// unlimited): the model's budget divided evenly.
	BudgetRU float64
	// Requests, Throttled and RU are as in Stats, for this partition.
	Requests, Throttled int64
	RU                  float64
	// OtherRequests, OtherThrottled and OtherRU are the simulated other
	// workload's, for this partition.
	OtherRequests, OtherThrottled int64
	OtherRU                       float64
	// OtherRUPerSecond is the other workload's rate on this partition now.
	OtherRUPerSecond float64
}

// maxHistory bounds the per-second history: older seconds are dropped.
const maxHistory = 24 * 3600

// maxOtherCatchUp bounds how far back the other workload is simulated when
// nothing has asked the model for a long time.
const maxOtherCatchUp = 10 * time.Minute

// meter is the RU accounting: fixed windows of one second, counted from
// start, and a budget per physical partition in each. All methods take the
// time explicitly so the arithmetic can be tested with a table of times.
type meter struct {
	start time.Time
	parts int

	mu struct {
		sync.Mutex
		manual, autoMax int64 // centi-RU per second; both 0: unlimited
		first           int   // the index of history[0]
		history         []second
		stats           Stats // the counts; the RU fields are kept in centi below
		ru, peak        int64
		otherRU         int64
		window          int     // the window used counts
		used            []int64 // per partition: centi-RU admitted in window
		partTotals      []partSecond
		other           []otherLoad
	}
}

// second is a Second with its RU in hundredths, so that sums are exact.
type second struct {
	ru, requests, throttled           int64
	otherRU, otherReqs, otherThrottle int64
	budget                            int64        // centi-RU; the whole model's
	parts                             []partSecond // per partition, if more than one
}

type partSecond struct {
	ru, requests, throttled           int64
	otherRU, otherReqs, otherThrottle int64
}

// otherLoad is the simulated other workload on one partition: requests of
// charge RU, rate RU per second, the next one due at next.
type otherLoad struct {
	rate, charge float64
	next         time.Time
}

// centi converts RU to hundredths of an RU.
func centi(ru float64) int64 { return int64(math.Round(ru * 100)) }

func fromCenti(c int64) float64 { return float64(c) / 100 }

func newMeter(start time.Time, parts int, manual, autoMax float64) *meter {
	m := &meter{start: start, parts: max(parts, 1)}
	m.mu.manual, m.mu.autoMax = centi(manual), centi(autoMax)
	m.mu.used = make([]int64, m.parts)
	m.mu.partTotals = make([]partSecond, m.parts)
	m.mu.other = make([]otherLoad, m.parts)
	return m
}

// partitionOf returns the physical partition of a partition key in its
// canonical form (a JSON array, such as ["p1"]).
func partitionOf(pk string, parts int) int {
	if parts <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(pk))
	return int(h.Sum32() % uint32(parts))
}

// budgetLocked is the whole model's budget per second in centi-RU (0:
// unlimited).
func (m *meter) budgetLocked() int64 {
	if m.mu.autoMax > 0 {
		return m.mu.autoMax
	}
	return m.mu.manual
}

// partBudgetLocked is one partition's budget per second in centi-RU (0:
// unlimited).
func (m *meter) partBudgetLocked() int64 {
	b := m.budgetLocked()
	if b == 0 {
		return 0
	}
	return max(b/int64(m.parts), 1)
}

// secondLocked returns the second that holds now, creating it and any
// seconds before it that are missing, and moves the partitions' window to
// it.
func (m *meter) secondLocked(now time.Time) (int, *second) {
	idx := 0
	if d := now.Sub(m.start); d > 0 {
		idx = int(d / time.Second)
	}
	if idx < m.mu.first { // a late caller: charge the oldest second kept
		idx = m.mu.first
	}
	for m.mu.first+len(m.mu.history) <= idx {
		s := second{budget: m.budgetLocked()}
		if m.parts > 1 {
			s.parts = make([]partSecond, m.parts)
		}
		m.mu.history = append(m.mu.history, s)
	}
	if len(m.mu.history) > maxHistory {
		drop := len(m.mu.history) - maxHistory/2
		m.mu.history = append(m.mu.history[:0:0], m.mu.history[drop:]...)
		m.mu.first += drop
	}
	if idx > m.mu.window {
		m.mu.window = idx
		clear(m.mu.used)
	}
	s := &m.mu.history[idx-m.mu.first]
	s.budget = m.budgetLocked()
	return idx, s
}

// partLocked returns partition p's counts in s, or nil with one partition.
func partLocked(s *second, p int) *partSecond {
	if s.parts == nil {
		return nil
	}
	return &s.parts[p]
}

// admit decides whether a request charged charge RU may run at now on
// partition part. If it may, it charges it to now's second and returns
// that second's index; if not, it counts a 429 and returns the time until
// the next second. A request is refused when the RU its partition already
// served in the current second would exceed the partition's budget with it;
// one that costs more than the whole budget is admitted only into a second
// in which its partition has served nothing yet, or it could never run.
func (m *meter) admit(now time.Time, part int, charge float64) (sec int, ok bool, retryAfter time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.advanceOtherLocked(now)
	return m.admitLocked(now, part, charge, false)
}

func (m *meter) admitLocked(now time.Time, part int, charge float64, other bool) (int, bool, time.Duration) {
	part = min(max(part, 0), m.parts-1)
	idx, s := m.secondLocked(now)
	ps := partLocked(s, part)
	pt := &m.mu.partTotals[part]
	if other {
		s.otherReqs++
		pt.otherReqs++
		m.mu.stats.OtherRequests++
		if ps != nil {
			ps.otherReqs++
		}
	} else {
		s.requests++
		pt.requests++
		m.mu.stats.Requests++
		if ps != nil {
			ps.requests++
		}
	}
	c := centi(charge)
	if b := m.partBudgetLocked(); b > 0 && m.mu.used[part] > 0 && m.mu.used[part]+c > b && idx >= m.mu.window {
		if other {
			s.otherThrottle++
			pt.otherThrottle++
			m.mu.stats.OtherThrottled++
			if ps != nil {
				ps.otherThrottle++
			}
		} else {
			s.throttled++
			pt.throttled++
			m.mu.stats.Throttled++
			if ps != nil {
				ps.throttled++
			}
		}
		next := m.start.Add(time.Duration(idx+1) * time.Second)
		return idx, false, next.Sub(now)
	}
	m.chargeLocked(idx, s, part, c, other)
	return idx, true, 0
}

// adjust adds delta RU (negative to refund) to second sec of partition
// part, for a request whose actual charge became known after it was
// admitted.
func (m *meter) adjust(sec, part int, delta float64) {
	if delta == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if sec < m.mu.first {
		sec = m.mu.first
	}
	m.chargeLocked(sec, &m.mu.history[sec-m.mu.first], min(max(part, 0), m.parts-1), centi(delta), false)
}

func (m *meter) chargeLocked(idx int, s *second, part int, c int64, other bool) {
	if idx == m.mu.window {
		m.mu.used[part] += c
	}
	ps := partLocked(s, part)
	pt := &m.mu.partTotals[part]
	if other {
		s.otherRU += c
		pt.otherRU += c
		m.mu.otherRU += c
		if ps != nil {
			ps.otherRU += c
		}
		return
	}
	s.ru += c
	pt.ru += c
	m.mu.ru += c
	m.mu.peak = max(m.mu.peak, s.ru)
	if ps != nil {
		ps.ru += c
	}
}

// advanceOtherLocked runs the other workload's requests due up to now, in
// order, each at its own moment.
func (m *meter) advanceOtherLocked(now time.Time) {
	for p := range m.mu.other {
		o := &m.mu.other[p]
		if o.rate <= 0 {
			continue
		}
		if behind := now.Sub(o.next); behind > maxOtherCatchUp {
			o.next = now.Add(-maxOtherCatchUp)
		}
		step := time.Duration(math.Round(o.charge / o.rate * float64(time.Second)))
		step = max(step, time.Microsecond)
		for !o.next.After(now) {
			m.admitLocked(o.next, p, o.charge, true)
			o.next = o.next.Add(step)
		}
	}
}

// setOther sets the other workload's rate on partition p (all of them,
// split evenly, if p < 0), in requests of charge RU, from now on.
func (m *meter) setOther(now time.Time, p int, rate, charge float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.advanceOtherLocked(now)
	set := func(i int, r float64) {
		o := &m.mu.other[i]
		if o.rate <= 0 || o.next.Before(now) {
			o.next = now
		}
		o.rate, o.charge = r, charge
	}
	if p < 0 {
		for i := range m.mu.other {
			set(i, rate/float64(m.parts))
		}
		return
	}
	set(min(p, m.parts-1), rate)
}

// metadata counts a request that draws on no budget.
func (m *meter) metadata() {
	m.mu.Lock()
	m.mu.stats.MetadataRequests++
	m.mu.Unlock()
}

// setThroughput sets the manual throughput (autoMax 0) or the autoscale
// maximum, in RU per second, from now on.
func (m *meter) setThroughput(now time.Time, manual, autoMax float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.advanceOtherLocked(now)
	m.mu.manual, m.mu.autoMax = centi(manual), centi(autoMax)
	m.secondLocked(now)
}

// throughput returns the manual throughput and the autoscale maximum.
func (m *meter) throughput() (manual, autoMax float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fromCenti(m.mu.manual), fromCenti(m.mu.autoMax)
}

// currentLocked is the throughput the account is scaled to at now.
func (m *meter) currentLocked(now time.Time) int64 {
	if m.mu.autoMax == 0 {
		return m.mu.manual
	}
	idx, _ := m.secondLocked(now)
	var served int64
	if prev := idx - 1; prev >= m.mu.first {
		s := m.mu.history[prev-m.mu.first]
		served = s.ru + s.otherRU
	}
	return min(max(served, m.mu.autoMax/10), m.mu.autoMax)
}

// current returns the throughput the account is scaled to at now, in RU
// per second.
func (m *meter) current(now time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.advanceOtherLocked(now)
	return fromCenti(m.currentLocked(now))
}

func (m *meter) stats(now time.Time) Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.advanceOtherLocked(now)
	s := m.mu.stats
	s.ProvisionedRU = fromCenti(m.budgetLocked())
	s.AutoscaleMaxRU = fromCenti(m.mu.autoMax)
	s.CurrentRU = fromCenti(m.currentLocked(now))
	s.Partitions = m.parts
	s.RU = fromCenti(m.mu.ru)
	s.PeakRU = fromCenti(m.mu.peak)
	s.OtherRU = fromCenti(m.mu.otherRU)
	s.Elapsed = now.Sub(m.start)
	return s
}

func (m *meter) partitionStats(now time.Time) []PartitionStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.advanceOtherLocked(now)
	out := make([]PartitionStats, m.parts)
	for i, pt := range m.mu.partTotals {
		out[i] = PartitionStats{
			BudgetRU:         fromCenti(m.partBudgetLocked()),
			Requests:         pt.requests,
			Throttled:        pt.throttled,
			RU:               fromCenti(pt.ru),
			OtherRequests:    pt.otherReqs,
			OtherThrottled:   pt.otherThrottle,
			OtherRU:          fromCenti(pt.otherRU),
			OtherRUPerSecond: m.mu.other[i].rate,
		}
	}
	return out
}

// history returns every second from the oldest kept to now's, included, of
// the whole model (part < 0) or of one partition.
func (m *meter) history(now time.Time, part int) []Second {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.advanceOtherLocked(now)
	m.secondLocked(now)
	out := make([]Second, len(m.mu.history))
	for i, s := range m.mu.history {
		sec := Second{
			At:             time.Duration(m.mu.first+i) * time.Second,
			RU:             fromCenti(s.ru),
			Requests:       s.requests,
			Throttled:      s.throttled,
			OtherRU:        fromCenti(s.otherRU),
			OtherRequests:  s.otherReqs,
			OtherThrottled: s.otherThrottle,
			BudgetRU:       fromCenti(s.budget),
		}
		if part >= 0 {
			p := partSecond{}
			if s.parts != nil {
				p = s.parts[part]
			} else {
				p = partSecond{s.ru, s.requests, s.throttled, s.otherRU, s.otherReqs, s.otherThrottle}
			}
			sec = Second{At: sec.At, RU: fromCenti(p.ru), Requests: p.requests, Throttled: p.throttled,
				OtherRU: fromCenti(p.otherRU), OtherRequests: p.otherReqs, OtherThrottled: p.otherThrottle}
			if s.budget > 0 {
				sec.BudgetRU = fromCenti(max(s.budget/int64(m.parts), 1))
			}
		}
		out[i] = sec
	}
	return out
}
