package cosmosbulk_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Load 300 orders into a container whose provisioned throughput the
// Batcher discovers. The container is the project's throttling model of
// Cosmos DB, in process, with 6,000 RU/s over four physical partitions;
// with a real account, build the client with
// azcosmos.NewClientWithKey(endpoint, cred, cosmosbulk.ClientOptions(false)).
func Example() {
	ctx := context.Background()
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: 6000, Partitions: 4})
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Start(); err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	client, err := m.NewClient(nil) // the SDK's retries off, as cosmosbulk.ClientOptions has them
	if err != nil {
		log.Fatal(err)
	}
	container, err := cosmosbulk.CreateContainer(ctx, client, "shop", "orders", "/customer")
	if err != nil {
		log.Fatal(err)
	}

	// The capacity: 90% of what is provisioned, never more than 20,000 RU/s.
	lim := cosmosbulk.NewContainerThroughputLimiter(client, "shop", "orders").
		WithCeiling(20000).
		WithTargetFraction(0.9)
	b := batcher.NewBatcher().WithRateLimiter(lim)
	if err := b.Start(ctx); err != nil {
		log.Fatal(err) // e.g. the throughput could not be read, and no fallback was set
	}
	tp, _, _ := lim.Throughput()
	fmt.Printf("read %v: capacity %d RU/s\n", tp, lim.Capacity())

	var items []cosmosbulk.Item
	for i := range 300 {
		id, customer := fmt.Sprintf("order-%d", i), fmt.Sprintf("customer-%d", i%30)
		body := fmt.Sprintf(`{"id":%q,"customer":%q,"total":%d}`, id, customer, i)
		items = append(items, cosmosbulk.Item{ID: id, PartitionKey: customer, Body: []byte(body)})
	}
	loader := cosmosbulk.NewLoader(container, b)
	if err := loader.LoadAll(ctx, slices.Values(items)); err != nil {
		log.Println(err) // each item that failed, and why
	}
	shutdown, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := b.Shutdown(shutdown); err != nil {
		log.Println(err)
	}
	st := loader.Stats()
	fmt.Printf("%d written, %d failed\n", st.Written, st.Failed)
	// Output:
	// read manual 6000 RU/s on the container: capacity 5400 RU/s
	// 300 written, 0 failed
}

// Classify an error from the SDK and read a throttle's retry-after.
func ExampleClassify() {
	throttled := &azcore.ResponseError{StatusCode: 429, RawResponse: &http.Response{
		StatusCode: 429, Header: http.Header{"X-Ms-Retry-After-Ms": {"250"}}}}
	err := fmt.Errorf("upsert: %w", throttled)
	after, ok := cosmosbulk.RetryAfter(err)
	fmt.Println(cosmosbulk.Classify(err), after, ok)

	conflict := &azcore.ResponseError{StatusCode: 409, RawResponse: &http.Response{StatusCode: 409, Header: http.Header{}}}
	fmt.Println(cosmosbulk.Classify(conflict))
	fmt.Println(cosmosbulk.Classify(errors.New("read tcp: connection reset by peer")))
	// Output:
	// throttle 250ms true
	// permanent
	// transient
}

// Load items one by one and wait on each write. The first item of each
// customer goes at once; the customer's next ones wait until that first
// write has named the customer's partition key range, and then go to that
// range's throttle lane (one of the model's two physical partitions).
func ExampleLoader_Load() {
	ctx := context.Background()
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: 4000, Partitions: 2})
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Start(); err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	client, err := m.NewClient(nil)
	if err != nil {
		log.Fatal(err)
	}
	container, err := cosmosbulk.CreateContainer(ctx, client, "shop", "orders", "/customer")
	if err != nil {
		log.Fatal(err)
	}
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(4000))
	if err := b.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	loader := cosmosbulk.NewLoader(container, b)
	var writes []*cosmosbulk.Write
	for i := range 6 {
		id, customer := fmt.Sprintf("order-%d", i), fmt.Sprintf("customer-%d", i%2)
		body := fmt.Sprintf(`{"id":%q,"customer":%q}`, id, customer)
		w, err := loader.Load(ctx, cosmosbulk.Item{ID: id, PartitionKey: customer, Body: []byte(body)})
		if err != nil {
			log.Fatal(err)
		}
		writes = append(writes, w)
	}
	for _, w := range writes {
		if err := w.Wait(ctx); err != nil {
			log.Println(err)
			continue
		}
		lane := "the default lane"
		if id := w.RangeID(); id != "" {
			lane = "the lane of range " + id
		}
		fmt.Printf("%s written, in %s\n", w.Item().ID, lane)
	}
	// Output:
	// order-0 written, in the default lane
	// order-1 written, in the default lane
	// order-2 written, in the lane of range 0
	// order-3 written, in the lane of range 1
	// order-4 written, in the lane of range 0
	// order-5 written, in the lane of range 1
}
