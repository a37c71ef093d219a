package counters

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
)

// These tests run without a server, against MemoryStore.

// load runs goroutines × perGoroutine increments over keys keys, and returns
// the totals they add up to. Increment k of goroutine g adds (g+k)%5+1 to key
// (g*7+k)%keys.
func load(t testing.TB, c *Counter, goroutines, perGoroutine, keys int) map[string]int64 {
	t.Helper()
	want := make([]map[string]int64, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		want[g] = map[string]int64{}
		wg.Go(func() {
			for k := range perGoroutine {
				key := fmt.Sprintf("key-%d", (g*7+k)%keys)
				n := int64((g+k)%5 + 1)
				if err := c.Increment(key, n); err != nil {
					t.Errorf("Increment: %v", err)
					return
				}
				want[g][key] += n
			}
		})
	}
	wg.Wait()
	total := map[string]int64{}
	for _, w := range want {
		for k, n := range w {
			total[k] += n
		}
	}
	return total
}

func wantCounts(t testing.TB, got, want map[string]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d keys in the store, want %d", len(got), len(want))
	}
	bad := 0
	for k, n := range want {
		if got[k] != n {
			if bad++; bad <= 5 {
				t.Errorf("%s = %d, want %d", k, got[k], n)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d keys wrong", bad, len(want))
	}
}

func TestStartNamesEveryBadSetting(t *testing.T) {
	c := NewCounter(nil).WithFlushInterval(0).WithJitter(1).WithBatchSize(0).WithMaxAttempts(0).
		WithRetryBackoff(0, 0).WithMaxConcurrentBatches(0).WithMaxWritesPerSecond(-1).
		WithBufferSize(-3).WithWriteTimeout(-time.Second)
	err := c.Start(t.Context())
	if !errors.Is(err, batcher.ErrInvalidSetting) {
		t.Fatalf("Start: %v, want ErrInvalidSetting", err)
	}
	for _, want := range []string{"store is nil", "FlushInterval", "Jitter must be in [0, 1), got 1", "BatchSize",
		"MaxAttempts", "RetryBackoff", "MaxConcurrentBatches", "MaxWritesPerSecond", "BufferSize", "got -3",
		"WriteTimeout", "got -1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start's error does not mention %q:\n%v", want, err)
		}
	}
	if err := c.Increment("k", 1); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("Increment after a failed Start: %v, want ErrImproperOrder", err)
	}
}

// Increments are summed per key: the store gets one write per key per
// flush, and the totals are exact after Shutdown.
func TestCoalescedAndExact(t *testing.T) {
	store := NewMemoryStore()
	c := NewCounter(store).WithFlushInterval(20 * time.Millisecond)
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := load(t, c, 8, 20_000, 50)
	if err := c.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, store.Counts(), want)
	s := c.Stats()
	if s.Increments != 160_000 || s.Written != s.Deltas || s.Deltas > 50*s.Flushes || s.Failed != 0 || s.Skipped != 0 {
		t.Errorf("stats %+v: want 160000 increments, at most one write per key per flush, none failed", s)
	}
	t.Logf("%d increments, %d flushes, %d writes, %d store calls", s.Increments, s.Flushes, s.Written, s.StoreCalls)
	if err := c.Increment("k", 1); !errors.Is(err, batcher.ErrClosed) {
		t.Errorf("Increment after Shutdown: %v, want ErrClosed", err)
	}
}

// flakyStore fails some Apply calls before applying anything, and some
// after applying everything (the reply lost on the way back).
type flakyStore struct {
	Store
	calls          atomic.Int64
	failEvery      int64 // fail before applying every failEvery-th call
	loseEvery      int64 // apply, then fail, every loseEvery-th call
	failed, losses atomic.Int64
}

var (
	errInjected = errors.New("connection reset (injected before the write)")
	errLost     = errors.New("connection reset (injected after the write was applied)")
)

func (s *flakyStore) Apply(ctx context.Context, deltas []Delta) (int, error) {
	n := s.calls.Add(1)
	if s.failEvery > 0 && n%s.failEvery == 0 {
		s.failed.Add(1)
		return 0, errInjected
	}
	applied, err := s.Store.Apply(ctx, deltas)
	if err == nil && s.loseEvery > 0 && n%s.loseEvery == 0 {
		s.losses.Add(1)
		return 0, errLost
	}
	return applied, err
}

// Writes that fail, and writes applied whose reply is lost, are retried
// without counting anything twice.
func TestRetriesDoNotDoubleCount(t *testing.T) {
	mem := NewMemoryStore()
	store := &flakyStore{Store: mem, failEvery: 3, loseEvery: 4}
	c := NewCounter(store).WithFlushInterval(5*time.Millisecond).WithBatchSize(7).
		WithRetryBackoff(time.Millisecond, 5*time.Millisecond).WithMaxAttempts(20)
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := load(t, c, 4, 5_000, 40)
	if err := c.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, mem.Counts(), want)
	s := c.Stats()
	if store.failed.Load() == 0 || store.losses.Load() == 0 || s.Skipped == 0 || s.Failed != 0 {
		t.Errorf("stats %+v, %d injected failures, %d lost replies: want both, and skipped deltas", s, store.failed.Load(), store.losses.Load())
	}
	// A delta applied by a call whose reply was lost is skipped by the
	// call that retries it: every delta is counted once, one way or the other.
	if s.Written+s.Skipped != s.Deltas {
		t.Errorf("stats %+v: want Written + Skipped = Deltas", s)
	}
}

