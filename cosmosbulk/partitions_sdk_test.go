package cosmosbulk_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/ratelimiter"
)

// TestSDKHotPartitionThrottlesOnlyItsLane is the shape of scenario S5 on
// the real SDK: four physical partitions, three quarters of the writes to
// one partition key. The hot partition's budget is spent first and answers
// 429s, which come back as throttles of the hot key's lane: a write of a
// key on another partition and another lane is throttled only if its own
// partition answered 429s (the Batcher's capacity may drive one cold
// partition over its quarter too), and everything is written once.
func TestSDKHotPartitionThrottlesOnlyItsLane(t *testing.T) {
	const provisioned = 4000 // 1,000 RU/s a partition
	m, _, cc := model(t, cosmosmodel.Options{ProvisionedRU: provisioned, Partitions: 4})
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(provisioned / 2))
	var mu sync.Mutex
	var throttled []*batcher.Operation
	b.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.Throttled {
			mu.Lock()
			throttled = append(throttled, e.Batch...)
			mu.Unlock()
		}
	})
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l := cosmosbulk.NewLoader(cc, b)
	hot := "hot"
	var cold []string // keys on another partition and another lane than hot's
	for i := 0; len(cold) < 30; i++ {
		k := fmt.Sprint("cold-", i)
		if m.PartitionOf(k) != m.PartitionOf(hot) && l.Lane(k) != l.Lane(hot) {
			cold = append(cold, k)
		}
	}
	const n = 1200
	var ops []*cosmosbulk.Write
	t0 := time.Now()
	for i := range n {
		pk := hot
		if i%4 == 3 {
			pk = cold[i/4%len(cold)]
		}
		id := fmt.Sprintf("doc-%d", i)
		op, err := l.Load(t.Context(), cosmosbulk.Item{ID: id, PartitionKey: pk, Body: []byte(fmt.Sprintf(`{"id":%q,"pk":%q}`, id, pk))})
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op)
	}
	for _, op := range ops {
		if err := op.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(t0)
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	items, _ := m.Items("db", "c")
	if len(items) != n {
		t.Errorf("%d stored, want %d", len(items), n)
	}
	ps := m.PartitionStats()
	mu.Lock()
	defer mu.Unlock()
	// The ideal: the hot partition's RU over its budget.
	t.Logf("%d items in %v (the hot partition's RU / its budget: %.2fs); partitions %+v; %d operations throttled; loader %+v", n, took, ps[m.PartitionOf(hot)].RU/ps[m.PartitionOf(hot)].BudgetRU, ps, len(throttled), l.Stats())
	if ps[m.PartitionOf(hot)].Throttled == 0 {
		t.Errorf("the hot partition was never throttled: the test shows nothing")
	}
	hotOps := 0
	for _, op := range throttled {
		it := op.Payload().(cosmosbulk.Item)
		if it.PartitionKey == hot {
			hotOps++
			continue
		}
		if p := m.PartitionOf(it.PartitionKey); ps[p].Throttled == 0 {
			t.Errorf("item %s of cold key %s was throttled, but its partition %d answered no 429", it.ID, it.PartitionKey, p)
		}
	}
	if hotOps == 0 {
		t.Errorf("no write of the hot key was throttled")
	}
}

