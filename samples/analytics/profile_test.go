package analytics_test

// Where a process of the pipeline spends its time, for the throughput
// figure: with ANALYTICS_PROFILE set to a directory, each role process
// writes a CPU profile there and, at exit, a line of wall-clock totals per
// step (the backend's calls, the session logic, the inserts).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/ratebatch/batcher/samples/analytics"
	"github.com/ratebatch/batcher/spool"
)

// A step's count of calls, items and total wall time.
type step struct{ calls, items, ns atomic.Int64 }

func (s *step) add(items int, d time.Duration) {
	s.calls.Add(1)
	s.items.Add(int64(items))
	s.ns.Add(int64(d))
}

func (s *step) String() string {
	c := s.calls.Load()
	if c == 0 {
		return "none"
	}
	return fmt.Sprintf("%d calls, %.0f items/call, %.1f ms/call, %.1f s in all",
		c, float64(s.items.Load())/float64(c), float64(s.ns.Load())/float64(c)/1e6, float64(s.ns.Load())/1e9)
}

// timed wraps a backend, timing its calls.
type timed struct {
	spool.Backend
	appends, reads, acks step
}

func (b *timed) Append(ctx context.Context, recs [][]byte) error {
	t := time.Now()
	err := b.Backend.Append(ctx, recs)
	b.appends.add(len(recs), time.Since(t))
	return err
}

func (b *timed) Read(ctx context.Context, max int) ([]spool.Entry, error) {
	t := time.Now()
	es, err := b.Backend.Read(ctx, max)
	b.reads.add(len(es), time.Since(t))
	return es, err
}

func (b *timed) Ack(ctx context.Context, ids []spool.ID) error {
	t := time.Now()
	err := b.Backend.Ack(ctx, ids)
	b.acks.add(len(ids), time.Since(t))
	return err
}

// profiled starts the role's profile, if asked for, and returns the
// backend to use and a function that ends the profile and reports.
func profiled(role string, b spool.Backend) (spool.Backend, func()) {
	dir := env("PROFILE")
	if dir == "" {
		return b, func() {}
	}
	name := filepath.Join(dir, fmt.Sprintf("%s-%d", role, os.Getpid()))
	f, err := os.Create(name + ".pprof")
	if err == nil {
		pprof.StartCPUProfile(f)
	}
	tb := &timed{Backend: b}
	var apply, insert step
	analytics.Observe(func(events, rows int, a, i time.Duration) {
		apply.add(events, a)
		insert.add(rows, i)
	})
	start := time.Now()
	return tb, func() {
		if f != nil {
			pprof.StopCPUProfile()
			f.Close()
		}
		analytics.Observe(nil)
		fmt.Fprintf(os.Stderr, "%s %d: %v alive; Append %v; Read %v; Ack %v; session logic %v; insert %v\n",
			role, os.Getpid(), time.Since(start).Round(time.Millisecond), &tb.appends, &tb.reads, &tb.acks, &apply, &insert)
	}
}
