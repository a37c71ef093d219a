package clickhouse_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/ratebatch/batcher/samples/clickhouse"
)

// Track events from anywhere in a service; they reach ClickHouse in sorted
// batches of 500, or every 10 s, whichever comes first. (This example needs a
// ClickHouse server, so go test compiles it but does not run it.)
func Example() {
	ctx := context.Background()
	conn, err := ch.Open(&ch.Options{Addr: []string{"127.0.0.1:9000"}})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if err := clickhouse.CreateTable(ctx, conn, "events"); err != nil {
		log.Fatal(err)
	}

	ingester := clickhouse.NewIngester(conn, "events").
		WithBatchSize(500).
		WithFlushInterval(10 * time.Second).
		WithMaxAttempts(5).
		WithOnFailed(func(events []clickhouse.Event, err error) {
			log.Printf("%d events not written: %v", len(events), err) // must not block
		})
	if err := ingester.Start(ctx); err != nil {
		log.Fatal(err)
	}

	// From any number of goroutines:
	if err := ingester.Track(ctx, clickhouse.Event{Name: "page_view", UserID: 42}); err != nil {
		log.Print(err)
	}

	// On the way out: write what is buffered.
	if err := ingester.Shutdown(ctx); err != nil {
		log.Print(err)
	}
	// Count each event once, duplicates from retried inserts included:
	var events uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM events FINAL").Scan(&events); err != nil {
		log.Fatal(err)
	}
	fmt.Println(events, "events")
}

// Start reports every bad setting at once, each by name and value.
func ExampleIngester_Start() {
	err := clickhouse.NewIngester(nil, "events").
		WithBatchSize(0).
		WithFlushInterval(-time.Second).
		Start(context.Background())
	fmt.Println(err)
	// Output:
	// clickhouse: conn is nil: batcher: invalid setting
	// clickhouse: BatchSize must be more than 0, got 0: batcher: invalid setting
	// clickhouse: FlushInterval must be more than 0, got -1s: batcher: invalid setting
}

// Classify tells what an insert's error means: OnFailed can use it to tell
// a table that is not what the Ingester writes (permanent: fix the schema)
// from a server that was down for longer than the retries lasted.
func ExampleClassify() {
	unknownTable := &ch.Exception{Code: 60, Message: "Table db.events doesn't exist."}
	tooManyParts := &ch.Exception{Code: 252, Message: "Too many parts (300)."}
	refused := errors.New("dial tcp 127.0.0.1:9000: connect: connection refused")

	fmt.Println(clickhouse.Classify(unknownTable))
	fmt.Println(clickhouse.Classify(fmt.Errorf("insert of 500 rows: %w", tooManyParts)))
	fmt.Println(clickhouse.Classify(refused))
	// Output:
	// permanent
	// throttle
	// transient
}
