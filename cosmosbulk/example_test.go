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
