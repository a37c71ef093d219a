package cosmosbulk

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"math"
	"net/http"
	"sync"
	"sync/atomic"

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
	DefaultMargin       = 0.02
	DefaultLanes        = 16
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
func EstimateRU(size int) int { return ceilRU(EstimateCharge(size)) }

// EstimateCharge is [EstimateRU] before rounding: 5.71 + 0.44 × (KB − 1),
// with documents under 1 KB charged as 1 KB.
func EstimateCharge(size int) float64 {
	kb := math.Max(1, float64(size)/1024)
	return 5.71 + 0.44*(kb-1)
}

func writeCharge(size int) float64 { return EstimateCharge(size) }

// ceilRU rounds a charge up to whole request units, forgiving float noise.
func ceilRU(ru float64) int { return int(math.Ceil(ru - 1e-3)) }

// Stats counts what a Loader did.
type Stats struct {
	Written   int64 // items written
	Requests  int64 // document requests sent: upserts and transactional batches
	Batches   int64 // transactional batches among them
	Throttled int64 // requests answered 429
	// Sent counts item writes sent (each item of each request, retries
	// included), and SentThrottled those in requests answered 429: with
	// transactional batches, a few requests carry many items, and
	// SentThrottled/Sent is the share of the work throttled.
	Sent, SentThrottled int64
	Retried             int64   // requests that failed in a way worth retrying (not 429)
	Failed              int64   // items the service refused for good (those whose retries ran out are in the Batcher's Stats)
	RU                  float64 // request units charged, as the responses said
}

// A Loader writes items to a container through a Batcher. Create it with
// [NewLoader], configure it with the With* methods, then call Load or
// LoadAll from any number of goroutines. It is the [batcher.Processor] of
// its lanes' watchers (see the package doc's Lanes).
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
	lanes        int
	rangeLanes   bool

	once    sync.Once
	w       []*batcher.Watcher // the default range's, one per lane
	started atomic.Bool
	ranges  ranges // the partition key ranges learned, and their watchers

	written, requests, batches, throttled, retried, failed atomic.Int64
	sent, sentThrottled                                    atomic.Int64
	centiRU                                                atomic.Int64
	milliCost                                              atomic.Int64 // cost reported so far, in thousandths
	milliDeclared                                          atomic.Int64 // cost declared so far, in thousandths
}

// NewLoader returns a Loader that writes to container through b. b must be
// started before the first Load; its rate limiter should grant the
// container's throughput in RU per second (a [ThroughputLimiter] reads it
// from the container). container's client should leave 429s to the Loader
// ([ClientOptions] does), or the SDK retries them itself and no lane hears
// of them.
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
		lanes:        DefaultLanes,
		rangeLanes:   true,
	}
}

func (l *Loader) checkNotStarted(method string) {
	if l.started.Load() {
		panic("cosmosbulk: Loader." + method + " called after the first Load")
	}
}

// WithMaxBatchSize sets the most items the Batcher hands over at once, per
// lane. The default, and the most, is 100, a transactional batch's limit; n
// must be at least 1.
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

// WithLanes sets how many watchers each throttle lane (a partition key
// range, or the default lane of keys whose range is not known yet) spreads
// its items over, by a hash of their partition key (see the package doc's
// Lanes). The default is 16; n must be 1 to 4096 (1: one watcher per
// lane). A throttle pauses every watcher of its lane, whatever n is.
func (l *Loader) WithLanes(n int) *Loader {
	l.checkNotStarted("WithLanes")
	l.lanes = n
	return l
}

// WithRangeLanes sets whether the Loader gives each partition key range a
// throttle lane of its own (true, the default: see the package doc's
// Lanes) or keeps every item in one lane, the default lane, whatever its
// range (false: a 429 of any key pauses every write; nothing is learned or
// held).
func (l *Loader) WithRangeLanes(on bool) *Loader {
	l.checkNotStarted("WithRangeLanes")
	l.rangeLanes = on
	return l
}

// WithMargin sets how much more than its request charge each write counts
// for against the Batcher's capacity: 0.02 (the default) counts 2% more.
// The Batcher keeps within its capacity by the moments it releases batches;
// the service counts request units by the moments requests reach it, which
// come a little later, and not all equally late. A margin leaves room for
// requests that reach the service's next second rather than the one they
// were released in: with a margin m, the Batcher uses about 1/(1+m) of a
// rate limiter granting exactly the provisioned throughput, and m of a
// second's worth may land late without a 429 (see the package doc). Raise
// it if requests take much longer one moment than the next (a loaded
// client, a distant region): a margin of m absorbs delays that differ by
// about m seconds. margin must be 0 or more and less than 1.
func (l *Loader) WithMargin(margin float64) *Loader {
	l.checkNotStarted("WithMargin")
	l.margin = margin
	return l
}

