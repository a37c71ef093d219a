package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/ratelimiter/etcd"
)

// Two instances share the 4 partitions of one shared capacity through etcd.
// (This example needs an etcd server, so it is compiled but not run.)
func Example() {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://127.0.0.1:2379"},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// Every instance names the shared resource the same way.
	leases, err := etcd.New(client, "/batcher/orders-cosmos")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := leases.Provision(ctx, 4); err != nil {
		log.Fatal(err)
	}

	// Instance A takes partition 0; instance B cannot. (etcd counts whole
	// seconds: a 15 s lease is an etcd lease with a TTL of 15.)
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
