package analytics_test

import (
	"context"
	"log"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/samples/analytics"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

// The whole pipeline in one process: events tracked into a local spool,
// consumed into ClickHouse, screen-view durations computed in Redis.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{"127.0.0.1:9000"}})
	if err != nil {
		log.Fatal(err)
	}
	if err := analytics.CreateTable(ctx, conn, "events"); err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})

	l := filelog.New("/var/lib/analytics/spool")
	if err := l.Open(); err != nil {
		log.Fatal(err)
	}
	sp := spool.New(l, spool.JSON[analytics.Event]())
	defer sp.Close()

	b := batcher.NewBatcher()
	if err := b.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	w := analytics.NewWatcher(conn, analytics.NewSessions(rdb, "sessions:", time.Hour), "events")
	go sp.Consumer(b, w).Run(ctx) // removes each event once it is in the table

	t := analytics.NewTracker(sp)
	defer t.Close()
	err = t.Track(ctx, analytics.Event{ID: 1, Session: 7, Seq: 1, Name: analytics.ScreenView,
		TimeMs: time.Now().UnixMilli(), UserID: 42})
	if err != nil {
		log.Fatal(err) // nil: the event is durable in the spool
	}
}