// TestSDKColdPartitionsGoOnWhileTheHotOneIsPaused is scenario S5's promise
// on the real SDK: four physical partitions, half the writes to one key.
// Once the Loader has learned each key's partition key range from the
// answers (x-ms-documentdb-partitionkeyrangeid), a 429 of the hot
// partition pauses only the hot range's lane: batches of cold keys keep
// being released while it is paused. With one lane for all (the Loader
// before ranges), nothing was released during a hot pause.
func TestSDKColdPartitionsGoOnWhileTheHotOneIsPaused(t *testing.T) {
	const provisioned = 4000 // 1,000 RU/s a partition
	m, _, cc := model(t, cosmosmodel.Options{ProvisionedRU: provisioned, Partitions: 4})
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(provisioned)).WithEmitBatch()
	hot := "hot"
	type pause struct{ from, to time.Time }
	var (
		mu         sync.Mutex
		hotPauses  []pause
		coldFreed  []time.Time // when a batch with cold keys was released
		hotFreed   int
		coldThrott int
	)
	b.AddListener(func(e batcher.Event) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		switch e.Kind {
		case batcher.Throttled:
			if len(e.Batch) > 0 { // a batch holds one partition key's items
				if e.Batch[0].Payload().(cosmosbulk.Item).PartitionKey == hot {
					hotPauses = append(hotPauses, pause{now, now.Add(e.Duration)})
				} else {
					coldThrott++
				}
			}
		case batcher.BatchReleased:
			cold := false
			for _, op := range e.Batch {
				if op.Payload().(cosmosbulk.Item).PartitionKey == hot {
					hotFreed++
				} else {
					cold = true
				}
			}
			if cold {
				coldFreed = append(coldFreed, now)
			}
		}
	})
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l := cosmosbulk.NewLoader(cc, b)
	var cold []string // keys on the three other partitions
	for i := 0; len(cold) < 30; i++ {
		if k := fmt.Sprint("cold-", i); m.PartitionOf(k) != m.PartitionOf(hot) {
			cold = append(cold, k)
		}
	}
	item := func(id, pk string) cosmosbulk.Item {
		return cosmosbulk.Item{ID: id, PartitionKey: pk, Body: []byte(fmt.Sprintf(`{"id":%q,"pk":%q}`, id, pk))}
	}
	// One write of each key first, for the Loader to learn their ranges.
	warm := []cosmosbulk.Item{item("warm-hot", hot)}
	for _, k := range cold {
		warm = append(warm, item("warm-"+k, k))
	}
	if err := l.LoadAll(t.Context(), slices.Values(warm)); err != nil {
		t.Fatal(err)
	}
	const n = 1600
	var ops []*cosmosbulk.Write
	for i := range n {
		pk := hot
		if i%2 == 1 {
			pk = cold[i/2%len(cold)]
		}
		op, err := l.Load(t.Context(), item(fmt.Sprint("doc-", i), pk))
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op)
	}
	for _, op := range ops {
		if err := op.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if items, _ := m.Items("db", "c"); len(items) != n+len(warm) {
		t.Errorf("%d stored, want %d", len(items), n+len(warm))
	}
	mu.Lock()
	defer mu.Unlock()
	// Cold releases strictly inside a pause of the hot lane, 20 ms clear of
	// its ends (events of one moment may reach the listener out of order).
	const clear = 20 * time.Millisecond
	during := 0
	for _, at := range coldFreed {
		for _, p := range hotPauses {
			if at.After(p.from.Add(clear)) && at.Before(p.to.Add(-clear)) {
				during++
				break
			}
		}
	}
	t.Logf("%d hot pauses; %d cold batch releases, %d of them during a hot pause; %d cold throttles; partitions %+v; loader %+v",
		len(hotPauses), len(coldFreed), during, coldThrott, m.PartitionStats(), l.Stats())
	if len(hotPauses) == 0 {
		t.Fatal("the hot partition's lane was never paused: the test shows nothing")
	}
	if during < 3 {
		t.Errorf("%d batches of cold keys released while the hot lane was paused, want at least 3: cold partitions wait on the hot one's pauses", during)
	}
}

// TestSDKColdPartitionsGoOnFromTheStart is S5's promise for items loaded up
// front, before any answer has named a range: four physical partitions,
// half the writes to one key, every item loaded at once. The Loader holds a
// key's further items until its first write has named the key's range, so
// the cold keys' items are in their ranges' lanes, not in the default lane
// with the hot key's: batches of cold keys keep being released while the
// hot lane is paused, and the cold items are done long before the hot ones.
// Before the hold, every item loaded up front shared the default lane, and
// the cold items waited on each of the hot key's pauses.
func TestSDKColdPartitionsGoOnFromTheStart(t *testing.T) {
	const provisioned = 4000 // 1,000 RU/s a partition
	m, _, cc := model(t, cosmosmodel.Options{ProvisionedRU: provisioned, Partitions: 4})
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(provisioned))
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l := cosmosbulk.NewLoader(cc, b)
	hot := "hot"
	var cold []string // keys on the three other partitions
	for i := 0; len(cold) < 30; i++ {
		if k := fmt.Sprint("cold-", i); m.PartitionOf(k) != m.PartitionOf(hot) {
			cold = append(cold, k)
		}
	}
	const n = 1600 // 800 hot writes: about 4.6s of the hot partition's 1,000 RU/s
	var hotW, coldW []*cosmosbulk.Write
	t0 := time.Now()
	for i := range n {
		pk := hot
		if i%2 == 1 {
			pk = cold[i/2%len(cold)]
		}
		id := fmt.Sprint("doc-", i)
		w, err := l.Load(t.Context(), cosmosbulk.Item{ID: id, PartitionKey: pk, Body: []byte(fmt.Sprintf(`{"id":%q,"pk":%q}`, id, pk))})
		if err != nil {
			t.Fatal(err)
		}
		if pk == hot {
			hotW = append(hotW, w)
		} else {
			coldW = append(coldW, w)
		}
	}
	done := func(ws []*cosmosbulk.Write) time.Duration {
		for _, w := range ws {
			if err := w.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(t0)
	}
	coldAt := done(coldW)
	hotAt := done(hotW)
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if items, _ := m.Items("db", "c"); len(items) != n {
		t.Errorf("%d stored, want %d", len(items), n)
	}
	ps := m.PartitionStats()
	hp := ps[m.PartitionOf(hot)]
	t.Logf("cold items done at %v, hot at %v; partitions %+v; loader %+v", coldAt, hotAt, ps, l.Stats())
	if hp.Throttled == 0 {
		t.Fatal("the hot partition was never throttled: the test shows nothing")
	}
	// The cold items cost about 800 × 5.71 RU over three partitions of
	// 1,000 RU/s: 1.5s at their budgets, and less than the hot partition's
	// 4.6s however the Batcher shares its capacity. Waiting on the hot
	// lane's pauses, they were done with the hot ones.
	if coldAt > hotAt/2+time.Second {
		t.Errorf("cold items done at %v, the hot ones at %v: the cold ones waited on the hot partition's pauses", coldAt, hotAt)
	}
}
