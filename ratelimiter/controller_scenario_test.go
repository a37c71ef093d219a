package ratelimiter_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

// The scenarios S1, S2, S3, S4 and S6, on fake time: a Batcher with a
// Controller writes to a simulated datastore that serves a budget per fixed
// one-second window, answers each request over it with a throttle whose
// retry-after is the time to the next window (as Cosmos DB does), and whose
// budget may change with time. Each operation is one request costing one
// unit; a request takes 5ms.

// datastore is the simulation. budget gives the units it serves in the
// window that starts at the given second of the run.
type datastore struct {
	t0     time.Time
	budget func(sec int) int

	mu        sync.Mutex
	served    []int // per second of the run
	requests  []int
	throttled []int
}

func (d *datastore) grow(sec int) {
	for len(d.served) <= sec {
		d.served = append(d.served, 0)
		d.requests = append(d.requests, 0)
		d.throttled = append(d.throttled, 0)
	}
}

func (d *datastore) ProcessBatch(ctx context.Context, batch []*batcher.Operation) error {
	time.Sleep(5 * time.Millisecond)
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	sec := int(now.Sub(d.t0) / time.Second)
	d.grow(sec)
	next := d.t0.Add(time.Duration(sec+1) * time.Second)
	for _, op := range batch {
		d.requests[sec]++
		if d.served[sec]+op.Cost() > d.budget(sec) {
			d.throttled[sec]++
			op.Throttle(next.Sub(now), errors.New("429"))
			continue
		}
		d.served[sec] += op.Cost()
	}
	return nil
}

// over returns the utilization (served / budget) and the share of requests
// throttled over the seconds [from, to).
func (d *datastore) over(from, to int) (util, share float64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.grow(to)
	var served, budget, req, th int
	for s := from; s < to; s++ {
		served += d.served[s]
		budget += d.budget(s)
		req += d.requests[s]
		th += d.throttled[s]
	}
	return float64(served) / float64(budget), float64(th) / float64(max(req, 1))
}

// simulate runs a Batcher with lim against a datastore with budget for
// seconds seconds, with a backlog all along, and returns the datastore.
func simulate(t *testing.T, lim batcher.RateLimiter, budget func(sec int) int, seconds int) *datastore {
	t.Helper()
	d := &datastore{t0: time.Now(), budget: budget}
	total := 0
	for s := range seconds {
		total += budget(s)
	}
	total += total / 10
	w := batcher.NewWatcherFor(d).WithMaxBatchSize(20)
	b := batcher.NewBatcher().WithRateLimiter(lim).WithBufferSize(total)
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i := range total {
		if err := b.Enqueue(batcher.NewOperation(w, 1, i, true)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Duration(seconds) * time.Second)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // for the ProcessBatch calls that Close did not wait for
	return d
}

func TestControllerScenarios(t *testing.T) {
	const r = 1000 // the datastore's budget a second, normally
	type check struct {
		from, to int     // seconds of the run
		util     float64 // at least
		share    float64 // 429s, at most, as a share of requests
	}
	cases := []struct {
		name    string
		ceiling int
		budget  func(sec int) int
		seconds int
		checks  []check
	}{
		{"S1 ceiling = what it serves", r, func(int) int { return r }, 30,
			[]check{{0, 30, 0.95, 0.001}}},
		{"S2 ceiling 2x", 2 * r, func(int) int { return r }, 30,
			[]check{{5, 30, 0.90, 0.01}}},
		{"S3 ceiling 20x", 20 * r, func(int) int { return r }, 30,
			[]check{{5, 30, 0.90, 0.01}}},
		{"S4 1000 -> 400 at 20s -> 1000 at 40s", r, func(s int) int {
			if s >= 20 && s < 40 {
				return 400
			}
			return r
		}, 60, []check{{5, 20, 0.90, 0.01}, {25, 40, 0.85, 0.02}, {45, 60, 0.85, 0.02}}},
		{"S6 another workload takes 30% from 10s to 30s", r, func(s int) int {
			if s >= 10 && s < 30 {
				return 700
			}
			return r
		}, 40, []check{{15, 30, 0.85, 0.02}, {35, 40, 0.85, 0.02}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := simulate(t, ratelimiter.NewController(tc.ceiling), tc.budget, tc.seconds)
				for _, c := range tc.checks {
					util, share := d.over(c.from, c.to)
					t.Logf("seconds %d-%d: utilization %.3f, 429s %.2f%% of requests", c.from, c.to, util, 100*share)
					if util < c.util || share > c.share {
						t.Errorf("seconds %d-%d: utilization %.3f (want >= %.2f), 429s %.2f%% (want <= %.0f%%)",
							c.from, c.to, util, c.util, 100*share, 100*c.share)
					}
				}
				if testing.Verbose() {
					d.mu.Lock()
					s := ""
					for i := range min(len(d.served), tc.seconds) {
						s += fmt.Sprintf(" %d/%d", d.served[i], d.throttled[i])
					}
					d.mu.Unlock()
					t.Log("served/429s a second:", s)
				}
			})
		})
	}
}
