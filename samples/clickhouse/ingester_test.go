package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
)

// These tests run without a server: insertChunk is replaced by a recorder.

type chunkRecorder struct {
	mu     sync.Mutex
	chunks [][]Event
	fail   func(call int, chunk []Event) error // nil: every insert succeeds
	calls  int
}

func (r *chunkRecorder) insert(ctx context.Context, events []Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		if err := r.fail(r.calls, events); err != nil {
			return err
		}
	}
	r.chunks = append(r.chunks, slices.Clone(events))
	return nil
}

func (r *chunkRecorder) ids() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []uint64
	for _, c := range r.chunks {
		for _, e := range c {
			ids = append(ids, e.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// fakeConn stands for a connection that is never used.
type fakeConn struct{ driver.Conn }

func newTestIngester(r *chunkRecorder) *Ingester {
	i := NewIngester(fakeConn{}, "events")
	i.insertChunk = r.insert
	return i
}

func TestStartNamesEveryBadSetting(t *testing.T) {
	i := NewIngester(nil, "events; DROP TABLE x").
		WithBatchSize(0).WithChunkSize(-1).WithFlushInterval(0).WithMaxAttempts(0).
		WithRetryBackoff(time.Second, time.Millisecond).WithMaxConcurrentInserts(0).
		WithMaxRowsPerSecond(-5).WithBufferSize(-1).WithInsertTimeout(0)
	err := i.Start(t.Context())
	if !errors.Is(err, batcher.ErrInvalidSetting) {
		t.Fatalf("Start: %v, want ErrInvalidSetting", err)
	}
	for _, want := range []string{"conn is nil", `table "events; DROP TABLE x"`, "BatchSize", "got 0",
		"ChunkSize", "got -1", "FlushInterval", "MaxAttempts", "RetryBackoff", "1s and 1ms",
		"MaxConcurrentInserts", "MaxRowsPerSecond", "got -5", "BufferSize", "InsertTimeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start's error does not mention %q:\n%v", want, err)
		}
	}
	if err := i.Track(t.Context(), Event{}); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("Track after a failed Start: %v, want ErrImproperOrder", err)
	}
}

func TestWithAfterStartPanics(t *testing.T) {
	r := &chunkRecorder{}
	i := newTestIngester(r)
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer i.Shutdown(context.Background())
	defer func() {
		if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "WithBatchSize") {
			t.Errorf("panic %v, want one naming WithBatchSize", p)
		}
	}()
	i.WithBatchSize(3)
}

