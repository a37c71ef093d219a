// Package cosmos loads documents into an Azure Cosmos DB container through a
// [batcher.Batcher], on the azcosmos SDK: as fast as the container's
// throughput allows, and no faster.
//
// Each [Item] becomes a [batcher.Operation] whose cost is its estimated
// request charge ([EstimateRU]) plus a margin ([Loader.Cost]). The [Loader] is the watcher's processor: for
// each batch the Batcher releases, it writes the items of one partition key
// together in a transactional batch (when there are two or more and they fit
// its limits), and the rest with concurrent upserts. It reports what each
// write really cost (the x-ms-request-charge of its response), and a 429 as
// a throttle with the retry-after the service asked for, so the Batcher
// pauses and retries.
//
// # Setting up
//
// Turn the SDK's own retries off ([ClientOptions] does), or it retries 429s
// itself and the Batcher never hears of them. Give the Batcher a limiter of
// the container's provisioned throughput; if anything else writes to the
// container, wrap it in a [ratelimiter.Adaptive] and let it observe the
// Batcher's throttles:
//
//	client, _ := azcosmos.NewClientWithKey(endpoint, cred, cosmos.ClientOptions(false))
//	container, _ := client.NewContainer("shop", "orders")
//	lim := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(10000)) // RU/s
//	b := batcher.NewBatcher().WithRateLimiter(lim)
//	b.AddListener(lim.Observe)
//	if err := b.Start(ctx); err != nil { ... }
//	loader := cosmos.NewLoader(container, b)
//	err := loader.LoadAll(ctx, slices.Values(items))
//	b.Shutdown(ctx)
//
// # Costs and the margin
//
// Costs are in request units. Once a write is answered, the Loader reports
// its actual charge (plus the margin) to the Batcher, which accounts for it
// instead of the estimate; fractions of a unit are carried from write to
// write. The margin (10% by default, [Loader.WithMargin]) is there because
// the Batcher keeps within its capacity by the moments it releases batches,
// and the service counts by the moments requests reach it: a request held
// up on the way (a slow goroutine start, a stalled process) lands in the
// service's next second, next to the requests released then. With a margin
// m, the Batcher uses about 1/(1+m) of the provisioned throughput, and m of
// a second's worth of requests can land in the wrong second without a 429.
// The Batcher releases a flush interval's share of each second at each
// flush (a tenth, by default), so the default margin absorbs one flush's
// requests held up, however long; requests of two flushes held up into
// the same second draw a 429 (the Loader retries it).
//
// Items declare their estimate plus the margin in whole units, the
// fractions carried over from item to item, so that what the Batcher
// counts at release is what the answers report: capacity it counted too
// much until the answer would be idle meanwhile.
//
// # Errors
//
// A 429 is a throttle (the Batcher pauses for the retry-after, then retries;
// throttles do not use up attempts). Timeouts, 408, 410, 449 and 5xx answers
// and transport errors are retried after the watcher's back-off, up to
// MaxAttempts. Any other answer (400 bad request, 413 too large, 403, 409
// ...) fails the item for good.
//
// # What it does not do
//
// Items are upserted: loading an item twice leaves one document. A
// transactional batch here is only a way to save requests, not a promise
// that its items are written together: when one of its items fails, the
// others are upserted one by one at once. Partition keys are single
// strings. Documents are not validated: the service's 400 fails them.
package cosmos

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"iter"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
)

// Limits of a Cosmos DB transactional batch.
const (
	MaxTransactionalBatchOps   = 100
	MaxTransactionalBatchBytes = 2 << 20 // 2 MiB of request body
)

// Loader defaults.
const (
	DefaultMaxBatchSize = MaxTransactionalBatchOps
	DefaultConcurrency  = 16
	DefaultMaxAttempts  = 5
	DefaultMargin       = 0.1
)

