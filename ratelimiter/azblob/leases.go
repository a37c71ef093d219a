package azblob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Provision makes sure the container and the blobs of partitions 0 to n-1
// exist. It lists the partition blobs first (one call per 5,000), creates
// the container if that says it is missing, and then creates only the
// missing blobs, up to [Options.ProvisionConcurrency] at a time, as empty
// block blobs written with If-None-Match: * so that a blob created
// meanwhile by another instance, leased or not, is left as it is.
//
// Provision never deletes: partition blobs beyond n (left from a larger
// capacity) stay, unused. If ctx ends, or a creation fails, it stops
// creating, waits for the calls under way, and returns the error; calling it
// again finishes the work.
func (m *Manager) Provision(ctx context.Context, n int) error {
	return redact.Error(m.provision(ctx, n))
}

func (m *Manager) provision(ctx context.Context, n int) error {
	if n < 0 {
		return fmt.Errorf("azblob: Provision(%d): negative partition count", n)
	}
	have, err := m.listPartitions(ctx)
	if notFound(err) {
		if err := m.createContainer(ctx); err != nil {
			return err
		}
		have, err = nil, nil
	}
	if err != nil {
		return err
	}
	var missing []int
	for p := range n {
		if !have[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return m.createPartitions(ctx, missing)
}

// listPartitions returns the partitions whose blobs exist.
func (m *Manager) listPartitions(ctx context.Context) (map[int]bool, error) {
	prefix := m.partitionPrefix()
	pager := m.client.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &prefix})
	have := make(map[int]bool)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azblob: Provision: list blobs %q* in container %s: %w", prefix, m.url(), err)
		}
		if page.Segment == nil {
			continue
		}
		for _, it := range page.Segment.BlobItems {
			if it.Name == nil {
				continue
			}
			if p, ok := m.partitionNumber(*it.Name); ok {
				have[p] = true
			}
		}
	}
	return have, nil
}

func (m *Manager) createContainer(ctx context.Context) error {
	_, err := m.client.Create(ctx, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return fmt.Errorf("azblob: Provision: create container %s: %w", m.url(), err)
	}
	return nil
}

// createPartitions creates the blobs of partitions ps, at most
// m.concurrency at a time. It stops at the first failure and returns it
// once every call it started has returned.
func (m *Manager) createPartitions(ctx context.Context, ps []int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, m.concurrency)
loop:
	for _, p := range ps {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := m.createPartition(ctx, p); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	// The loop may have stopped on the caller's ctx without any call
	// failing.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("azblob: Provision: creating %d partition blobs: %w", len(ps), err)
	}
	return nil
}

// createPartition creates partition p's blob, empty, unless it exists.
func (m *Manager) createPartition(ctx context.Context, p int) error {
	name, err := m.partitionBlob(p)
	if err != nil {
		return err
	}
	etagAny := azcore.ETagAny
	_, err = m.client.NewBlockBlobClient(name).Upload(ctx, streaming.NopCloser(bytes.NewReader(nil)), &blockblob.UploadOptions{
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: &etagAny}},
	})
	switch {
	case err == nil:
		return nil
	case bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet, bloberror.LeaseIDMissing),
		statusCode(err) == http.StatusConflict, statusCode(err) == http.StatusPreconditionFailed:
		// It exists (perhaps leased): leave it alone.
		return nil
	default:
		return fmt.Errorf("azblob: Provision: create blob %q for partition %d: %w", name, p, err)
	}
}

// Acquire leases partition p's blob to owner for d, rounded up to whole
// seconds (15 to 60 s). It makes one Lease Blob (acquire) call with
// owner's [LeaseID], which Azure accepts when the blob has no lease, when
// its lease expired or was released, and when owner holds it already (the
// new duration then replaces the old). It returns an error wrapping
// [ratelimiter.ErrLeaseHeld] when Azure answers 409 LeaseAlreadyPresent
// (another ID holds it) or LeaseIsBreakingAndCannotBeAcquired, and an error
// saying to call Provision when the blob or the container is missing.
func (m *Manager) Acquire(ctx context.Context, p int, owner string, d time.Duration) error {
	return redact.Error(m.acquire(ctx, p, owner, d))
}

func (m *Manager) acquire(ctx context.Context, p int, owner string, d time.Duration) error {
	name, id, secs, err := m.leaseArgs("Acquire", p, owner, d)
	if err != nil {
		return err
	}
	lc, err := m.leaseClient(name, id)
	if err != nil {
		return err
	}
	_, err = lc.AcquireLease(ctx, secs, nil)
	switch {
	case err == nil:
		m.setDuration(p, id, secs)
		return nil
	case bloberror.HasCode(err, bloberror.LeaseAlreadyPresent, bloberror.LeaseIsBreakingAndCannotBeAcquired):
		return fmt.Errorf("azblob: Acquire partition %d (blob %q): %w: %w", p, name, ratelimiter.ErrLeaseHeld, err)
	case notFound(err):
		return fmt.Errorf("azblob: Acquire partition %d: blob %q or its container %s does not exist; call Provision first: %w", p, name, m.url(), err)
	default:
		return fmt.Errorf("azblob: Acquire partition %d (blob %q): %w", p, name, err)
	}
}