// When the attempts run out, the key sums are reported with the error; the
// sums reported and the sums written add up to the increments.
func TestFailuresReported(t *testing.T) {
	var mu sync.Mutex
	reported := map[string]int64{}
	var reportErr error
	c := NewCounter(&flakyStore{Store: NewMemoryStore(), failEvery: 1}).
		WithFlushInterval(time.Hour).WithMaxAttempts(3).WithRetryBackoff(time.Millisecond, time.Millisecond).
		WithOnFailed(func(deltas []Delta, err error) {
			mu.Lock()
			defer mu.Unlock()
			for _, d := range deltas {
				reported[d.Key] += d.N
			}
			reportErr = err
		})
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := load(t, c, 2, 100, 3)
	if err := c.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	wantCounts(t, reported, want)
	if !errors.Is(reportErr, batcher.ErrTooManyAttempts) || !errors.Is(reportErr, errInjected) {
		t.Errorf("reported error %v, want one wrapping ErrTooManyAttempts and the store's", reportErr)
	}
	if s := c.Stats(); s.Failed != 3 || s.StoreErrors != 3 {
		t.Errorf("stats %+v: want 3 failed deltas, after 3 store errors", s)
	}
}

// blockingStore never answers until its context ends.
type blockingStore struct{}

func (blockingStore) Apply(ctx context.Context, _ []Delta) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// Shutdown gives up when its context ends, and reports what it could not
// write.
func TestShutdownGivesUp(t *testing.T) {
	var failed atomic.Int64
	c := NewCounter(blockingStore{}).WithFlushInterval(time.Hour).
		WithOnFailed(func(deltas []Delta, err error) { failed.Add(int64(len(deltas))) })
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	for k := range 10 {
		c.Increment(fmt.Sprint(k), 1)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := c.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want DeadlineExceeded", err)
	}
	if failed.Load() != 10 || c.Stats().Failed != 10 {
		t.Errorf("%d key sums reported failed (stats %+v), want 10", failed.Load(), c.Stats())
	}
}

// Flush intervals vary within the jitter, and do vary.
func TestJitter(t *testing.T) {
	c := NewCounter(NewMemoryStore()).WithFlushInterval(time.Second).WithJitter(0.2)
	lo, hi := time.Hour, time.Duration(0)
	for range 1000 {
		d := c.nextInterval()
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 800*time.Millisecond || hi > 1200*time.Millisecond || hi-lo < 300*time.Millisecond {
		t.Errorf("intervals in [%v, %v], want spread over [0.8s, 1.2s]", lo, hi)
	}
}

// timedStore records, for each delta applied, the moment the Batcher
// released its batch (batcher.ReleasedAt, the moment its cap counts from;
// zero if Apply's context does not come from ProcessBatch's).
type timedStore struct {
	*MemoryStore
	released releases.Log
}

func (s *timedStore) Apply(ctx context.Context, deltas []Delta) (int, error) {
	r, _ := batcher.ReleasedAt(ctx)
	s.released.AddAt(r, len(deltas))
	return s.MemoryStore.Apply(ctx, deltas)
}

// WithMaxWritesPerSecond caps the key writes in any second: no one-second
// window of the moments their batches were released holds more than the
// cap. (The writes come a little after those moments, by however long
// their goroutine took to run: a window of write times can hold a batch
// more under a loaded machine.)
func TestMaxWritesPerSecond(t *testing.T) {
	store := &timedStore{MemoryStore: NewMemoryStore()}
	c := NewCounter(store).WithFlushInterval(50 * time.Millisecond).WithBatchSize(100).WithMaxWritesPerSecond(1000)
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	want := map[string]int64{}
	for k := range 2000 {
		key := fmt.Sprint("k", k)
		c.Increment(key, 2)
		want[key] = 2
	}
	if err := c.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	wantCounts(t, store.Counts(), want)
	rs := store.released.All()
	if len(rs) > 0 && rs[0].At.IsZero() {
		t.Fatal("Apply's context does not come from ProcessBatch's")
	}
	if n, at := releases.MaxWindow(rs, time.Second); n > 1000 {
		t.Fatalf("%d writes released within a second of %v, cap 1000", n, at.Sub(start))
	}
	if elapsed < time.Second || elapsed > 10*time.Second {
		t.Errorf("2000 writes at 1000 a second took %v", elapsed)
	}
	t.Logf("2000 key writes at most 1000 a second: %v", elapsed.Round(time.Millisecond))
}