// An Item is a document to write.
type Item struct {
	// ID is the document's id, as in Body; it names the item in errors.
	ID string
	// PartitionKey is the value of the container's partition key in Body.
	PartitionKey string
	// Body is the document as JSON, with its id and partition key.
	Body []byte
}

// EstimateRU returns the request units that writing a document of size
// bytes of JSON costs, rounded up: Azure Cosmos DB's published figures for a
// write with the default indexing policy, about 5.71 RU for 1 KB or less
// (the service reports 5.71 for a small upsert) and 0.44 RU for each further
// KB (7 RU for 4 KB, 49 RU for 100 KB). Documents with many indexed
// properties cost more; the Loader reports the actual charge of each write
// to the Batcher anyway, so the estimate only has to be close.
func EstimateRU(size int) int { return ceilRU(writeCharge(size)) }

func writeCharge(size int) float64 {
	kb := math.Max(1, float64(size)/1024)
	return 5.71 + 0.44*(kb-1)
}

// ceilRU rounds a charge up to whole request units, forgiving float noise.
func ceilRU(ru float64) int { return int(math.Ceil(ru - 1e-3)) }

// ClientOptions returns azcosmos client options for a Loader: the SDK's own
// retries turned off (MaxRetries -1), so that 429s reach the Batcher, which
// retries every write itself. insecureTLS skips the verification of the
// server's certificate; use it only for a local server with a self-signed
// one.
func ClientOptions(insecureTLS bool) *azcosmos.ClientOptions {
	o := &azcosmos.ClientOptions{}
	o.Retry = policy.RetryOptions{MaxRetries: -1}
	if insecureTLS {
		o.Transport = &http.Client{Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true}, // a local server's self-signed certificate
			MaxIdleConnsPerHost: 64,
		}}
	}
	return o
}

// CreateContainer creates the database and the container, with a
// partition key path such as "/pk", unless they exist, and returns a client
// for the container.
func CreateContainer(ctx context.Context, client *azcosmos.Client, database, container, partitionKeyPath string) (*azcosmos.ContainerClient, error) {
	if _, err := client.CreateDatabase(ctx, azcosmos.DatabaseProperties{ID: database}, nil); err != nil && !isStatus(err, http.StatusConflict) {
		return nil, fmt.Errorf("cosmos: creating database %q: %w", database, err)
	}
	db, err := client.NewDatabase(database)
	if err != nil {
		return nil, fmt.Errorf("cosmos: database %q: %w", database, err)
	}
	props := azcosmos.ContainerProperties{
		ID:                     container,
		PartitionKeyDefinition: azcosmos.PartitionKeyDefinition{Paths: []string{partitionKeyPath}},
	}
	if _, err := db.CreateContainer(ctx, props, nil); err != nil && !isStatus(err, http.StatusConflict) {
		return nil, fmt.Errorf("cosmos: creating container %q: %w", container, err)
	}
	return db.NewContainer(container)
}

func isStatus(err error, code int) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == code
}

// Stats counts what a Loader did.
type Stats struct {
	Written   int64   // items written
	Requests  int64   // document requests sent: upserts and transactional batches
	Batches   int64   // transactional batches among them
	Throttled int64   // requests answered 429
	Retried   int64   // requests that failed in a way worth retrying (not 429)
	Failed    int64   // items the service refused for good (those whose retries ran out are in the Batcher's Stats)
	RU        float64 // request units charged, as the responses said
}

// A Loader writes items to a container through a Batcher. Create it with
// [NewLoader], configure it with the With* methods, then call Load or
// LoadAll from any number of goroutines. It is the [batcher.Processor] of
// its own watcher.
//
// The With* methods must be called before the first Load; after it they
// panic. All other methods are safe for concurrent use.
type Loader struct {
	store store
	b     *batcher.Batcher

	maxBatchSize int
	concurrency  int
	maxAttempts  int
	margin       float64

	once    sync.Once
	w       *batcher.Watcher
	started atomic.Bool

	written, requests, batches, throttled, retried, failed atomic.Int64
	centiRU                                                atomic.Int64
	milliCost                                              atomic.Int64 // cost reported so far, in thousandths
	milliDeclared                                          atomic.Int64 // cost declared so far, in thousandths
}