// A full batch goes out at once, sorted by time, in chunks; Shutdown writes
// the partial batch left.
func TestBatchesSortedAndChunked(t *testing.T) {
	r := &chunkRecorder{}
	i := newTestIngester(r).WithBatchSize(10).WithChunkSize(4).WithFlushInterval(time.Hour).
		WithMaxConcurrentInserts(1)
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for k := range 13 { // times in reverse order
		if err := i.Track(t.Context(), Event{ID: uint64(k + 1), Time: base.Add(time.Duration(13-k) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	// The full batch of 10 goes without waiting for the hour-long interval.
	for deadline := time.Now().Add(5 * time.Second); i.Stats().Inserted < 10; {
		if time.Now().After(deadline) {
			t.Fatalf("full batch not inserted: %+v", i.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var sizes []int
	for _, c := range r.chunks {
		sizes = append(sizes, len(c))
		if !slices.IsSortedFunc(c, func(a, b Event) int { return a.Time.Compare(b.Time) }) {
			t.Errorf("chunk not sorted by time: %v", c)
		}
	}
	if want := []int{4, 4, 2, 3}; !slices.Equal(sizes, want) {
		t.Errorf("chunk sizes %v, want %v", sizes, want)
	}
	// Within the first batch, chunks follow each other in time.
	if !r.chunks[0][3].Time.Before(r.chunks[1][0].Time) {
		t.Errorf("chunks of a batch out of order: %v then %v", r.chunks[0], r.chunks[1])
	}
	if s := i.Stats(); s.Tracked != 13 || s.Inserted != 13 || s.Inserts != 4 || s.Failed != 0 || s.Buffered != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A chunk whose insert fails is retried after the back-off, alone; the others
// are not written twice.
func TestFailedChunkRetried(t *testing.T) {
	failures := 0
	r := &chunkRecorder{fail: func(call int, chunk []Event) error {
		if chunk[0].ID == 1 && failures < 2 {
			failures++
			return errors.New("connection refused")
		}
		return nil
	}}
	i := newTestIngester(r).WithBatchSize(6).WithChunkSize(3).WithFlushInterval(time.Hour).
		WithRetryBackoff(time.Millisecond, 2*time.Millisecond).WithMaxConcurrentInserts(1)
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for k := range 6 {
		i.Track(t.Context(), Event{ID: uint64(k + 1), Time: base.Add(time.Duration(k) * time.Second)})
	}
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := r.ids(), []uint64{1, 2, 3, 4, 5, 6}; !slices.Equal(got, want) {
		t.Errorf("inserted ids %v, want %v (each once)", got, want)
	}
	s := i.Stats()
	if s.Inserted != 6 || s.Failed != 0 || s.InsertErrors != 2 || s.Retried != 6 {
		t.Errorf("stats %+v, want 6 inserted, 2 insert errors, 6 retries", s)
	}
}

// When the attempts run out, the events are reported to OnFailed with the
// error, and counted; none is lost silently.
func TestFailuresReported(t *testing.T) {
	r := &chunkRecorder{fail: func(int, []Event) error { return errors.New("table is read-only") }}
	var mu sync.Mutex
	var failed []Event
	var failErr error
	i := newTestIngester(r).WithBatchSize(5).WithMaxAttempts(3).WithFlushInterval(time.Hour).
		WithRetryBackoff(time.Millisecond, time.Millisecond).
		WithOnFailed(func(events []Event, err error) {
			mu.Lock()
			defer mu.Unlock()
			failed = append(failed, events...)
			failErr = err
		})
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	for k := range 5 {
		i.Track(t.Context(), Event{ID: uint64(k + 1), Name: "click"})
	}
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failed) != 5 || !errors.Is(failErr, batcher.ErrTooManyAttempts) || !strings.Contains(failErr.Error(), "read-only") {
		t.Fatalf("OnFailed got %d events, error %v", len(failed), failErr)
	}
	if failed[0].Name != "click" {
		t.Errorf("OnFailed got %+v, want the events tracked", failed[0])
	}
	if s := i.Stats(); s.Failed != 5 || s.Inserted != 0 || s.InsertErrors != 3 {
		t.Errorf("stats %+v", s)
	}
}

// Track assigns distinct IDs and the current time to events without them,
// and refuses events after Shutdown.
func TestTrackDefaults(t *testing.T) {
	r := &chunkRecorder{}
	i := newTestIngester(r).WithFlushInterval(time.Millisecond)
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 250 {
				if err := i.Track(t.Context(), Event{Name: "view"}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	ids := r.ids()
	if len(slices.Compact(ids)) != 1000 || slices.Contains(ids, 0) {
		t.Errorf("%d distinct ids for 1000 events, or a zero id", len(slices.Compact(ids)))
	}
	if e := r.chunks[0][0]; e.Time.Before(before) || e.Time.After(time.Now()) {
		t.Errorf("time %v not set to the time of Track", e.Time)
	}
	if err := i.Track(t.Context(), Event{}); !errors.Is(err, batcher.ErrClosed) {
		t.Errorf("Track after Shutdown: %v, want ErrClosed", err)
	}
}

// Both ways of sorting (packed keys, and comparison for batches that span
// too long) order by time and keep the arrival order of equal times.
func TestSortByTime(t *testing.T) {
	base := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, span := range []time.Duration{time.Second, 100 * 365 * 24 * time.Hour} {
		w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
		var batch []*batcher.Operation
		offsets := []int{5, 3, 3, 0, 9, 1, 3, 7}
		for k, o := range offsets {
			e := Event{ID: uint64(k), Time: base.Add(span / 10 * time.Duration(o))}
			batch = append(batch, batcher.NewOperation(w, 1, e, true))
		}
		events, ops := sortByTime(batch)
		var ids []uint64
		for k, e := range events {
			ids = append(ids, e.ID)
			if ops[k].Payload().(Event) != e {
				t.Fatalf("span %v: operations and events differ at %d", span, k)
			}
		}
		if want := []uint64{3, 5, 1, 2, 6, 0, 7, 4}; !slices.Equal(ids, want) {
			t.Errorf("span %v: sorted ids %v, want %v", span, ids, want)
		}
	}
}

// WithMaxRowsPerSecond caps the rows inserted in any second: no one-second
// window of the moments the Batcher released the rows' batches
// (batcher.ReleasedAt, the moments its cap counts from) holds more than
// the cap. The inserts themselves come a little later, by however long
// their goroutine took to run; under the race detector beside other tests
// that has been 7.5 ms, enough for a window of insert times to hold a
// batch and a part more (1,114 rows once), so those are only logged.
func TestMaxRowsPerSecond(t *testing.T) {
	var released, inserted releases.Log // rows, by release and by insert
	i := NewIngester(fakeConn{}, "events").WithBatchSize(100).WithMaxRowsPerSecond(1000)
	i.insertChunk = func(ctx context.Context, events []Event) error {
		r, ok := batcher.ReleasedAt(ctx)
		if !ok {
			t.Error("insertChunk's context does not come from ProcessBatch's")
		}
		released.AddAt(r, len(events))
		inserted.Add(len(events))
		return nil
	}
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for k := range 2500 {
		if err := i.Track(t.Context(), Event{ID: uint64(k + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if n := released.Total(); n != 2500 {
		t.Fatalf("%d rows inserted, want 2500", n)
	}
	if n, at := releases.MaxWindow(released.All(), time.Second); n > 1000 {
		t.Errorf("%d rows released within a second of %v, cap 1000", n, at.Sub(start))
	}
	if elapsed < 1500*time.Millisecond || elapsed > 10*time.Second {
		t.Errorf("2500 rows at 1000 a second took %v", elapsed)
	}
	n, at := releases.MaxWindow(inserted.All(), time.Second)
	t.Logf("2500 rows at most 1000 a second: %v; by insert times, at most %d in a second (from %v)", elapsed.Round(time.Millisecond), n, at.Sub(start))
}

// An insert's context is not cancelled when ProcessBatch returns (the
// Batcher cancels ProcessBatch's own then, and clickhouse-go may act on that
// after Send has returned the connection to its pool; see insertUnder), yet
// it carries ProcessBatch's values.
func TestInsertContextOutlivesProcessBatch(t *testing.T) {
	var mu sync.Mutex
	var ctxs []context.Context
	i := NewIngester(fakeConn{}, "events").WithBatchSize(5).WithFlushInterval(time.Hour)
	i.insertChunk = func(ctx context.Context, events []Event) error {
		mu.Lock()
		defer mu.Unlock()
		ctxs = append(ctxs, ctx)
		return nil
	}
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	for k := range 10 {
		if err := i.Track(t.Context(), Event{ID: uint64(k + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ctxs) != 2 {
		t.Fatalf("%d inserts, want 2", len(ctxs))
	}
	for k, ctx := range ctxs {
		if err := ctx.Err(); err != nil {
			t.Errorf("insert %d: its context ended with %v after ProcessBatch returned", k+1, err)
		}
		if _, ok := batcher.ReleasedAt(ctx); !ok {
			t.Errorf("insert %d: its context lost ProcessBatch's values", k+1)
		}
	}
}

// An insert that hangs is still cancelled at InsertTimeout, and retried.
func TestInsertTimeoutCancelsInsert(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var calls int
		i := NewIngester(fakeConn{}, "events").WithBatchSize(1).WithInsertTimeout(time.Minute).
			WithRetryBackoff(time.Second, time.Second)
		i.insertChunk = func(ctx context.Context, events []Event) error {
			mu.Lock()
			calls++
			first := calls == 1
			mu.Unlock()
			if first { // hangs until cancelled
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		}
		i.WithOnFailed(func(events []Event, err error) { t.Errorf("failed: %v", err) })
		if err := i.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := i.Track(t.Context(), Event{ID: 1}); err != nil {
			t.Fatal(err)
		}
		if err := i.Shutdown(t.Context()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		s := i.Stats()
		if s.Inserted != 1 || s.InsertErrors != 1 || s.Retried != 1 || calls != 2 {
			t.Errorf("stats %+v after %d calls, want the hung insert cancelled and retried once", s, calls)
		}
		// The hung insert ended at the timeout, and the retry came a
		// second (the back-off) later.
		if took := time.Since(start); took != time.Minute+time.Second {
			t.Errorf("the event was inserted after %v, want %v", took, time.Minute+time.Second)
		}
	})
}
