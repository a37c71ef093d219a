package cosmosbulk_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
)

// fakeOffer is a throughput read a test changes at will.
type fakeOffer struct {
	mu    sync.Mutex
	tp    cosmosbulk.Throughput
	err   error
	reads []time.Time
	delay time.Duration
}

func (f *fakeOffer) set(tp cosmosbulk.Throughput, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tp, f.err = tp, err
}

func (f *fakeOffer) read(ctx context.Context) (cosmosbulk.Throughput, error) {
	f.mu.Lock()
	f.reads = append(f.reads, time.Now())
	d := f.delay
	f.mu.Unlock()
	if d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return cosmosbulk.Throughput{}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tp, f.err
}

func (f *fakeOffer) readCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reads)
}

// events records a limiter's events.
type events struct {
	mu  sync.Mutex
	all []batcher.Event
}

func (e *events) add(ev batcher.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) kinds() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s []string
	for _, ev := range e.all {
		s = append(s, fmt.Sprintf("%v:%d", ev.Kind, ev.Val))
	}
	return strings.Join(s, " ")
}

// TestThroughputLimiterFollowsTheOffer checks, on fake time, the capacity
// after Start and after each refresh: the target fraction of the manual
// throughput or of the autoscale maximum, never above the ceiling, changed
// exactly at the refresh after the offer changed; and the events.
func TestThroughputLimiterFollowsTheOffer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeOffer{tp: cosmosbulk.Throughput{ManualRU: 10000}}
		lim := cosmosbulk.NewThroughputLimiter(f.read).WithCeiling(15000).WithTargetFraction(0.9).WithRefreshInterval(5 * time.Second)
		ev := &events{}
		lim.AddListener(ev.add)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		if err := lim.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if c, m := lim.Capacity(), lim.MaxCapacity(); c != 9000 || m != 15000 {
			t.Fatalf("after Start: capacity %d, max %d; want 9000 (0.9 of manual 10000), 15000", c, m)
		}
		f.set(cosmosbulk.Throughput{AutoscaleMaxRU: 20000}, nil)
		time.Sleep(5*time.Second - time.Nanosecond)
		synctest.Wait()
		if c := lim.Capacity(); c != 9000 {
			t.Errorf("just before the refresh: %d, want 9000 still", c)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if c := lim.Capacity(); c != 15000 {
			t.Errorf("after the refresh, autoscale max 20000: %d, want the ceiling 15000", c)
		}
		f.set(cosmosbulk.Throughput{AutoscaleMaxRU: 4000, Database: true}, nil)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if c := lim.Capacity(); c != 3600 {
			t.Errorf("autoscale max 4000 on the database: %d, want 3600", c)
		}
		tp, ok, err := lim.Throughput()
		if !ok || err != nil || tp.AutoscaleMaxRU != 4000 || !tp.Database || tp.String() != "autoscale up to 4000 RU/s on the database" {
			t.Errorf("Throughput() = %+v (%s), %v, %v", tp, tp, ok, err)
		}
		// A failed read keeps the capacity and says so.
		f.set(cosmosbulk.Throughput{}, errors.New("503 service unavailable"))
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if c := lim.Capacity(); c != 3600 {
			t.Errorf("after a failed read: %d, want 3600 kept", c)
		}
		if _, _, err := lim.Throughput(); err == nil {
			t.Errorf("Throughput() reports no error after a failed read")
		}
		if got, want := ev.kinds(), "capacity:9000 capacity:15000 capacity:3600 error:0"; got != want {
			t.Errorf("events %q, want %q", got, want)
		}
		if n := f.readCount(); n != 4 {
			t.Errorf("%d reads, want 4 (Start and three refreshes)", n)
		}
		if err := lim.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		if n := f.readCount(); n != 4 {
			t.Errorf("%d reads after Stop, want no more", n)
		}
	})
}