// NewLoader returns a Loader that writes to container through b. b must be
// started before the first Load; its rate limiter should grant the
// container's throughput in RU per second.
func NewLoader(container *azcosmos.ContainerClient, b *batcher.Batcher) *Loader {
	return newLoader(containerStore{container}, b)
}

func newLoader(s store, b *batcher.Batcher) *Loader {
	return &Loader{
		store:        s,
		b:            b,
		maxBatchSize: DefaultMaxBatchSize,
		concurrency:  DefaultConcurrency,
		maxAttempts:  DefaultMaxAttempts,
		margin:       DefaultMargin,
	}
}

func (l *Loader) checkNotStarted(method string) {
	if l.started.Load() {
		panic("cosmos: Loader." + method + " called after the first Load")
	}
}

// WithMaxBatchSize sets the most items the Batcher hands over at once. The
// default, and the most, is 100, a transactional batch's limit; n must be at
// least 1.
func (l *Loader) WithMaxBatchSize(n int) *Loader {
	l.checkNotStarted("WithMaxBatchSize")
	l.maxBatchSize = n
	return l
}

// WithConcurrency sets how many requests one batch sends at once. The
// default is 16; n must be at least 1.
func (l *Loader) WithConcurrency(n int) *Loader {
	l.checkNotStarted("WithConcurrency")
	l.concurrency = n
	return l
}

// WithMaxAttempts sets how many times an item is tried before a transient
// error fails it for good; throttles do not count. The default is 5; n must
// be at least 1.
func (l *Loader) WithMaxAttempts(n int) *Loader {
	l.checkNotStarted("WithMaxAttempts")
	l.maxAttempts = n
	return l
}

// WithMargin sets how much more than its request charge each write counts
// for against the Batcher's capacity: 0.1 (the default) counts 10% more.
// The Batcher keeps within its capacity by the moments it releases batches;
// the service counts request units by the moments requests reach it, which
// come a little later, and not all equally late. A margin leaves room for
// requests that reach the service's next second rather than the one they
// were released in: with a margin m, the Batcher uses about 1/(1+m) of a
// rate limiter granting exactly the provisioned throughput, and m of a
// second's worth may land late without a 429 (see the package doc). margin
// must be 0 or more and less than 1.
func (l *Loader) WithMargin(margin float64) *Loader {
	l.checkNotStarted("WithMargin")
	l.margin = margin
	return l
}

