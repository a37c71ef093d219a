package ratelimiter_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ratebatch/batcher/internal/memlease"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Two instances share 10,000 cost units a second in partitions of 1,000,
// with 500 reserved each. In production each runs in its own process, and
// the lease store is Redis, etcd or Azure Blob Storage (the subpackages);
// here it is an in-memory one, and the targets are set by hand, as a
// Batcher with a backlog sets them every capacity interval.
func ExampleSharedResource() {
	store := memlease.New() // e.g. redis.New(client, "orders-db")
	newInstance := func() *ratelimiter.SharedResource {
		return ratelimiter.NewSharedResource().
			WithReservedCapacity(500).
			WithSharedCapacity(10000, store).
			WithFactor(1000)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := func(cond func() bool) {
		for !cond() {
			time.Sleep(10 * time.Millisecond)
		}
	}

	a := newInstance()
	a.Start(ctx)
	a.GiveMe(50000) // a backlog: a takes every partition at once
	wait(func() bool { return a.Partitions() == 10 })
	fmt.Println("a alone:", a.Capacity())

	b := newInstance()
	b.Start(ctx)
	for b.Partitions() < 5 { // b wants them too: a lets half go
		a.GiveMe(50000)
		b.GiveMe(50000)
		time.Sleep(100 * time.Millisecond)
	}
	wait(func() bool { return a.Partitions() == 5 })
	fmt.Println("a and b:", a.Capacity(), b.Capacity())

	// Shutdown (through the Batcher, or by hand) waits the handoff guard
	// and releases the leases.
	a.Stop(ctx)
	b.Stop(ctx)
	fmt.Println("after Stop:", a.Capacity(), b.Capacity())
	// Output:
	// a alone: 10500
	// a and b: 5500 5500
	// after Stop: 500 500
}