// TestThroughputLimiterWhenTheReadFails checks the documented behaviour of
// a read refused (403), unsupported (serverless) or failing at Start: with
// no fallback, Start fails with the error; with one, the capacity is the
// fallback until a read succeeds.
func TestThroughputLimiterWhenTheReadFails(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		is   error
	}{
		{"forbidden", fmt.Errorf("%w (container db/c): 403 Forbidden", cosmosbulk.ErrThroughputForbidden), cosmosbulk.ErrThroughputForbidden},
		{"serverless", fmt.Errorf("%w: serverless", cosmosbulk.ErrNoThroughput), cosmosbulk.ErrNoThroughput},
		{"transient", errors.New("dial tcp: connection refused"), nil},
		{"zero", nil, cosmosbulk.ErrNoThroughput}, // an offer of 0 RU/s
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fakeOffer{err: c.err}
				lim := cosmosbulk.NewThroughputLimiter(f.read).WithCeiling(5000)
				err := lim.Start(t.Context())
				if err == nil || !strings.Contains(err.Error(), "WithFallback") || (c.is != nil && !errors.Is(err, c.is)) {
					t.Fatalf("Start without a fallback: %v; want an error wrapping %v that names WithFallback", err, c.is)
				}
				if lim.Capacity() != 0 {
					t.Errorf("capacity %d after a failed Start", lim.Capacity())
				}

				ev := &events{}
				lim = cosmosbulk.NewThroughputLimiter(f.read).WithCeiling(5000).WithFallback(800).WithRefreshInterval(time.Second)
				lim.AddListener(ev.add)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				if err := lim.Start(ctx); err != nil {
					t.Fatalf("Start with a fallback: %v", err)
				}
				if lim.Capacity() != 800 {
					t.Errorf("capacity %d, want the fallback 800", lim.Capacity())
				}
				time.Sleep(3 * time.Second)
				synctest.Wait()
				if lim.Capacity() != 800 {
					t.Errorf("capacity %d while reads fail, want the fallback 800", lim.Capacity())
				}
				f.set(cosmosbulk.Throughput{ManualRU: 2000}, nil)
				time.Sleep(time.Second)
				synctest.Wait()
				if lim.Capacity() != 2000 {
					t.Errorf("capacity %d once a read succeeds, want 2000", lim.Capacity())
				}
				if got, want := ev.kinds(), "error:0 capacity:800 error:0 error:0 error:0 capacity:2000"; got != want {
					t.Errorf("events %q, want %q", got, want)
				}
				cancel()
				if err := lim.Stop(t.Context()); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

// TestThroughputLimiterReadTimeout checks that a read that hangs is given
// up after the read timeout, and reported.
func TestThroughputLimiterReadTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeOffer{tp: cosmosbulk.Throughput{ManualRU: 1000}, delay: time.Hour}
		lim := cosmosbulk.NewThroughputLimiter(f.read).WithCeiling(5000).WithReadTimeout(2 * time.Second)
		t0 := time.Now()
		err := lim.Start(t.Context())
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) != 2*time.Second {
			t.Errorf("Start with a hanging read: %v after %v; want a deadline error after 2s", err, time.Since(t0))
		}
	})
}

func TestThroughputLimiterSettings(t *testing.T) {
	lim := cosmosbulk.NewThroughputLimiter(nil).WithTargetFraction(1.5).WithRefreshInterval(time.Millisecond).WithReadTimeout(0).WithFallback(-1)
	err := lim.Start(t.Context())
	for _, s := range []string{"no read function", "Ceiling is 0", "TargetFraction is 1.5", "RefreshInterval is 1ms", "ReadTimeout is 0s", "Fallback is -1"} {
		if !errors.Is(err, batcher.ErrInvalidSetting) || !strings.Contains(err.Error(), s) {
			t.Errorf("Start = %v; want it to say %q", err, s)
		}
	}
	f := &fakeOffer{tp: cosmosbulk.Throughput{ManualRU: 1000}}
	if err := cosmosbulk.NewThroughputLimiter(f.read).WithCeiling(100).WithFallback(200).Start(t.Context()); err == nil || !strings.Contains(err.Error(), "Fallback is 200") {
		t.Errorf("a fallback over the ceiling: %v", err)
	}
	lim = cosmosbulk.NewThroughputLimiter(f.read).WithCeiling(100)
	ctx, cancel := context.WithCancel(t.Context())
	if err := lim.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lim.Start(ctx); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("second Start: %v, want ErrImproperOrder", err)
	}
	cancel()
	if err := lim.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "WithCeiling") {
			t.Errorf("WithCeiling after Start: recovered %v, want a panic naming it", r)
		}
	}()
	lim.WithCeiling(5)
}
