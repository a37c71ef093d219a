// Package cosmos is a sample: it loads documents into an Azure Cosmos DB
// container with package cosmosbulk, as fast as the container's throughput
// allows and no faster. Read [Load] top to bottom; the work is done by
// cosmosbulk, a supported package.
//
// The rest of the package (Item, Loader, NewLoader, ClientOptions, ...)
// names cosmosbulk's, for code written against this sample before
// cosmosbulk existed; new code should import cosmosbulk.
package cosmos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Load writes items to the container through a Batcher whose capacity is
// the container's provisioned throughput (read from the service, and
// again every 15 seconds; at most ceiling RU/s), lowered for a while after
// throttles, when others use the container too. client must leave 429s to
// the caller: build it with ClientOptions. It returns what the loader did,
// and nil or the errors of the items that failed, one by one.
func Load(ctx context.Context, client *azcosmos.Client, database, container string, items []Item, ceiling int) (Stats, error) {
	// The capacity: what is provisioned, at most the ceiling.
	provisioned := cosmosbulk.NewContainerThroughputLimiter(client, database, container).
		WithCeiling(ceiling)
	// Less after throttles: other services may use the same throughput.
	// The Batcher tells it of each throttle itself (it is a batcher.Learner).
	lim := ratelimiter.NewAdaptive(provisioned)

	b := batcher.NewBatcher().WithRateLimiter(lim)
	if err := b.Start(ctx); err != nil {
		return Stats{}, fmt.Errorf("starting the batcher: %w", err) // e.g. the throughput could not be read
	}

	cc, err := client.NewContainer(database, container)
	if err != nil {
		b.Close()
		return Stats{}, err
	}
	loader := cosmosbulk.NewLoader(cc, b)
	loadErr := loader.LoadAll(ctx, slices.Values(items))

	// Shutdown drains what is left; give it a while, then give up.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return loader.Stats(), errors.Join(loadErr, b.Shutdown(sctx))
}

// The names below are cosmosbulk's; see there.
type (
	// Item is [cosmosbulk.Item].
	Item = cosmosbulk.Item
	// Loader is [cosmosbulk.Loader].
	Loader = cosmosbulk.Loader
	// Stats is [cosmosbulk.Stats].
	Stats = cosmosbulk.Stats
	// BatchOperationError is [cosmosbulk.BatchOperationError].
	BatchOperationError = cosmosbulk.BatchOperationError
)

// The limits and defaults of cosmosbulk.
const (
	MaxTransactionalBatchOps   = cosmosbulk.MaxTransactionalBatchOps
	MaxTransactionalBatchBytes = cosmosbulk.MaxTransactionalBatchBytes
	DefaultMaxBatchSize        = cosmosbulk.DefaultMaxBatchSize
	DefaultConcurrency         = cosmosbulk.DefaultConcurrency
	DefaultMaxAttempts         = cosmosbulk.DefaultMaxAttempts
)

// DefaultMargin is [cosmosbulk.DefaultMargin] (2%), which cmd/bulkload's
// -margin flag defaults to.
const DefaultMargin = cosmosbulk.DefaultMargin

// NewLoader is [cosmosbulk.NewLoader].
func NewLoader(container *azcosmos.ContainerClient, b *batcher.Batcher) *Loader {
	return cosmosbulk.NewLoader(container, b)
}

// EstimateRU is [cosmosbulk.EstimateRU].
func EstimateRU(size int) int { return cosmosbulk.EstimateRU(size) }

// CreateContainer is [cosmosbulk.CreateContainer].
func CreateContainer(ctx context.Context, client *azcosmos.Client, database, container, partitionKeyPath string) (*azcosmos.ContainerClient, error) {
	return cosmosbulk.CreateContainer(ctx, client, database, container, partitionKeyPath)
}

// ClientOptions returns azcosmos client options with the SDK's own retries
// turned off, so that 429s reach the Loader: [cosmosbulk.ClientOptions].
// insecureTLS skips the verification of the server's certificate for a
// server on a loopback address only (a local emulator's self-signed
// certificate); any other server's certificate is verified, whatever
// insecureTLS says.
func ClientOptions(insecureTLS bool) *azcosmos.ClientOptions {
	return cosmosbulk.ClientOptions(insecureTLS)
}
