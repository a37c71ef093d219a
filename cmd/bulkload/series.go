package main

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/ratebatch/batcher"
)

// series counts, for each second since its start, the units charged (RU,
// or rows) and the throttled requests. As an azcore pipeline policy
// (PerRetryPolicies) it sees every attempt the SDK makes, its own retries
// included, and reads each response's x-ms-request-charge.
type series struct {
	mu struct {
		sync.Mutex
		start     time.Time
		units     []float64
		throttles []int64
		total     float64
		requests  int64
		throttled int64
	}
}

func newSeries() *series {
	s := &series{}
	s.mu.start = time.Now()
	return s
}

// restart forgets what was counted and starts counting from now.
func (s *series) restart() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.start = time.Now()
	s.mu.units, s.mu.throttles = nil, nil
	s.mu.total, s.mu.requests, s.mu.throttled = 0, 0, 0
}

// start returns when counting started.
func (s *series) start() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.start
}

// record counts one response, at now.
func (s *series) record(now time.Time, units float64, throttled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := max(int(now.Sub(s.mu.start)/time.Second), 0)
	s.growLocked(sec)
	s.mu.units[sec] += units
	s.mu.total += units
	s.mu.requests++
	if throttled {
		s.mu.throttles[sec]++
		s.mu.throttled++
	}
}

func (s *series) growLocked(sec int) {
	for len(s.mu.units) <= sec {
		s.mu.units = append(s.mu.units, 0)
		s.mu.throttles = append(s.mu.throttles, 0)
	}
}

// Do implements policy.Policy: it counts each document request, its charge
// and whether it was throttled; a request that got no answer counts too,
// charged nothing. If the request's context carries a counter (withTries),
// it counts there as well.
func (s *series) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	// Only document requests: the account, database and container requests
	// draw on no throughput.
	if strings.Contains(req.Raw().URL.Path, "/docs") {
		var charge float64
		throttled := false
		if resp != nil {
			charge, _ = strconv.ParseFloat(resp.Header.Get("x-ms-request-charge"), 64)
			throttled = resp.StatusCode == http.StatusTooManyRequests
		}
		s.record(time.Now(), charge, throttled)
		if n, ok := req.Raw().Context().Value(triesKey{}).(*atomic.Int64); ok {
			n.Add(1)
		}
	}
	return resp, err
}

type triesKey struct{}

// withTries returns ctx carrying n, which the series counting a request
// made under it adds one to: the requests made for one item, however many
// the SDK's retries make.
func withTries(ctx context.Context, n *atomic.Int64) context.Context {
	return context.WithValue(ctx, triesKey{}, n)
}

// sends counts, from a Batcher's BatchReleased events, how many operations
// were released at least once and how many releases were retries.
type sends struct {
	first, again atomic.Int64
}

func (s *sends) event(e batcher.Event) {
	if e.Kind != batcher.BatchReleased {
		return
	}
	for _, op := range e.Batch {
		if op.Attempt() == 1 {
			s.first.Add(1)
		} else {
			s.again.Add(1)
		}
	}
}

// counts returns the operations released at least once, and the releases
// after an operation's first.
func (s *sends) counts() (first, again int64) { return s.first.Load(), s.again.Load() }

// totals returns the units, requests and throttled requests counted so far.
func (s *series) totals() (units float64, requests, throttled int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.total, s.mu.requests, s.mu.throttled
}

// rate returns the units of the last whole second before now, or, in the
// first second, of the second so far.
func (s *series) rate(now time.Time) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := int(now.Sub(s.mu.start) / time.Second)
	if sec > 0 {
		sec--
	}
	if sec < len(s.mu.units) {
		return s.mu.units[sec]
	}
	return 0
}

// seconds returns the units and the throttles of each second up to end
// (a duration since the start; the last, partial, second included).
func (s *series) seconds(end time.Duration) ([]float64, []int64) {
	n := int((end + time.Second - 1) / time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.growLocked(max(n-1, 0))
	return append([]float64(nil), s.mu.units[:n]...), append([]int64(nil), s.mu.throttles[:n]...)
}
