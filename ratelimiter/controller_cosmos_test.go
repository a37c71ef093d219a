package ratelimiter_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Convergence end to end, in real time: a Batcher writes small items to the
// embedded Cosmos DB model through the real azcosmos SDK, its limiter
// configured at 10,000 RU/s while the model serves 500. Costs are in
// hundredths of a request unit, so that what the Batcher counts is what the
// model charges (5.71 RU a write).

const (
	modelRU    = 500   // what the model serves, RU/s
	ceilingRU  = 10000 // what the limiter is told
	itemCharge = 571   // a small write, in hundredths of a RU
	centi      = 100   // cost units per RU
	cosmosDB   = "ctl" // the database
	cosmosPK   = "/pk" // the partition key path
	writers    = 16    // concurrent upserts per batch
	batchItems = 25    // operations per batch
	retryAfter = "x-ms-retry-after-ms"
)

// upserter is the Processor: it upserts each item of a batch, reports its
// charge as the actual cost, and a 429 as a throttle with its retry-after.
type upserter struct {
	c                   *azcosmos.ContainerClient
	requests, throttled atomic.Int64
	written             atomic.Int64
}

func (u *upserter) ProcessBatch(ctx context.Context, batch []*batcher.Operation) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, writers)
	for _, op := range batch {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			id := op.Payload().(string)
			body := fmt.Sprintf(`{"id":%q,"pk":%q,"v":1}`, id, id)
			resp, err := u.c.UpsertItem(ctx, azcosmos.NewPartitionKeyString(id), []byte(body), nil)
			u.requests.Add(1)
			if err == nil {
				op.SetActualCost(int(math.Round(float64(resp.RequestCharge) * centi)))
				u.written.Add(1)
				return
			}
			op.SetActualCost(0)
			var re *azcore.ResponseError
			if errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests {
				u.throttled.Add(1)
				var ra time.Duration
				if ms, perr := strconv.ParseFloat(re.RawResponse.Header.Get(retryAfter), 64); perr == nil && ms > 0 {
					ra = time.Duration(ms * float64(time.Millisecond))
				}
				op.Throttle(ra, err)
				return
			}
			op.Retry(err)
		})
	}
	wg.Wait()
	return nil
}

// convergence is what one run measured.
type convergence struct {
	name              string
	items, written    int
	elapsed, ideal    time.Duration
	requests, th429   int64
	util, utilFrom5s  float64 // RU served / what the model serves, over the run and from 5s on
	capacityAtEndInRU int
	events            []string // the limiter's capacity changes and the Batcher's throttles, timed from the start
}

func (r convergence) String() string {
	done := fmt.Sprintf("%.2fx the ideal", r.elapsed.Seconds()/r.ideal.Seconds())
	if r.written < r.items {
		done = "unfinished"
	}
	return fmt.Sprintf("%-11s %4d/%d items in %5.1fs (ideal %4.1fs; %s): utilization %.2f (from 5s on %.2f), 429s %d of %d requests (%.1f%%), capacity at the end %d RU/s",
		r.name, r.written, r.items, r.elapsed.Seconds(), r.ideal.Seconds(), done,
		r.util, r.utilFrom5s, r.th429, r.requests, 100*float64(r.th429)/float64(max(r.requests, 1)), r.capacityAtEndInRU)
}