// maxLanes bounds WithLanes.
const maxLanes = 4096

// watchers returns the Loader's watchers, one per lane, creating them with
// the settings at the first call; it returns an error naming every bad
// setting.
func (l *Loader) watchers() ([]*batcher.Watcher, error) {
	if l.started.Load() {
		return l.w, nil
	}
	var errs []error
	if l.maxBatchSize < 1 || l.maxBatchSize > MaxTransactionalBatchOps {
		errs = append(errs, fmt.Errorf("%w: cosmosbulk Loader MaxBatchSize is %d; it must be 1 to %d", batcher.ErrInvalidSetting, l.maxBatchSize, MaxTransactionalBatchOps))
	}
	if l.concurrency < 1 {
		errs = append(errs, fmt.Errorf("%w: cosmosbulk Loader Concurrency is %d; it must be at least 1", batcher.ErrInvalidSetting, l.concurrency))
	}
	if l.maxAttempts < 1 {
		errs = append(errs, fmt.Errorf("%w: cosmosbulk Loader MaxAttempts is %d; it must be at least 1", batcher.ErrInvalidSetting, l.maxAttempts))
	}
	if !(l.margin >= 0 && l.margin < 1) {
		errs = append(errs, fmt.Errorf("%w: cosmosbulk Loader Margin is %v; it must be 0 or more and less than 1", batcher.ErrInvalidSetting, l.margin))
	}
	if l.lanes < 1 || l.lanes > maxLanes {
		errs = append(errs, fmt.Errorf("%w: cosmosbulk Loader Lanes is %d; it must be 1 to %d", batcher.ErrInvalidSetting, l.lanes, maxLanes))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	l.once.Do(func() {
		l.w = make([]*batcher.Watcher, l.lanes)
		// The default range: keys whose partition key range no answer
		// has named yet. They may be on any physical partition, so a 429
		// of one of them may come from a budget they all share: they
		// share one throttle lane (see batcher.Lane).
		lane := batcher.NewLane()
		for i := range l.w {
			l.w[i] = l.newWatcher(lane)
		}
		l.started.Store(true)
	})
	return l.w, nil
}

// Lane returns the watcher (0 to WithLanes' n − 1) that items of a
// partition key go to within their throttle lane: a hash of the key, so
// that all items of one key meet in one watcher. Keys with the same Lane
// but on different partition key ranges are in different throttle lanes.
func (l *Loader) Lane(partitionKey string) int {
	return laneOf(partitionKey, l.lanes)
}

func laneOf(pk string, lanes int) int {
	if lanes <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(pk))
	return int(h.Sum32() % uint32(lanes))
}

// Load enqueues item and returns its write, whose Wait says how it ended.
// It blocks while the Batcher's buffer is full, until ctx ends; ctx governs
// only that wait. It returns the Batcher's error if Enqueue refuses the
// item (not started, shut down, costlier than the limiter's maximum), or an
// error naming a bad setting of the Loader.
//
// The first item of a partition key whose range the Loader has not learned
// yet goes at once, in the default lane; the key's further items are held,
// outside the Batcher's buffer, until an answer to that first write names
// the key's range, and then enqueued in the range's lane (see the package
// doc's Lanes). A held item's Write gets its operation then; if the
// Batcher refuses it (shut down meanwhile), its Wait returns the refusal.
func (l *Loader) Load(ctx context.Context, item Item) (*Write, error) {
	ws, err := l.watchers()
	if err != nil {
		return nil, err
	}
	w := newWrite(item)
	rt := l.route(item.PartitionKey, ws, w)
	if rt.held {
		return w, nil
	}
	op := batcher.NewOperation(rt.w, l.declare(item), item, true)
	if err := l.b.EnqueueContext(ctx, op); err != nil {
		if rt.learner != nil {
			l.releaseHeld(item.PartitionKey, rt.learner)
		}
		return nil, fmt.Errorf("cosmosbulk: item %q: %w", item.ID, err)
	}
	w.set(op, rt.rangeID, nil)
	if rt.learner != nil {
		go l.awaitRange(item.PartitionKey, rt.learner, op)
	}
	return w, nil
}

