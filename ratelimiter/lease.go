package ratelimiter

import (
	"context"
	"errors"
	"time"
)

// A LeaseManager keeps the leases on the partitions of a shared capacity in a
// store that every instance reaches: Azure Blob Storage, Redis or etcd (the
// subpackages azblob, redis and etcd). A [SharedResource] calls it; users
// only construct one and hand it over.
//
// A lease is held by an owner, a string that names one SharedResource (a
// random UUID, unique per process start), for a duration after which the
// store lets another owner take it unless the holder renewed it. Partitions
// are numbered 0 to n-1.
//
// Every method must be safe for concurrent use, must honour ctx, and must
// return an error wrapping [ErrLeaseHeld] or [ErrLeaseLost] where those
// apply, so that the SharedResource can tell "someone else has it" from a
// store that does not answer.
type LeaseManager interface {
	// Provision prepares the store for n partitions (creating containers,
	// blobs or keys as needed). It is idempotent: instances call it as they
	// start, and again when the shared capacity changes.
	Provision(ctx context.Context, n int) error

	// Acquire leases partition p to owner for d. It returns nil when owner
	// holds the lease now (including when it held it already), and an error
	// wrapping ErrLeaseHeld when another owner does.
	Acquire(ctx context.Context, p int, owner string, d time.Duration) error

	// Renew extends owner's lease on p to d from now. It returns an error
	// wrapping ErrLeaseLost when owner does not hold it (it expired and
	// another owner took it, or the store lost it).
	Renew(ctx context.Context, p int, owner string, d time.Duration) error

	// Release gives up owner's lease on p at once. Releasing a lease owner
	// does not hold is not an error: it is gone either way.
	Release(ctx context.Context, p int, owner string) error

	// Announce records d's demand for d.TTL, replacing the owner's previous
	// one, and returns every demand recorded whose TTL has not run out,
	// d's own included. Instances announce on every round; a demand that
	// is not renewed disappears, so a dead instance stops counting.
	Announce(ctx context.Context, d Demand) ([]Demand, error)
}

// A Demand is what one instance tells the others through the store: how
// many partitions it wants and which it holds. From the demands a
// SharedResource works out each instance's fair share.
type Demand struct {
	Owner string        // the announcing SharedResource's owner id
	Want  int           // partitions it would use, at most the partition count
	Held  []int         // the partitions it holds now, ascending
	TTL   time.Duration // how long the store keeps the demand (Announce's input only)
}

// ErrLeaseHeld is wrapped by a LeaseManager's Acquire when another owner
// holds the lease.
var ErrLeaseHeld = errors.New("ratelimiter: lease held by another owner")

// ErrLeaseLost is wrapped by a LeaseManager's Renew when the owner no longer
// holds the lease.
var ErrLeaseLost = errors.New("ratelimiter: lease lost")
