package cosmos_test

import (
	"context"
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/samples/cosmos"
)

// Load a thousand orders into a container provisioned for 4,000 RU/s that
// another service writes to as well. (It needs a Cosmos DB account, so it
// is compiled but not run.)
func Example() {
	ctx := context.Background()
	cred, err := azcosmos.NewKeyCredential("C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==")
	if err != nil {
		log.Fatal(err)
	}
	// The SDK's own retries off: the Batcher retries, and hears of 429s.
	client, err := azcosmos.NewClientWithKey("https://127.0.0.1:8081/", cred, cosmos.ClientOptions(true))
	if err != nil {
		log.Fatal(err)
	}
	container, err := cosmos.CreateContainer(ctx, client, "shop", "orders", "/customer")
	if err != nil {
		log.Fatal(err)
	}

	// Grant what is provisioned, less after throttles.
	lim := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(4000))
	b := batcher.NewBatcher().WithRateLimiter(lim)
	b.AddListener(lim.Observe)
	if err := b.Start(ctx); err != nil {
		log.Fatal(err)
	}

	var items []cosmos.Item
	for i := range 1000 {
		id, customer := fmt.Sprintf("order-%d", i), fmt.Sprintf("customer-%d", i%40)
		body := fmt.Sprintf(`{"id":%q,"customer":%q,"total":%d}`, id, customer, i)
		items = append(items, cosmos.Item{ID: id, PartitionKey: customer, Body: []byte(body)})
	}
	loader := cosmos.NewLoader(container, b)
	if err := loader.LoadAll(ctx, slices.Values(items)); err != nil {
		log.Println(err) // each item that failed, and why
	}
	shutdown, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.Shutdown(shutdown); err != nil {
		log.Println(err)
	}
	st := loader.Stats()
	fmt.Printf("%d written in %d requests, %.0f RU, %d throttled\n", st.Written, st.Requests, st.RU, st.Throttled)
}