// LoadAll loads every item and waits until each has been written or has
// failed. It returns nil if all were written; otherwise the errors.Join of
// each failure, naming its item (an [*ItemError], or the Batcher's error
// wrapping one when the retries ran out). If ctx ends, it stops enqueueing
// and waiting and returns ctx.Err() with the failures seen so far; items
// already enqueued are still written unless the Batcher is closed.
func (l *Loader) LoadAll(ctx context.Context, items iter.Seq[Item]) error {
	var (
		ws   []*Write
		errs []error
	)
	for it := range items {
		w, err := l.Load(ctx, it)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		ws = append(ws, w)
	}
	for _, w := range ws {
		if err := w.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				errs = append(errs, ctx.Err())
				break
			}
			var ie *ItemError
			if !errors.As(err, &ie) {
				err = fmt.Errorf("cosmosbulk: item %q: %w", w.Item().ID, err)
			}
			errs = append(errs, err)
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
		Written:       l.written.Load(),
		Requests:      l.requests.Load(),
		Batches:       l.batches.Load(),
		Throttled:     l.throttled.Load(),
		Sent:          l.sent.Load(),
		SentThrottled: l.sentThrottled.Load(),
		Retried:       l.retried.Load(),
		Failed:        l.failed.Load(),
		RU:            float64(l.centiRU.Load()) / 100,
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
	charge, rangeID, err := l.store.upsert(ctx, it.PartitionKey, it.Body)
	l.learn(it.PartitionKey, rangeID, answered(err))
	l.countRequest(1, charge, err)
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
	l.learn(pk, res.rangeID, answered(err))
	l.batches.Add(1)
	l.countRequest(len(ops), res.charge, err)
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

// countRequest counts a request of n items, its charge and, if it failed,
// how.
func (l *Loader) countRequest(n int, charge float64, err error) {
	l.requests.Add(1)
	l.sent.Add(int64(n))
	l.centiRU.Add(int64(math.Round(charge * 100)))
	switch Classify(err) {
	case Throttle:
		l.throttled.Add(1)
		l.sentThrottled.Add(int64(n))
	case Transient:
		l.retried.Add(1)
	}
}

// report tells the Batcher how a failed write of op went: a throttle
// pauses its lane for the retry-after the service asked for (or, without
// one, a back-off that grows while throttles repeat) and retries it; a
// transient failure retries it after the watcher's back-off; a permanent
// one fails it at once with an [*ItemError].
func (l *Loader) report(op *batcher.Operation, err error) {
	it := op.Payload().(Item)
	class := Classify(err)
	ie := &ItemError{ID: it.ID, PartitionKey: it.PartitionKey, StatusCode: StatusCode(err), Class: class, Err: err}
	switch class {
	case Throttle:
		after, _ := RetryAfter(err)
		op.Throttle(after, ie)
	case Transient:
		op.Retry(ie)
	default:
		l.failed.Add(1)
		op.Fail(ie)
	}
}

// store is what a Loader needs of a container: containerStore on the SDK,
// or a fake in tests.
type store interface {
	// upsert writes one document and returns its request charge and the
	// partition key range that answered ("" if unknown), error or not.
	upsert(ctx context.Context, pk string, body []byte) (charge float64, rangeID string, err error)
	// batch writes the documents in a transactional batch. An error means
	// the request failed as a whole; otherwise the result says how each
	// operation went. The result's charge and rangeID are set either way.
	batch(ctx context.Context, pk string, bodies [][]byte) (batchResult, error)
}

type batchResult struct {
	rangeID string // the partition key range that answered, or ""
	charge  float64
	success bool
	ops     []opResult
}

type opResult struct {
	status int32
	charge float64
}

type containerStore struct{ c *azcosmos.ContainerClient }

func (s containerStore) upsert(ctx context.Context, pk string, body []byte) (float64, string, error) {
	resp, err := s.c.UpsertItem(ctx, azcosmos.NewPartitionKeyString(pk), body, nil)
	if err != nil {
		return RequestCharge(err), PartitionKeyRangeID(err), err
	}
	return float64(resp.RequestCharge), rangeIDOf(resp.RawResponse), nil
}

func (s containerStore) batch(ctx context.Context, pk string, bodies [][]byte) (batchResult, error) {
	b := s.c.NewTransactionalBatch(azcosmos.NewPartitionKeyString(pk))
	for _, body := range bodies {
		b.UpsertItem(body, nil)
	}
	resp, err := s.c.ExecuteTransactionalBatch(ctx, b, nil)
	if err != nil {
		return batchResult{charge: RequestCharge(err), rangeID: PartitionKeyRangeID(err)}, err
	}
	r := batchResult{rangeID: rangeIDOf(resp.RawResponse), charge: float64(resp.RequestCharge), success: resp.Success, ops: make([]opResult, len(resp.OperationResults))}
	for i, o := range resp.OperationResults {
		r.ops[i] = opResult{status: o.StatusCode, charge: float64(o.RequestCharge)}
	}
	return r, nil
}