// Renew extends owner's lease on partition p to d (rounded up to whole
// seconds, 15 to 60 s) from now.
//
// Azure renews a lease for the duration it was acquired with, whatever the
// caller wants now. So Renew makes one Lease Blob (renew) call when d is
// the duration this Manager last gave the lease, and otherwise a renew
// followed by an acquire with the same lease ID and the new duration, which
// Azure accepts from the holder (the renew first makes sure owner still
// holds the lease, so that the acquire cannot take a lease owner lost or
// released).
//
// Like Azure, Renew succeeds on a lease that expired if nobody has leased
// the blob since: owner never lost it. It returns an error wrapping
// [ratelimiter.ErrLeaseLost] when another owner holds the lease (409
// LeaseIdMismatchWithLeaseOperation), when the blob has no lease (409
// LeaseNotPresentWithLeaseOperation, after a Release), when Azure says
// LeaseLost or LeaseIsBrokenAndCannotBeRenewed, on a 412 lease condition,
// and when the blob or the container is gone.
func (m *Manager) Renew(ctx context.Context, p int, owner string, d time.Duration) error {
	return redact.Error(m.renew(ctx, p, owner, d))
}

func (m *Manager) renew(ctx context.Context, p int, owner string, d time.Duration) error {
	name, id, secs, err := m.leaseArgs("Renew", p, owner, d)
	if err != nil {
		return err
	}
	lc, err := m.leaseClient(name, id)
	if err != nil {
		return err
	}
	if _, err := lc.RenewLease(ctx, nil); err != nil {
		return m.renewError(p, id, name, err)
	}
	if cur, ok := m.duration(p, id); ok && cur == secs {
		return nil
	}
	if _, err := lc.AcquireLease(ctx, secs, nil); err != nil {
		// The renew succeeded: owner still holds the lease for its
		// old duration, unless Azure says otherwise.
		return m.renewError(p, id, name, fmt.Errorf("changing the lease duration to %ds: %w", secs, err))
	}
	m.setDuration(p, id, secs)
	return nil
}

// renewError maps a failed renewal; when it means the lease is lost, the
// duration recorded for it is forgotten.
func (m *Manager) renewError(p int, id, name string, err error) error {
	lost := func(err error) error {
		m.forgetDuration(p, id)
		return err
	}
	switch {
	case bloberror.HasCode(err,
		bloberror.LeaseIDMismatchWithLeaseOperation,
		bloberror.LeaseNotPresentWithLeaseOperation,
		bloberror.LeaseLost,
		bloberror.LeaseIsBrokenAndCannotBeRenewed,
		bloberror.LeaseAlreadyPresent, // the duration change found another holder
		bloberror.LeaseIsBreakingAndCannotBeAcquired,
		bloberror.LeaseIDMismatchWithBlobOperation,
		bloberror.LeaseNotPresentWithBlobOperation,
		bloberror.ConditionNotMet),
		statusCode(err) == http.StatusPreconditionFailed:
		return lost(fmt.Errorf("azblob: Renew partition %d (blob %q): %w: %w", p, name, ratelimiter.ErrLeaseLost, err))
	case notFound(err):
		return lost(fmt.Errorf("azblob: Renew partition %d: blob %q or its container %s is gone (call Provision): %w: %w", p, name, m.url(), ratelimiter.ErrLeaseLost, err))
	default:
		return fmt.Errorf("azblob: Renew partition %d (blob %q): %w", p, name, err)
	}
}

// Release gives up owner's lease on partition p with one Lease Blob
// (release) call, so that another owner can acquire it at once. When owner
// does not hold the lease (409 LeaseIdMismatchWithLeaseOperation or
// LeaseNotPresentWithLeaseOperation), or the blob is gone, it returns nil:
// the lease is not owner's either way.
func (m *Manager) Release(ctx context.Context, p int, owner string) error {
	return redact.Error(m.release(ctx, p, owner))
}

func (m *Manager) release(ctx context.Context, p int, owner string) error {
	name, err := m.partitionBlob(p)
	if err != nil {
		return fmt.Errorf("azblob: Release: %w", err)
	}
	if owner == "" {
		return fmt.Errorf("azblob: Release partition %d: empty owner", p)
	}
	id := LeaseID(owner)
	m.forgetDuration(p, id)
	lc, err := m.leaseClient(name, id)
	if err != nil {
		return err
	}
	_, err = lc.ReleaseLease(ctx, nil)
	switch {
	case err == nil,
		bloberror.HasCode(err,
			bloberror.LeaseIDMismatchWithLeaseOperation,
			bloberror.LeaseNotPresentWithLeaseOperation,
			bloberror.LeaseLost),
		notFound(err):
		return nil
	default:
		return fmt.Errorf("azblob: Release partition %d (blob %q): %w", p, name, err)
	}
}

// leaseArgs checks the arguments of Acquire and Renew and derives the blob
// name, the lease ID and the duration in seconds.
func (m *Manager) leaseArgs(method string, p int, owner string, d time.Duration) (name, id string, secs int32, err error) {
	name, perr := m.partitionBlob(p)
	if perr != nil {
		return "", "", 0, fmt.Errorf("azblob: %s: %w", method, perr)
	}
	var errs []error
	if owner == "" {
		errs = append(errs, fmt.Errorf("azblob: %s partition %d: empty owner", method, p))
	}
	secs, derr := leaseSeconds(d)
	if derr != nil {
		errs = append(errs, fmt.Errorf("azblob: %s partition %d: %w", method, p, derr))
	}
	if err := errors.Join(errs...); err != nil {
		return "", "", 0, err
	}
	return name, LeaseID(owner), secs, nil
}
