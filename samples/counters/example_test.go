package counters_test

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/samples/counters"
)

// Ten thousand increments from four goroutines become one write per key.
func Example() {
	store := counters.NewMemoryStore() // or counters.NewRedisStore(client, "views:")
	c := counters.NewCounter(store).WithFlushInterval(time.Minute)
	if err := c.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for k := range 2500 {
				c.Increment([]string{"home", "about"}[k%2], 1)
			}
		})
	}
	wg.Wait()
	if err := c.Shutdown(context.Background()); err != nil { // writes the sums
		fmt.Println(err)
	}
	s := c.Stats()
	fmt.Println("home:", store.Get("home"), "about:", store.Get("about"))
	fmt.Println("increments:", s.Increments, "writes:", s.Deltas)
	// Output:
	// home: 5000 about: 5000
	// increments: 10000 writes: 2
}

// Counting page views in Redis: a key's total is the integer at
// "views:"+key. (This example needs a Redis server, so go test compiles it
// but does not run it.)
func ExampleNewRedisStore() {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	store := counters.NewRedisStore(client, "views:")
	c := counters.NewCounter(store).
		WithFlushInterval(time.Second). // ±20% jitter
		WithOnFailed(func(deltas []counters.Delta, err error) {
			log.Printf("%d counts not written: %v", len(deltas), err) // must not block
		})
	if err := c.Start(context.Background()); err != nil {
		log.Fatal(err)
	}
	c.Increment("/home", 1) // from any goroutine, as often as you like
	if err := c.Shutdown(context.Background()); err != nil {
		log.Print(err)
	}
	n, _ := client.Get(context.Background(), store.Key("/home")).Int64()
	fmt.Println(n)
}
