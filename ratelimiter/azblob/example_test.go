package azblob_test

import (
	"context"
	"log"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/ratelimiter/azblob"
)

// Build a lease manager with the storage account's name and key: here
// Azurite's well-known development account, with the leases of one shared
// resource under the prefix "orders/" of the container "leases".
func ExampleNewWithSharedKey() {
	const (
		account = "devstoreaccount1"
		key     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	)
	leases, err := azblob.NewWithSharedKey("http://127.0.0.1:10000/devstoreaccount1/leases", account, key, &azblob.Options{
		Prefix: "orders/",
		// Give up on an unreachable store quickly: the shared limiter
		// falls back to its reserved capacity meanwhile.
		ClientOptions: &container.ClientOptions{ClientOptions: policy.ClientOptions{
			Retry: policy.RetryOptions{MaxRetries: 1, TryTimeout: 5 * time.Second},
		}},
	})
	if err != nil {
		log.Fatal(err)
	}

	// A SharedResource calls the methods itself; called by hand they
	// look like this.
	ctx := context.Background()
	if err := leases.Provision(ctx, 16); err != nil {
		log.Fatal(err)
	}
	if err := leases.Acquire(ctx, 3, "instance-1", 30*time.Second); err != nil {
		log.Fatal(err) // errors.Is(err, ratelimiter.ErrLeaseHeld) if another instance has it
	}
	demands, err := leases.Announce(ctx, ratelimiter.Demand{Owner: "instance-1", Want: 4, Held: []int{3}, TTL: 30 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%d instances want partitions", len(demands))
	if err := leases.Release(ctx, 3, "instance-1"); err != nil {
		log.Fatal(err)
	}
}

// Build a lease manager that authenticates with Microsoft Entra ID: the
// default credential tries the environment, a workload or managed identity,
// and the Azure CLI's login in turn. The identity needs the Storage Blob
// Data Contributor role on the container.
func ExampleNewWithCredential() {
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		log.Fatal(err)
	}
	leases, err := azblob.NewWithCredential("https://myaccount.blob.core.windows.net/leases", cred, &azblob.Options{Prefix: "orders/"})
	if err != nil {
		log.Fatal(err)
	}
	// Every instance shares 16,000 cost units a second (16 partitions of
	// 1,000) through the leases, on top of 500 of its own.
	shared := ratelimiter.NewSharedResource().
		WithReservedCapacity(500).
		WithSharedCapacity(16000, leases).
		WithLeaseDuration(30 * time.Second) // Azure takes 15 s to 60 s
	// The Batcher starts it, and stops it (releasing the leases) in
	// Shutdown.
	b := batcher.NewBatcher().WithRateLimiter(shared)
	_ = b
}
