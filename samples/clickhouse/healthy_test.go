package clickhouse

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ratebatch/batcher/internal/servicetest"
)

// healthyInserts is how many inserts TestIngestHealthyServerNoRetries makes.
const healthyInserts = 10_000

// On a healthy server, with no fault injected, no insert fails: 10,000
// small inserts (10 rows each, 4 at a time) through the Ingester see zero
// insert errors, zero retries and zero failures, and every event is stored
// once. Before the Ingester gave each insert a context that ends only while
// the insert runs, clickhouse-go's watch of the ProcessBatch context, which
// the Batcher cancels as soon as ProcessBatch returns, closed a pooled
// connection now and then, and the next insert on it failed with "use of
// closed network connection" (see insertUnder).
func TestIngestHealthyServerNoRetries(t *testing.T) {
	conn := openConn(t, servicetest.Need(t, servicetest.ClickHouse))
	// A Memory table, with the columns CreateTable makes: 10,000 parts of
	// a MergeTree would keep the server merging (and delaying inserts)
	// for minutes, and what is under test is the client's side.
	table := newDatabase(t, conn) + ".events"
	if err := conn.Exec(t.Context(), "CREATE TABLE "+table+
		" (time DateTime, id UInt64, name String, user_id UInt64, value Float64) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	const rows = 10
	i := NewIngester(conn, table).
		WithBatchSize(rows).
		WithMaxConcurrentInserts(4).
		WithFlushInterval(time.Hour). // full batches only: one insert each
		WithBufferSize(100*rows).
		WithRetryBackoff(10*time.Millisecond, 100*time.Millisecond)
	var mu sync.Mutex
	var insertErrs []string
	i.insertChunk = func(ctx context.Context, events []Event) error {
		err := i.insert(ctx, events)
		if err != nil {
			mu.Lock()
			insertErrs = append(insertErrs, err.Error())
			mu.Unlock()
		}
		return err
	}
	var failed []string
	i.WithOnFailed(func(events []Event, err error) {
		mu.Lock()
		failed = append(failed, err.Error())
		mu.Unlock()
	})
	if err := i.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	trackAll(t, i, healthyInserts*rows, 4)
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)

	st := i.Stats()
	t.Logf("%d events in %d inserts of %d rows in %v: %+v", healthyInserts*rows, st.Inserts, rows, elapsed.Round(time.Millisecond), st)
	if st.InsertErrors != 0 || st.Retried != 0 || st.Failed != 0 {
		mu.Lock()
		t.Errorf("a healthy server: %d insert errors, %d retries, %d events failed; want none. Insert errors:\n%s\nFailures:\n%s",
			st.InsertErrors, st.Retried, st.Failed, strings.Join(insertErrs[:min(len(insertErrs), 10)], "\n"),
			strings.Join(failed[:min(len(failed), 10)], "\n"))
		mu.Unlock()
	}
	if st.Inserts != healthyInserts || st.Inserted != healthyInserts*rows {
		t.Errorf("%d inserts of %d events, want %d of %d", st.Inserts, st.Inserted, healthyInserts, healthyInserts*rows)
	}
	var n, ids uint64
	if err := conn.QueryRow(t.Context(), "SELECT count(), uniqExact(id) FROM "+table).Scan(&n, &ids); err != nil {
		t.Fatal(err)
	}
	if n != healthyInserts*rows || ids != n {
		t.Errorf("%s holds %d rows, %d distinct ids; want %d, each once", table, n, ids, healthyInserts*rows)
	}
}
