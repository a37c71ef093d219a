package cosmosbulk_test

import (
	"context"
	"fmt"
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
	var ops []*batcher.Operation
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
