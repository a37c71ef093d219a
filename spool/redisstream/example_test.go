package redisstream_test

import (
	"context"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/redisstream"
)

type event struct {
	ID   string
	Name string
}

// A spool on a Redis stream, shared by every process that opens the same
// stream: each appends, and the consumers of all of them share the records
// through one consumer group. Redis should run with appendonly yes.
func ExampleNew() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()

	s := redisstream.New(rdb, "events").
		WithMaxLen(1_000_000).           // a bound on the stream: Append waits when full
		WithClaimIdle(30 * time.Second). // a dead consumer's records go to the others after this
		WithConsumer("orders-7f9c")      // this process's name in the group
	if err := s.Open(ctx); err != nil {
		log.Fatal(err)
	}
	sp := spool.New(s, spool.JSON[event]())
	defer sp.Close()

	if err := sp.Append(ctx, event{ID: "e1", Name: "signup"}); err != nil {
		log.Fatal(err) // nil: Redis acknowledged the record
	}
}
