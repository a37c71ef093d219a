package cosmosmodel

import (
	"math"
	"sync"
	"time"
)

// Stats is a snapshot of what a Model served since it was created.
type Stats struct {
	// ProvisionedRU is the provisioned throughput now, in RU per second
	// (0: unlimited).
	ProvisionedRU float64
	// Requests counts the document requests answered (reads, writes,
	// batches, queries), the throttled ones included.
	Requests int64
	// Throttled counts the 429 answers.
	Throttled int64
	// RU is the total request charge of the document requests served.
	RU float64
	// PeakRU is the most RU served in one second.
	PeakRU float64
	// MetadataRequests counts requests on the account, databases and
	// containers, which draw on no budget.
	MetadataRequests int64
	// Elapsed is the time since the model was created.
	Elapsed time.Duration
}

// A Second is what a Model served in one second of its life: the second
// [At, At+1s) counted from the model's creation.
type Second struct {
	At        time.Duration // start of the second, since the model was created
	RU        float64       // request charge of the requests admitted in it
	Requests  int64         // document requests answered, throttled ones included
	Throttled int64         // 429 answers
}

// maxHistory bounds the per-second history: older seconds are dropped.
const maxHistory = 24 * 3600

// meter is the RU accounting: a fixed window of one second, counted from
// start, whose budget is the provisioned RU. All methods take the time
// explicitly so the arithmetic can be tested with a table of times.
type meter struct {
	start time.Time

	mu struct {
		sync.Mutex
		provisioned int64    // centi-RU per second; 0: unlimited
		first       int      // the index of history[0]
		history     []second // seconds first, first+1, ...
		stats       Stats    // without the RU fields, kept in ru and peak
		ru, peak    int64    // centi-RU
	}
}

// second is a Second with its RU in hundredths, so that sums are exact.
type second struct {
	ru                  int64
	requests, throttled int64
}

// centi converts RU to hundredths of an RU.
func centi(ru float64) int64 { return int64(math.Round(ru * 100)) }

func fromCenti(c int64) float64 { return float64(c) / 100 }

func newMeter(start time.Time, provisioned float64) *meter {
	m := &meter{start: start}
	m.mu.provisioned = centi(provisioned)
	return m
}

// secondLocked returns the second that holds now, creating it and any
// seconds before it that are missing.
func (m *meter) secondLocked(now time.Time) (int, *second) {
	idx := 0
	if d := now.Sub(m.start); d > 0 {
		idx = int(d / time.Second)
	}
	if idx < m.mu.first { // a late caller: charge the oldest second kept
		idx = m.mu.first
	}
	for m.mu.first+len(m.mu.history) <= idx {
		m.mu.history = append(m.mu.history, second{})
	}
	if len(m.mu.history) > maxHistory {
		drop := len(m.mu.history) - maxHistory/2
		m.mu.history = append(m.mu.history[:0:0], m.mu.history[drop:]...)
		m.mu.first += drop
	}
	return idx, &m.mu.history[idx-m.mu.first]
}

// admit decides whether a request charged charge RU may run at now. If it
// may, it charges it to now's second and returns that second's index; if
// not, it counts a 429 and returns the time until the next second. A request
// is refused when the RU of the current second would exceed the provisioned
// RU with it; one that costs more than the whole provisioned RU is admitted
// only into a second that has served nothing yet, or it could never run.
func (m *meter) admit(now time.Time, charge float64) (sec int, ok bool, retryAfter time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx, s := m.secondLocked(now)
	s.requests++
	m.mu.stats.Requests++
	p := m.mu.provisioned
	if p > 0 && s.ru > 0 && s.ru+centi(charge) > p {
		s.throttled++
		m.mu.stats.Throttled++
		next := m.start.Add(time.Duration(idx+1) * time.Second)
		return idx, false, next.Sub(now)
	}
	m.chargeLocked(s, charge)
	return idx, true, 0
}

// adjust adds delta RU (negative to refund) to second sec, for a request
// whose actual charge became known after it was admitted.
func (m *meter) adjust(sec int, delta float64) {
	if delta == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if sec < m.mu.first {
		sec = m.mu.first
	}
	m.chargeLocked(&m.mu.history[sec-m.mu.first], delta)
}

func (m *meter) chargeLocked(s *second, ru float64) {
	c := centi(ru)
	s.ru += c
	m.mu.ru += c
	m.mu.peak = max(m.mu.peak, s.ru)
}

// metadata counts a request that draws on no budget.
func (m *meter) metadata() {
	m.mu.Lock()
	m.mu.stats.MetadataRequests++
	m.mu.Unlock()
}

func (m *meter) setProvisioned(ru float64) {
	m.mu.Lock()
	m.mu.provisioned = centi(ru)
	m.mu.Unlock()
}

func (m *meter) stats(now time.Time) Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.mu.stats
	s.ProvisionedRU = fromCenti(m.mu.provisioned)
	s.RU = fromCenti(m.mu.ru)
	s.PeakRU = fromCenti(m.mu.peak)
	s.Elapsed = now.Sub(m.start)
	return s
}

// history returns every second from the oldest kept to now's, included.
func (m *meter) history(now time.Time) []Second {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.secondLocked(now)
	out := make([]Second, len(m.mu.history))
	for i, s := range m.mu.history {
		out[i] = Second{
			At:        time.Duration(m.mu.first+i) * time.Second,
			RU:        fromCenti(s.ru),
			Requests:  s.requests,
			Throttled: s.throttled,
		}
	}
	return out
}
