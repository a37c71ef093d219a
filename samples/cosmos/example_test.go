package cosmos_test

import (
	"context"
	"fmt"
	"log"

	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/samples/cosmos"
)

// Load 400 orders into a container provisioned for 4,000 RU/s over four
// physical partitions. The container here is the project's throttling
// model of Cosmos DB, in process; with a real account, build the client
// with azcosmos.NewClientWithKey(endpoint, cred, cosmos.ClientOptions(false)).
func ExampleLoad() {
	ctx := context.Background()
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: 4000, Partitions: 4})
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Start(); err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	client, err := m.NewClient(nil) // 429s left to the loader, as ClientOptions does
	if err != nil {
		log.Fatal(err)
	}
	if _, err := cosmos.CreateContainer(ctx, client, "shop", "orders", "/customer"); err != nil {
		log.Fatal(err)
	}

	var items []cosmos.Item
	for i := range 400 {
		id, customer := fmt.Sprintf("order-%d", i), fmt.Sprintf("customer-%d", i%40)
		body := fmt.Sprintf(`{"id":%q,"customer":%q,"total":%d}`, id, customer, i)
		items = append(items, cosmos.Item{ID: id, PartitionKey: customer, Body: []byte(body)})
	}
	st, err := cosmos.Load(ctx, client, "shop", "orders", items, 10000)
	if err != nil {
		log.Fatal(err) // each item that failed, and why
	}
	stored, _ := m.Items("shop", "orders")
	fmt.Printf("%d written, %d stored\n", st.Written, len(stored))
	// Output: 400 written, 400 stored
}
