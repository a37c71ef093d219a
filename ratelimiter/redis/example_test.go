package redis_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/ratelimiter/redis"
)

// Two instances share the 4 partitions of one shared capacity through Redis.
// (This example needs a Redis server, so it is compiled but not run.)
func Example() {
	client := goredis.NewClient(&goredis.Options{
		Addr:                  "127.0.0.1:6379",
		ContextTimeoutEnabled: true, // calls end at their ctx's deadline
	})
	defer client.Close()

	// Every instance names the shared resource the same way.
	leases, err := redis.New(client, "orders-cosmos")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := leases.Provision(ctx, 4); err != nil {
		log.Fatal(err)
	}

	// Instance A takes partition 0; instance B cannot.
	if err := leases.Acquire(ctx, 0, "instance-a", 15*time.Second); err != nil {
		log.Fatal(err)
	}
	err = leases.Acquire(ctx, 0, "instance-b", 15*time.Second)
	fmt.Println("B on partition 0:", errors.Is(err, ratelimiter.ErrLeaseHeld))

	// A keeps it by renewing before it ends, and gives it up when done.
	if err := leases.Renew(ctx, 0, "instance-a", 15*time.Second); err != nil {
		log.Fatal(err)
	}
	if err := leases.Release(ctx, 0, "instance-a"); err != nil {
		log.Fatal(err)
	}

	// Each instance says what it wants and holds, and learns the others'.
	demands, err := leases.Announce(ctx, ratelimiter.Demand{Owner: "instance-b", Want: 2, TTL: 10 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range demands {
		fmt.Printf("%s wants %d, holds %v\n", d.Owner, d.Want, d.Held)
	}
}
