// Package cosmosbulk writes documents to Azure Cosmos DB in bulk through a
// [batcher.Batcher], on the azcosmos SDK (v1.5.0): as fast as the
// container's throughput allows, and no faster. The Go SDK has no bulk
// executor of its own; this package is one.
//
//   - A [Loader] turns each [Item] into a [batcher.Operation] whose cost is
//     its estimated request charge ([EstimateRU]) plus a margin, groups the
//     items of one partition key into transactional batches (up to 100
//     operations and 2 MiB, the service's limits), and reports what each
//     write really cost (x-ms-request-charge) with SetActualCost.
//   - Throttles pause a lane, not the whole load (see Lanes below).
//   - [Classify] says whether an error is a throttle, transient or
//     permanent; [RetryAfter] reads a 429's x-ms-retry-after-ms. The Loader
//     uses them, and they are exported for code of your own.
//   - A [ThroughputLimiter] discovers the capacity: it reads the container's
//     (or its database's) provisioned throughput, manual or autoscale, and
//     grants a target fraction of it, never more than a ceiling you set,
//     reading it again on an interval.
//
// # Setting up
//
//	client, _ := azcosmos.NewClientWithKey(endpoint, cred, cosmosbulk.ClientOptions(false)) // SDK retries off
//	container, _ := client.NewContainer("shop", "orders")
//	lim := cosmosbulk.NewContainerThroughputLimiter(client, "shop", "orders").
//		WithCeiling(20000).       // never more than this, whatever is provisioned
//		WithTargetFraction(0.9)   // leave a tenth to the container's other users
//	b := batcher.NewBatcher().WithRateLimiter(lim)
//	if err := b.Start(ctx); err != nil { ... } // reads the throughput once
//	loader := cosmosbulk.NewLoader(container, b)
//	err := loader.LoadAll(ctx, slices.Values(items)) // nil, or each failed item and why
//	b.Shutdown(ctx)
//
// Turn the SDK's own 429 retries off (ClientOptions does): otherwise the
// SDK retries throttled requests itself, and neither the lane nor the
// limiter hears of them.
//
// # Lanes
//
// The Batcher pauses the operations of one throttle lane when one of them
// is throttled, not the whole Batcher. Cosmos DB's request-unit budget is
// per physical partition, a partition key range: one hot partition key is
// throttled while the other ranges have room. So the Loader gives each
// partition key range its own lane ([batcher.Lane]), as the .NET and Java
// bulk executors throttle per range: a 429 pauses only the writes to the
// range that answered it, for the retry-after the service asked for, and
// the writes to the other ranges go on.
//
// The Loader learns the ranges from the answers: every document response,
// 429s included, names the range that served it in
// x-ms-documentdb-partitionkeyrangeid ([PartitionKeyRangeID]). The first
// item of a key no answer has named yet goes at once, in the default lane
// (which all such first writes share: they may be on one partition, so a
// 429 of one of them pauses them all); the key's further items are held,
// outside the Batcher's buffer, until an answer to that first write names
// the key's range, and then go to the range's lane. So items loaded up
// front, before any answer, are in their ranges' lanes all the same, at
// the price of one round trip for each key's second item. (Computing each
// key's range instead would take the service's hash of partition keys,
// which the Go SDK keeps internal, and its partition key ranges.) The
// holding stops when an answer names no range (a service that does not
// tell), and holds at most 65,536 items (further ones go to the default
// lane); if the first write ends without an answer, the held items go to
// the default lane. [Loader.WithRangeLanes](false) keeps every item in
// the default lane. A split shows up as a new range id for a key, which
// then moves to the new range's lane. The Loader remembers the ranges of up
// to 65,536 keys (forgetting an arbitrary one for each new one beyond) and
// gives lanes to up to 1,024 ranges (the keys of further ones stay in the
// default lane). A container with one physical partition has one range:
// all its writes share one lane, so an overshoot of its budget costs one
// 429 and one pause, not one for each watcher.
//
// Within a lane, items are spread over several watchers by a hash of their
// partition key ([Loader.WithLanes], 16 by default), so that each flush
// releases several batches at once; all items of one key are in one
// watcher, so they still meet in transactional batches. The watchers of a
// range share its lane: a throttle of any of them pauses them all.
//
// # Errors
//
// Each failed write is classified by [Classify]:
//
//	| answer                                   | class       | what the Loader does                                  |
//	|------------------------------------------|-------------|-------------------------------------------------------|
//	| 429 Too Many Requests                    | [Throttle]  | pauses the lane for x-ms-retry-after-ms ([RetryAfter]) |
//	|                                          |             | and retries; attempts are not counted                  |
//	| 408, 410, 449, 500, 502, 503, 504, any   | [Transient] | retries after the watcher's back-off, up to            |
//	| other 5xx; 403 sub-status 3 (write       |             | MaxAttempts ([Loader.WithMaxAttempts], 5), then fails  |
//	| forbidden in a failover); 404 sub-status |             | it with the Batcher's ErrTooManyAttempts               |
//	| 1002 (read session not available); no    |             |                                                       |
//	| answer (reset, timeout, cancelled)       |             |                                                       |
//	| 400, 401, 403, 404, 409, 412, 413, any   | [Permanent] | fails the item at once with an [*ItemError] naming its |
//	| other 4xx                                |             | id, partition key, status and the likely cause         |
//
// A retry-after that is missing, malformed, zero or negative is no guide:
// the lane backs off on its own, exponentially, as for a throttle without
// one. One beyond [MaxRetryAfter] (a minute) is taken as a minute.
//
// When one item of a transactional batch fails (the others come back 424
// Failed Dependency), the others are upserted one by one at once, so that a
// bad item does not use up its neighbours' attempts.
//
// # Costs and the margin
//
// Costs are in request units. Each item declares its estimated charge
// ([EstimateCharge]) plus the margin, in whole units whose fractions carry
// over from item to item; once a write is answered, its actual charge plus
// the margin replaces that ([batcher.Operation.SetActualCost]). The margin
// ([Loader.WithMargin], 2% by default) is there because the Batcher keeps
// within its capacity by the moments it releases batches, and the service
// counts by the moments requests arrive: a request held up on the way
// lands in the service's next second. With a margin m the Batcher uses
// about 1/(1+m) of its capacity, and m of a second's worth of requests may
// land in the wrong second without a 429. It was 5% until the Loader's
// lanes followed partition key ranges: with one lane per range, a request
// that lands late costs one 429 and one pause of the range's writes, not
// one for each of the range's watchers, and on the embedded model a
// limiter at the provisioned throughput then used 0.964-0.970 of it with
// a 2% margin and no 429 (0.935-0.941 with 5%; 0.978-0.985 with none, and
// a 429 in one run of three).
//
// # Capacity discovery
//
// [ReadThroughput] reads the container's throughput with the SDK's
// ReadThroughput (a query on the account's offers), and, if the container
// has none of its own, its database's (shared throughput). Autoscale is
// read as its maximum, which it scales to at once under load. A
// [ThroughputLimiter] grants ⌊fraction × RU⌋ of it, at most the ceiling.
// What it does when the read is refused (403: [ErrThroughputForbidden]) or
// there is nothing to read (a serverless account, which answers 400, or no
// offer at all: [ErrNoThroughput]) is documented on the type: with a
// fallback capacity it starts on that and keeps trying; without one its
// Start, and the Batcher's, fails with the error.
//
// # What it does not do
//
// Items are upserted: loading an item twice leaves one document. A
// transactional batch here is a way to save requests, not a promise that
// its items are written together. Partition keys are single strings.
// Documents are not validated: the service's 400 fails them. The
// ThroughputLimiter reads what is provisioned, not what other workloads
// leave of it: combine it with a limiter that learns from throttles.
package cosmosbulk