// watcher returns the Loader's watcher, creating it with the settings at
// the first call; it returns an error naming every bad setting.
func (l *Loader) watcher() (*batcher.Watcher, error) {
	var errs []error
	if l.maxBatchSize < 1 || l.maxBatchSize > MaxTransactionalBatchOps {
		errs = append(errs, fmt.Errorf("%w: Loader MaxBatchSize is %d; it must be 1 to %d", batcher.ErrInvalidSetting, l.maxBatchSize, MaxTransactionalBatchOps))
	}
	if l.concurrency < 1 {
		errs = append(errs, fmt.Errorf("%w: Loader Concurrency is %d; it must be at least 1", batcher.ErrInvalidSetting, l.concurrency))
	}
	if l.maxAttempts < 1 {
		errs = append(errs, fmt.Errorf("%w: Loader MaxAttempts is %d; it must be at least 1", batcher.ErrInvalidSetting, l.maxAttempts))
	}
	if !(l.margin >= 0 && l.margin < 1) {
		errs = append(errs, fmt.Errorf("%w: Loader Margin is %v; it must be 0 or more and less than 1", batcher.ErrInvalidSetting, l.margin))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	l.once.Do(func() {
		l.started.Store(true)
		l.w = batcher.NewWatcherFor(l).WithMaxBatchSize(l.maxBatchSize).WithMaxAttempts(l.maxAttempts)
	})
	return l.w, nil
}

// Load enqueues item and returns its operation, whose Wait says how the
// write ended. It blocks while the Batcher's buffer is full, until ctx ends;
// ctx governs only that wait. It returns the Batcher's error if Enqueue
// refuses the item (not started, shut down, costlier than the limiter's
// maximum), or an error naming a bad setting of the Loader.
func (l *Loader) Load(ctx context.Context, item Item) (*batcher.Operation, error) {
	w, err := l.watcher()
	if err != nil {
		return nil, err
	}
	op := batcher.NewOperation(w, l.declare(item), item, true)
	if err := l.b.EnqueueContext(ctx, op); err != nil {
		return nil, fmt.Errorf("cosmos: item %q: %w", item.ID, err)
	}
	return op, nil
}

// LoadAll loads every item and waits until each has been written or has
// failed. It returns nil if all were written; otherwise the errors.Join of
// each failure, naming its item. If ctx ends, it stops enqueueing and
// waiting and returns ctx.Err() with the failures seen so far; items already
// enqueued are still written unless the Batcher is closed.
func (l *Loader) LoadAll(ctx context.Context, items iter.Seq[Item]) error {
	var (
		ops  []*batcher.Operation
		errs []error
	)
	for it := range items {
		op, err := l.Load(ctx, it)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		ops = append(ops, op)
	}
	for _, op := range ops {
		if err := op.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				errs = append(errs, ctx.Err())
				break
			}
			errs = append(errs, fmt.Errorf("cosmos: item %q: %w", op.Payload().(Item).ID, err))
		}
	}
	return errors.Join(errs...)
}

// Cost returns the most item counts for against the Batcher's capacity:
// the estimated charge of writing it ([EstimateRU]) plus the Loader's
// margin, rounded up. Load declares that or a unit less, the fractions
// carried over from item to item. A write's actual charge replaces it once
// the service has answered.
func (l *Loader) Cost(item Item) int {
	return ceilRU(writeCharge(len(item.Body)) * (1 + l.margin))
}

// declare returns the cost Load enqueues item with: its estimated charge
// plus the margin, in whole units whose fractions are carried over from
// item to item, as setCost carries those of the actual charges, so that
// declared and reported costs agree to within a unit or two a batch.
// Rounding each item up instead (7 for a write of 6.281 with the margin)
// counted a tenth too much until each answer came: through the Cosmos
// model the Batcher then made 784 requests for 2,000 items instead of 540,
// its shares broken up by the capacity coming back between them.
func (l *Loader) declare(item Item) int {
	return max(l.carry(&l.milliDeclared, writeCharge(len(item.Body))), 1)
}

// setCost reports charge, plus the margin, as op's actual cost. Costs are
// whole units: the fractions are carried over from write to write, so that
// what all writes report adds up to what they were charged.
func (l *Loader) setCost(op *batcher.Operation, charge float64) {
	op.SetActualCost(l.carry(&l.milliCost, charge))
}

// carry returns charge plus the margin in whole units, adding it, in
// thousandths, to total: the units total gains, so that the fractions
// carry over from one call to the next.
func (l *Loader) carry(total *atomic.Int64, charge float64) int {
	m := int64(math.Round(charge * (1 + l.margin) * 1000))
	after := total.Add(m)
	return int(after/1000 - (after-m)/1000)
}

// Stats returns the Loader's counts.
func (l *Loader) Stats() Stats {
	return Stats{
		Written:   l.written.Load(),
		Requests:  l.requests.Load(),
		Batches:   l.batches.Load(),
		Throttled: l.throttled.Load(),
		Retried:   l.retried.Load(),
		Failed:    l.failed.Load(),
		RU:        float64(l.centiRU.Load()) / 100,
	}
}