// converge writes items through a Batcher limited by lim, into a container
// of its own, until all are written or limit has passed.
func converge(t *testing.T, m *cosmosmodel.Model, client *azcosmos.Client, name string, lim batcher.RateLimiter, items int, limit time.Duration) convergence {
	t.Helper()
	ctx := t.Context()
	db, err := client.NewDatabase(cosmosDB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateContainer(ctx, azcosmos.ContainerProperties{ID: name,
		PartitionKeyDefinition: azcosmos.PartitionKeyDefinition{Paths: []string{cosmosPK}}}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := db.NewContainer(name)
	if err != nil {
		t.Fatal(err)
	}
	u := &upserter{c: c}
	w := batcher.NewWatcherFor(u).WithMaxBatchSize(batchItems).WithMaxAttempts(10)
	// At most four batches in flight, as a loader would bound them: a
	// limiter grants a rate, and only the Batcher bounds what is in
	// flight when answers stall (on a loaded machine under -race, no
	// answer came back for six seconds once, while the whole backlog went
	// out).
	b := batcher.NewBatcher().WithRateLimiter(lim).WithBufferSize(items).WithMaxConcurrentBatches(4)
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	startRU := m.Stats().RU
	start := time.Now()
	var (
		evMu   sync.Mutex
		events []string
	)
	b.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.CapacityChanged || e.Kind == batcher.Throttled {
			evMu.Lock()
			events = append(events, fmt.Sprintf("%6.3fs %v %d %s %v ops=%d", time.Since(start).Seconds(), e.Kind, e.Val, e.Msg, e.Duration, len(e.Batch)))
			evMu.Unlock()
		}
	})
	ops := make([]*batcher.Operation, items)
	for i := range ops {
		ops[i] = batcher.NewOperation(w, itemCharge, fmt.Sprintf("%s-%d", name, i), true)
		if err := b.Enqueue(ops[i]); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, limit)
	for _, op := range ops {
		if op.Wait(wctx) != nil {
			break
		}
	}
	cancel()
	elapsed := time.Since(start)
	ru := m.Stats().RU - startRU
	capacity := lim.Capacity() / centi
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// The model's seconds that lie wholly within the run, from 5s on.
	var from5, n5 float64
	born := time.Now().Add(-m.Stats().Elapsed)
	for _, s := range m.History() {
		at := born.Add(s.At)
		if at.Before(start.Add(5*time.Second)) || at.Add(time.Second).After(start.Add(elapsed)) {
			continue
		}
		from5 += s.RU
		n5++
	}
	r := convergence{name: name, items: items, written: int(u.written.Load()), elapsed: elapsed,
		ideal:    time.Duration(float64(items*itemCharge) / centi / modelRU * float64(time.Second)),
		requests: u.requests.Load(), th429: u.throttled.Load(),
		util: ru / modelRU / elapsed.Seconds(), capacityAtEndInRU: capacity}
	if n5 > 0 {
		r.utilFrom5s = from5 / n5 / modelRU
	}
	evMu.Lock()
	r.events = events
	evMu.Unlock()
	return r
}

// TestConvergenceOnCosmosModel runs the Controller, Adaptive and a
// plain Provisioned limiter, each configured at 20 times what the model
// serves, one after the other in one run, and logs what each achieved. The
// Controller must finish near the ideal; the others are given as long as
// the Controller may take, and are only measured.
func TestConvergenceOnCosmosModel(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about a minute in real time")
	}
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: modelRU})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	client, err := m.NewClient(nil) // 429s reach the Batcher
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateDatabase(t.Context(), azcosmos.DatabaseProperties{ID: cosmosDB}, nil); err != nil {
		t.Fatal(err)
	}
	const items = 1500 // 8,565 RU: 17.1s at 500 RU/s
	limit := 2 * time.Duration(items*itemCharge/centi) * time.Second / modelRU

	ctl := converge(t, m, client, "controller", ratelimiter.NewController(ceilingRU*centi), items, limit)
	adaptive := converge(t, m, client, "adaptive", ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(ceilingRU*centi)), items, ctl.elapsed)
	prov := converge(t, m, client, "provisioned", ratelimiter.NewProvisioned(ceilingRU*centi), items, ctl.elapsed)
	for _, r := range []convergence{ctl, adaptive, prov} {
		t.Log(r)
	}

	// Loose bounds, for a loaded machine: all written within 1.5 times the
	// ideal, most of the model's throughput used from 5s on, few 429s.
	// Quiet, the Controller finishes within 1.05 times the ideal with 1-3%
	// of its requests throttled, most of them in the first second; under
	// -race on a loaded 2-core machine the answers take up to a second,
	// the slow start overshoots for that long before the first 429 comes
	// back, and up to about 8% were throttled (each retried).
	if ctl.written != items {
		t.Errorf("controller: %d of %d items written in %v", ctl.written, items, ctl.elapsed)
	}
	if ctl.elapsed > ctl.ideal*3/2 {
		t.Errorf("controller: %v, more than 1.5 times the ideal %v", ctl.elapsed, ctl.ideal)
	}
	if ctl.utilFrom5s < 0.75 {
		t.Errorf("controller: utilization from 5s on %.2f, want at least 0.75", ctl.utilFrom5s)
	}
	if share := float64(ctl.th429) / float64(ctl.requests); share > 0.12 {
		t.Errorf("controller: 429s %.1f%% of requests, want at most 12%%", 100*share)
	}
	if t.Failed() { // what the Controller did, to see why
		for _, e := range ctl.events[:min(len(ctl.events), 300)] {
			t.Log(e)
		}
	}
}
