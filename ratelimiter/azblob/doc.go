// Package azblob is a [ratelimiter.LeaseManager] on Azure Blob Storage
// leases: instances that share a capacity hold its partitions by leasing
// one blob per partition, and tell each other what they want through small
// demand blobs beside them.
//
// Build a [Manager] with [NewWithSharedKey] (an account name and key, as
// Azurite's devstoreaccount1), [NewWithCredential] (a Microsoft Entra ID
// token credential, such as azidentity.NewDefaultAzureCredential's) or
// [New] (any ready *container.Client), and hand it to the shared limiter.
// Any endpoint URL works: public Azure, sovereign clouds, private endpoints,
// Azurite.
//
// # Layout
//
// One container holds, for a prefix P ([Options.Prefix]):
//
//   - P + "partition-0000", "partition-0001", ...: one empty block blob per
//     partition, created by [Manager.Provision], never written again. Its
//     lease is the partition's lease.
//   - P + "demand/" + a GUID: one empty blob per owner, its demand in the
//     metadata keys owner (query-escaped), want, held ("0-3,7") and ttl
//     ("30s"), rewritten by every [Manager.Announce].
//
// Several shared resources can use one container with different prefixes.
//
// # Lease IDs
//
// Azure wants a GUID as lease ID. [LeaseID] derives one from the owner
// string (SHA-256, formatted as an RFC 9562 version-8 UUID), so an owner
// always presents the same ID: acquiring a lease one holds already
// succeeds, and a call the SDK retries after a lost response does no harm.
//
// # Durations
//
// Azure takes fixed leases of 15 to 60 seconds (and infinite ones, which
// this package never asks for: a dead instance would keep its partitions).
// Acquire and Renew round a duration up to whole seconds and return an
// error naming it when it falls outside [MinLeaseDuration] to
// [MaxLeaseDuration]; Azure would answer 400 InvalidHeaderValue.
//
// Azure renews a lease for the duration it was acquired with. When Renew
// is asked for another duration, it renews and then acquires again with
// the same ID and the new duration, which Azure allows the holder.
//
// An expired lease that nobody took is still its holder's: Azure lets the
// holder renew it, and so does Renew. Only another owner's acquire ends it
// (after which the holder's renew fails with LeaseIdMismatchWithLeaseOperation,
// even once that owner released it), so a renew that succeeds proves that
// nobody else leased the blob in between. Release ends a lease at once.
//
// Rounding up makes Azure's expiry no earlier than one measured, on the
// caller's clock, from the moment the call was sent.
//
// # What Azure's answers mean here
//
//   - 409 LeaseAlreadyPresent on acquire: another owner holds the lease
//     (an error wrapping [ratelimiter.ErrLeaseHeld]); so does 409
//     LeaseIsBreakingAndCannotBeAcquired.
//   - 409 LeaseIdMismatchWithLeaseOperation on renew: another owner holds
//     it now; 409 LeaseNotPresentWithLeaseOperation: nobody does (it was
//     released or broken); LeaseLost, LeaseIsBrokenAndCannotBeRenewed and
//     412 lease conditions likewise: all wrap [ratelimiter.ErrLeaseLost].
//     On release the same codes mean the lease is not the owner's, which
//     is no error.
//   - 404 BlobNotFound or ContainerNotFound: the store is not provisioned.
//     Acquire says to call Provision; Renew reports the lease lost.
//   - 409 BlobAlreadyExists or 412 ConditionNotMet when Provision creates
//     a blob with If-None-Match: *: another instance created it first,
//     which is fine; the blob, and any lease on it, is left alone.
//   - 400 InvalidHeaderValue: a lease duration outside 15-60 s; checked
//     before calling.
//   - Anything else (403 authentication, 5xx after the SDK's retries,
//     transport errors, ctx ending) is returned wrapped, naming the
//     partition and blob; errors.As finds the *azcore.ResponseError and
//     bloberror.HasCode works on it.
//
// # Calls per method
//
// Each Azure call is one HTTP request, plus the SDK's retries of transient
// failures (three by default; [Options.ClientOptions] sets them).
//
//   - Acquire: 1 (Lease Blob, acquire).
//   - Renew: 1 (Lease Blob, renew); 2 when the duration changes (renew,
//     then acquire), including the first renew by a Manager that did not
//     acquire the lease itself.
//   - Release: 1 (Lease Blob, release).
//   - Provision: 1 List Blobs per 5,000 partitions when all exist; when
//     not, 1 Create Container if it is missing, and 1 Put Blob per missing
//     partition, [Options.ProvisionConcurrency] (8) at a time.
//   - Announce: 1 Put Blob, 1 List Blobs per 5,000 owners, and at most 4
//     Delete Blob of expired demands.
//
// Against Azurite on the same machine each call takes a few milliseconds.
//
// # Clocks
//
// Leases expire on Azure's clock. Demands do too: Announce compares each
// demand blob's Last-Modified plus its TTL with the Date of the list
// response, never with this machine's clock, so skewed instances agree on
// which demands count. Both headers are whole seconds, so a demand counts
// for its TTL plus up to two seconds.
//
// # SAS tokens
//
// A container URL may carry a SAS token (.../leases?sv=...&sig=...): build the
// client with container.NewClientWithNoCredential and hand it to [New].
// The Manager's errors never show the token's secrets: the container URL
// in its own messages, and the request URLs in the SDK's transport errors,
// have the token's fields (sig, se, sp, ...) replaced by REDACTED. The
// errors still unwrap to the SDK's, for errors.Is and errors.As.
//
// # What it does not do
//
// It does not break leases, delete partition blobs when the partition count
// shrinks, or renew leases by itself: the shared limiter calls Renew. The
// text of its errors is not part of the API; match with errors.Is and
// errors.As.
package azblob