// ProcessBatch writes a batch released by the Batcher; it implements
// [batcher.Processor]. Items of one partition key are written in
// transactional batches when there are two or more of them, the others with
// upserts, all at once up to the Loader's Concurrency. Each item's outcome
// and actual charge are reported on its operation; ProcessBatch itself
// returns nil.
func (l *Loader) ProcessBatch(ctx context.Context, batch []*batcher.Operation) error {
	groups := make(map[string][]*batcher.Operation)
	var keys []string
	for _, op := range batch {
		pk := op.Payload().(Item).PartitionKey
		if _, ok := groups[pk]; !ok {
			keys = append(keys, pk)
		}
		groups[pk] = append(groups[pk], op)
	}
	sem := make(chan struct{}, l.concurrency)
	var wg sync.WaitGroup
	run := func(f func()) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f()
		})
	}
	for _, pk := range keys {
		ops := groups[pk]
		for len(ops) > 0 {
			n := fitBatch(ops)
			if n >= 2 {
				part := ops[:n]
				run(func() { l.writeBatch(ctx, pk, part) })
			} else {
				op := ops[0]
				run(func() { l.upsert(ctx, op) })
			}
			ops = ops[max(n, 1):]
		}
	}
	wg.Wait()
	return nil
}

// fitBatch returns how many of ops, from the first, fit one transactional
// batch.
func fitBatch(ops []*batcher.Operation) int {
	size := 0
	for i, op := range ops {
		// The body plus the operation's envelope in the batch's JSON.
		size += len(op.Payload().(Item).Body) + 64
		if i == MaxTransactionalBatchOps || size > MaxTransactionalBatchBytes {
			return i
		}
	}
	return len(ops)
}

func (l *Loader) upsert(ctx context.Context, op *batcher.Operation) {
	it := op.Payload().(Item)
	charge, err := l.store.upsert(ctx, it.PartitionKey, it.Body)
	l.countRequest(charge, err)
	l.setCost(op, charge)
	if err != nil {
		l.report(op, err)
		return
	}
	l.written.Add(1)
}

func (l *Loader) writeBatch(ctx context.Context, pk string, ops []*batcher.Operation) {
	bodies := make([][]byte, len(ops))
	for i, op := range ops {
		bodies[i] = op.Payload().(Item).Body
	}
	res, err := l.store.batch(ctx, pk, bodies)
	l.batches.Add(1)
	l.countRequest(res.charge, err)
	if err != nil {
		// The request failed as a whole (a 429, say): so did every item.
		for _, op := range ops {
			l.setCost(op, res.charge/float64(len(ops)))
			l.report(op, err)
		}
		return
	}
	// Each operation's charge, or a share of the batch's if the service
	// gave none.
	sum := 0.0
	for _, r := range res.ops {
		sum += r.charge
	}
	var dependent []*batcher.Operation
	for i, op := range ops {
		var r opResult
		if i < len(res.ops) {
			r = res.ops[i]
		}
		if sum == 0 {
			r.charge = res.charge / float64(len(ops))
		}
		switch {
		case res.success:
			l.setCost(op, r.charge)
			l.written.Add(1)
		case r.status == http.StatusFailedDependency:
			// Another item failed the batch, so this one was not written.
			dependent = append(dependent, op)
		default:
			l.setCost(op, r.charge)
			l.report(op, &BatchOperationError{PartitionKey: pk, Index: i, StatusCode: int(r.status)})
		}
	}
	// Write the innocent ones on their own, now: retried with the culprit,
	// they would fail with it again and use up their attempts.
	for _, op := range dependent {
		l.upsert(ctx, op)
	}
}

// countRequest counts a request, its charge and, if it failed, how.
func (l *Loader) countRequest(charge float64, err error) {
	l.requests.Add(1)
	l.centiRU.Add(int64(math.Round(charge * 100)))
	switch classify(err) {
	case verdictThrottle:
		l.throttled.Add(1)
	case verdictRetry:
		l.retried.Add(1)
	}
}

type verdict int

const (
	verdictOK verdict = iota
	verdictThrottle
	verdictRetry
	verdictFail
)

