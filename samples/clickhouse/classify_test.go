package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/servicetest"
)

// These tests provoke each class of error on the real server, and check
// what the Ingester does about it.

// classRun is what an Ingester did with events that met an error.
type classRun struct {
	stats      Stats
	insertErrs []error // every failed insert's error, as insertChunk returned it
	failErr    error   // the error OnFailed got (the last one)
}

// ingestClassRun tracks n events through an Ingester on conn and table,
// batches of n, with what configure adds; ctx is the Ingester's run context
// (settings given with ch.Context reach every insert). onInsertErr, if not
// nil, is called with each failed insert's error.
func ingestClassRun(t *testing.T, ctx context.Context, conn driver.Conn, table string, n int,
	configure func(*Ingester), onInsertErr func(error)) classRun {
	t.Helper()
	var mu sync.Mutex
	var r classRun
	i := NewIngester(conn, table).
		WithBatchSize(n).
		WithFlushInterval(time.Hour).
		WithMaxAttempts(3).
		WithRetryBackoff(50*time.Millisecond, 50*time.Millisecond).
		WithOnFailed(func(events []Event, err error) {
			mu.Lock()
			defer mu.Unlock()
			r.failErr = err
		})
	if configure != nil {
		configure(i)
	}
	i.insertChunk = func(ctx context.Context, events []Event) error {
		err := i.insert(ctx, events)
		if err != nil {
			mu.Lock()
			r.insertErrs = append(r.insertErrs, err)
			mu.Unlock()
			if onInsertErr != nil {
				onInsertErr(err)
			}
		}
		return err
	}
	if err := i.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for k := range n {
		if err := i.Track(t.Context(), eventAt(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := i.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	r.stats = i.Stats()
	return r
}

// exceptionCode returns err's ClickHouse exception code, or -1.
func exceptionCode(err error) int32 {
	if ex, ok := errors.AsType[*ch.Exception](err); ok {
		return ex.Code
	}
	return -1
}

// openConnAs opens a connection to addr as user with password, without the
// ping that openConn makes (the login is what fails).
func openConnAs(t *testing.T, addr, user, password string) driver.Conn {
	conn, err := ch.Open(&ch.Options{
		Addr:        []string{addr},
		Auth:        ch.Auth{Username: user, Password: password},
		DialTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Permanent errors fail the events at once, after one insert, without a
// retry, with an error that says so and names the code.
func TestIngestPermanentErrors(t *testing.T) {
	addr := servicetest.Need(t, servicetest.ClickHouse)
	conn := openConn(t, addr)
	db := newDatabase(t, conn)
	create := func(table, columns string) string {
		if err := conn.Exec(t.Context(), "CREATE TABLE "+db+"."+table+" ("+columns+") ENGINE = Memory"); err != nil {
			t.Fatal(err)
		}
		return db + "." + table
	}
	const password = "pw-FAKE-SECRET-7f3a"
	cases := []struct {
		name  string
		conn  driver.Conn
		table string
		code  int32  // the exception's, or -1
		want  string // in OnFailed's error
	}{
		{"unknown table", conn, db + ".missing", 60, "code 60 UNKNOWN_TABLE"},
		{"unknown database", conn, "no_such_db_7f3a.events", 81, "code 81 UNKNOWN_DATABASE"},
		{"unknown column", conn,
			create("no_value", "time DateTime, id UInt64, name String, user_id UInt64"),
			16, "code 16 NO_SUCH_COLUMN_IN_TABLE"},
		{"wrong type", conn,
			create("string_value", "time DateTime, id UInt64, name String, user_id UInt64, value String"),
			-1, "column value: clickhouse [Append]: converting []float64 to String is unsupported"},
		{"wrong password", openConnAs(t, addr, "default", password), db + ".events", 193, "code 193 WRONG_PASSWORD"},
		{"unknown user", openConnAs(t, addr, "nobody_7f3a", password), db + ".events", 192, "code 192 UNKNOWN_USER"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ingestClassRun(t, t.Context(), c.conn, c.table, 3, nil, nil)
			st := r.stats
			if st.Failed != 3 || st.Inserted != 0 || st.InsertErrors != 1 || st.Retried != 0 {
				t.Errorf("stats %+v; want 3 events failed after one insert, none retried", st)
			}
			err := r.failErr
			if err == nil {
				t.Fatal("OnFailed was not called")
			}
			t.Logf("OnFailed: %v", err)
			if Classify(err) != Permanent || errors.Is(err, batcher.ErrTooManyAttempts) {
				t.Errorf("OnFailed's error is %v (too many attempts: %v), want permanent",
					Classify(err), errors.Is(err, batcher.ErrTooManyAttempts))
			}
			if got := exceptionCode(err); got != c.code {
				t.Errorf("exception code %d, want %d", got, c.code)
			}
			for _, want := range []string{"failed for good, not retried", "permanent error", c.want, c.table} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("OnFailed's error does not say %q", want)
				}
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("OnFailed's error shows the password")
			}
		})
	}
}

// Transient errors are retried after the back-off, MaxAttempts (3) inserts
// in all, and then fail as attempts that ran out.
func TestIngestTransientErrors(t *testing.T) {
	addr := servicetest.Need(t, servicetest.ClickHouse)
	conn := openConn(t, addr)
	table := newDatabase(t, conn) + ".events"
	if err := CreateTable(t.Context(), conn, table); err != nil {
		t.Fatal(err)
	}
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	refused, err := ch.Open(&ch.Options{Addr: []string{closed}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer refused.Close()

	cases := []struct {
		name string
		ctx  context.Context
		conn driver.Conn
		code int32
		want string
	}{
		// A memory limit of one byte for each insert: the server refuses
		// every one with 241 MEMORY_LIMIT_EXCEEDED.
		{"memory limit", ch.Context(t.Context(), ch.WithSettings(ch.Settings{"max_memory_usage": 1})), conn,
			241, "transient error, code 241 MEMORY_LIMIT_EXCEEDED"},
		{"connection refused", t.Context(), refused, -1, "connection refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ingestClassRun(t, c.ctx, c.conn, table, 3, nil, nil)
			st := r.stats
			if st.Failed != 3 || st.Inserted != 0 || st.InsertErrors != 3 || st.Retried != 6 {
				t.Errorf("stats %+v; want 3 inserts, 2 retries of 3 events, then 3 events failed", st)
			}
			err := r.failErr
			if err == nil {
				t.Fatal("OnFailed was not called")
			}
			t.Logf("OnFailed: %v", err)
			if Classify(err) != Transient || !errors.Is(err, batcher.ErrTooManyAttempts) {
				t.Errorf("OnFailed's error is %v (too many attempts: %v), want transient attempts that ran out",
					Classify(err), errors.Is(err, batcher.ErrTooManyAttempts))
			}
			if got := exceptionCode(err); got != c.code {
				t.Errorf("exception code %d, want %d", got, c.code)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("OnFailed's error does not say %q", c.want)
			}
		})
	}
}

// Throttles pause the inserts and retry them without counting attempts: with
// MaxAttempts 1, every event is still inserted once the server has room.
func TestIngestThrottleErrors(t *testing.T) {
	addr := servicetest.Need(t, servicetest.ClickHouse)
	conn := openConn(t, addr)
	db := newDatabase(t, conn)
	once := func(t *testing.T, r classRun, code int32) {
		t.Helper()
		st := r.stats
		// (Stats.Retried counts retries, which throttles are not.)
		if st.Inserted != 3 || st.Failed != 0 || st.InsertErrors == 0 {
			t.Errorf("stats %+v; want the events throttled, then all 3 inserted", st)
		}
		for _, err := range r.insertErrs {
			if got := exceptionCode(err); got != code || Classify(err) != Throttle {
				t.Errorf("insert error %v: code %d (%v), want %d (throttle)", err, got, Classify(err), code)
			}
		}
		t.Logf("%d throttled inserts, then all inserted: %v", len(r.insertErrs), r.insertErrs[:min(len(r.insertErrs), 1)])
	}
	one := func(i *Ingester) { i.WithMaxAttempts(1).WithMaxConcurrentInserts(1) }

	t.Run("too many parts", func(t *testing.T) {
		// A table that refuses a third part while merges are stopped.
		table := db + ".parts"
		if err := conn.Exec(t.Context(), "CREATE TABLE "+table+
			" (time DateTime, id UInt64, name String, user_id UInt64, value Float64)"+
			" ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(time) ORDER BY (name, time, id)"+
			" SETTINGS parts_to_throw_insert = 2, parts_to_delay_insert = 1"); err != nil {
			t.Fatal(err)
		}
		if err := conn.Exec(t.Context(), "SYSTEM STOP MERGES "+table); err != nil {
			t.Fatal(err)
		}
		for k := range 2 {
			if err := insertDirectRange(t.Context(), conn, table, 100+k, 101+k); err != nil {
				t.Fatal(err)
			}
		}
		var parts uint64
		if err := conn.QueryRow(t.Context(), "SELECT count() FROM system.parts WHERE active AND database = ? AND table = 'parts'", db).Scan(&parts); err != nil {
			t.Fatal(err)
		}
		if parts != 2 {
			t.Fatalf("%d parts before the Ingester's insert, want 2", parts)
		}
		var merge sync.Once
		r := ingestClassRun(t, t.Context(), conn, table, 3, one, func(err error) {
			merge.Do(func() { // the server has room again once the parts merge
				if err := conn.Exec(context.Background(), "SYSTEM START MERGES "+table); err != nil {
					t.Error(err)
				}
				if err := conn.Exec(context.Background(), "OPTIMIZE TABLE "+table+" FINAL"); err != nil {
					t.Error(err)
				}
			})
		})
		once(t, r, 252)
	})

	t.Run("too many simultaneous queries", func(t *testing.T) {
		table := db + ".queries"
		if err := CreateTable(t.Context(), conn, table); err != nil {
			t.Fatal(err)
		}
		// One query at a time for each insert, while a query of 3 s runs.
		ctx := ch.Context(t.Context(), ch.WithSettings(ch.Settings{"max_concurrent_queries_for_user": 1}))
		slow := make(chan error, 1)
		go func() { slow <- conn.Exec(context.Background(), "SELECT sleep(3) FORMAT Null") }()
		for {
			var running uint64
			if err := conn.QueryRow(t.Context(),
				"SELECT count() FROM system.processes WHERE query LIKE 'SELECT sleep(3)%'").Scan(&running); err != nil {
				t.Fatal(err)
			}
			if running > 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		r := ingestClassRun(t, ctx, conn, table, 3, one, nil)
		if err := <-slow; err != nil {
			t.Fatal(err)
		}
		once(t, r, 202)
	})
}

// insertDirectRange inserts events from..to-1 into table with one insert.
func insertDirectRange(ctx context.Context, conn driver.Conn, table string, from, to int) error {
	events := make([]Event, to-from)
	for k := range events {
		events[k] = eventAt(from + k)
	}
	if err := NewIngester(conn, table).insert(ctx, events); err != nil {
		return fmt.Errorf("insert of events %d..%d: %w", from, to-1, err)
	}
	return nil
}
