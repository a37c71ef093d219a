package main

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
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

// Do implements policy.Policy: it counts the charge of each document
// request and whether it was throttled.
func (s *series) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	// Only document requests: the account, database and container requests
	// draw on no throughput.
	if resp != nil && strings.Contains(req.Raw().URL.Path, "/docs") {
		charge, _ := strconv.ParseFloat(resp.Header.Get("x-ms-request-charge"), 64)
		s.record(time.Now(), charge, resp.StatusCode == http.StatusTooManyRequests)
	}
	return resp, err
}

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