// classify says what to do about a write's error.
func classify(err error) verdict {
	if err == nil {
		return verdictOK
	}
	var status int
	var re *azcore.ResponseError
	var be *BatchOperationError
	switch {
	case errors.As(err, &re):
		status = re.StatusCode
	case errors.As(err, &be):
		status = be.StatusCode
	default:
		// Transport errors, timeouts, a cancelled context: worth another try.
		return verdictRetry
	}
	switch status {
	case http.StatusTooManyRequests:
		return verdictThrottle
	case http.StatusRequestTimeout, http.StatusGone, 449, // retry with
		http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return verdictRetry
	}
	return verdictFail
}

// A BatchOperationError is the failure of one item of a transactional batch
// whose response said StatusCode for it. (A request that fails as a whole
// fails with the SDK's *azcore.ResponseError.)
type BatchOperationError struct {
	PartitionKey string
	Index        int // the item's place in the transactional batch
	StatusCode   int
}

func (e *BatchOperationError) Error() string {
	return fmt.Sprintf("cosmos: item %d of a transactional batch of partition key %q: %d %s",
		e.Index, e.PartitionKey, e.StatusCode, http.StatusText(e.StatusCode))
}

// report tells the Batcher how a failed write went.
func (l *Loader) report(op *batcher.Operation, err error) {
	switch classify(err) {
	case verdictThrottle:
		var re *azcore.ResponseError
		errors.As(err, &re)
		op.Throttle(retryAfter(re), err)
	case verdictRetry:
		op.Retry(err)
	default:
		l.failed.Add(1)
		op.Fail(err)
	}
}

// retryAfter returns the wait a 429 asked for in x-ms-retry-after-ms, or 0
// (re may be nil).
func retryAfter(re *azcore.ResponseError) time.Duration {
	if re == nil || re.RawResponse == nil {
		return 0
	}
	ms, err := strconv.ParseFloat(re.RawResponse.Header.Get("x-ms-retry-after-ms"), 64)
	if err != nil || ms < 0 {
		return 0
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// requestCharge returns the x-ms-request-charge of an error's response, or 0.
func requestCharge(err error) float64 {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil {
		return 0
	}
	c, _ := strconv.ParseFloat(re.RawResponse.Header.Get("x-ms-request-charge"), 64)
	return c
}

// store is what a Loader needs of a container: containerStore on the SDK,
// or a fake in tests.
type store interface {
	// upsert writes one document and returns its request charge.
	upsert(ctx context.Context, pk string, body []byte) (charge float64, err error)
	// batch writes the documents in a transactional batch. An error means
	// the request failed as a whole; otherwise the result says how each
	// operation went.
	batch(ctx context.Context, pk string, bodies [][]byte) (batchResult, error)
}

type batchResult struct {
	charge  float64
	success bool
	ops     []opResult
}

type opResult struct {
	status int32
	charge float64
}

type containerStore struct{ c *azcosmos.ContainerClient }

func (s containerStore) upsert(ctx context.Context, pk string, body []byte) (float64, error) {
	resp, err := s.c.UpsertItem(ctx, azcosmos.NewPartitionKeyString(pk), body, nil)
	if err != nil {
		return requestCharge(err), err
	}
	return float64(resp.RequestCharge), nil
}

func (s containerStore) batch(ctx context.Context, pk string, bodies [][]byte) (batchResult, error) {
	b := s.c.NewTransactionalBatch(azcosmos.NewPartitionKeyString(pk))
	for _, body := range bodies {
		b.UpsertItem(body, nil)
	}
	resp, err := s.c.ExecuteTransactionalBatch(ctx, b, nil)
	if err != nil {
		return batchResult{charge: requestCharge(err)}, err
	}
	r := batchResult{charge: float64(resp.RequestCharge), success: resp.Success, ops: make([]opResult, len(resp.OperationResults))}
	for i, o := range resp.OperationResults {
		r.ops[i] = opResult{status: o.StatusCode, charge: float64(o.RequestCharge)}
	}
	return r, nil
}
