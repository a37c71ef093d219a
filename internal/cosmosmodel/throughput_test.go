package cosmosmodel_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/internal/servicetest"
)

// newModel creates a model with database db and container c (on /pk) and
// returns its handler.
func newModel(t *testing.T, o cosmosmodel.Options) (*cosmosmodel.Model, http.Handler) {
	t.Helper()
	m, err := cosmosmodel.New(o)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler()
	if rec := do(t, h, "POST", "/dbs", `{"id":"db"}`, nil); rec.Code != 201 {
		t.Fatalf("create database: %d %s", rec.Code, rec.Body)
	}
	if rec := do(t, h, "POST", "/dbs/db/colls", `{"id":"c","partitionKey":{"paths":["/pk"],"kind":"Hash"}}`, nil); rec.Code != 201 {
		t.Fatalf("create container: %d %s", rec.Code, rec.Body)
	}
	return m, h
}

// keyOn returns a partition key value hashed to partition p, other than
// those in not.
func keyOn(m *cosmosmodel.Model, p int, not ...string) string {
next:
	for i := 0; ; i++ {
		k := fmt.Sprint("k", i)
		for _, n := range not {
			if k == n {
				continue next
			}
		}
		if m.PartitionOf(k) == p {
			return k
		}
	}
}

func writeTo(t *testing.T, h http.Handler, id, pk string) int {
	t.Helper()
	return do(t, h, "POST", "/dbs/db/colls/c/docs", string(item(id, pk, 1024)),
		map[string]string{"x-ms-documentdb-partitionkey": `["` + pk + `"]`, "Prefer": "return=minimal"}).Code
}

// TestPartitionsHaveTheirOwnBudget checks, on fake time, that the budget is
// split evenly between the physical partitions, that a partition whose
// second is spent answers 429 while the others serve, and the per-partition
// counts.
func TestPartitionsHaveTheirOwnBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, h := newModel(t, cosmosmodel.Options{ProvisionedRU: 400, Partitions: 4})
		if m.Partitions() != 4 {
			t.Fatalf("Partitions() = %d", m.Partitions())
		}
		seen := map[int]bool{}
		for i := range 200 {
			seen[m.PartitionOf(fmt.Sprint("key-", i))] = true
		}
		if len(seen) != 4 {
			t.Errorf("200 keys hashed to %d partitions, want all 4", len(seen))
		}
		hot, hot2, cold := keyOn(m, 1), "", keyOn(m, 2)
		hot2 = keyOn(m, 1, hot)
		for i := range 17 { // 17 × 5.71 = 97.07 of partition 1's 100
			if c := writeTo(t, h, fmt.Sprint("h", i), hot); c != 201 {
				t.Fatalf("hot write %d: %d", i, c)
			}
		}
		time.Sleep(250 * time.Millisecond)
		rec := do(t, h, "POST", "/dbs/db/colls/c/docs", string(item("over", hot2, 1024)),
			map[string]string{"x-ms-documentdb-partitionkey": `["` + hot2 + `"]`})
		if rec.Code != 429 || rec.Header().Get("x-ms-retry-after-ms") != "750" {
			t.Errorf("another key on the spent partition: %d, retry after %q; want 429 after 750 ms", rec.Code, rec.Header().Get("x-ms-retry-after-ms"))
		}
		for i := range 17 {
			if c := writeTo(t, h, fmt.Sprint("c", i), cold); c != 201 {
				t.Errorf("cold write %d while the hot partition is spent: %d", i, c)
			}
		}
		time.Sleep(750 * time.Millisecond)
		if c := writeTo(t, h, "next", hot); c != 201 {
			t.Errorf("hot write in the next second: %d", c)
		}
		ps := m.PartitionStats()
		want := []cosmosmodel.PartitionStats{
			{BudgetRU: 100},
			{BudgetRU: 100, Requests: 19, Throttled: 1, RU: 102.78},
			{BudgetRU: 100, Requests: 17, RU: 97.07},
			{BudgetRU: 100},
		}
		for i := range want {
			if ps[i] != want[i] {
				t.Errorf("partition %d: %+v, want %+v", i, ps[i], want[i])
			}
		}
		h1 := m.PartitionHistory(1)
		if len(h1) != 2 || h1[0].RU != 97.07 || h1[0].Throttled != 1 || h1[0].BudgetRU != 100 || h1[1].RU != 5.71 {
			t.Errorf("partition 1's history: %+v", h1)
		}
		if all := m.History(); all[0].RU != 194.14 || all[0].BudgetRU != 400 {
			t.Errorf("history: %+v", all)
		}
		if m.PartitionHistory(4) != nil || m.PartitionHistory(-1) != nil {
			t.Errorf("PartitionHistory of no partition is not nil")
		}
	})
}

// TestThroughputChangesMidRun checks, on fake time, that a change of the
// throughput applies from the next request on, to every partition, and
// that History records each second's budget.
func TestThroughputChangesMidRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, h := newModel(t, cosmosmodel.Options{ProvisionedRU: 100, Partitions: 2})
		k := keyOn(m, 0)
		for i := range 8 { // 45.68 of 50
			if c := writeTo(t, h, fmt.Sprint("a", i), k); c != 201 {
				t.Fatalf("write %d: %d", i, c)
			}
		}
		m.SetProvisionedRU(40) // 20 per partition: the second is spent
		if c := writeTo(t, h, "b", k); c != 429 {
			t.Errorf("write after the cut: %d, want 429", c)
		}
		time.Sleep(time.Second)
		for i := range 3 { // 17.13 of 20
			if c := writeTo(t, h, fmt.Sprint("c", i), k); c != 201 {
				t.Errorf("write %d at 20 per partition: %d", i, c)
			}
		}
		if c := writeTo(t, h, "d", k); c != 429 {
			t.Errorf("fourth write at 20 per partition: %d, want 429", c)
		}
		if manual, auto := m.Throughput(); manual != 40 || auto != 0 {
			t.Errorf("Throughput() = %v, %v", manual, auto)
		}
		hist := m.History()
		if hist[0].BudgetRU != 40 || hist[1].BudgetRU != 40 {
			t.Errorf("budgets: %+v", hist)
		}
		if st := m.Stats(); st.ProvisionedRU != 40 || st.CurrentRU != 40 || st.Partitions != 2 {
			t.Errorf("stats: %+v", st)
		}
	})
}

// TestAutoscale checks, on fake time, that autoscale throttles only beyond
// its maximum, and that the throughput it is scaled to follows the load
// between 10% and 100% of the maximum.
func TestAutoscale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, h := newModel(t, cosmosmodel.Options{AutoscaleMaxRU: 100})
		if st := m.Stats(); st.CurrentRU != 10 || st.ProvisionedRU != 100 || st.AutoscaleMaxRU != 100 {
			t.Errorf("idle: %+v, want scaled to 10 of 100", st)
		}
		for i := range 17 {
			if c := writeTo(t, h, fmt.Sprint("a", i), "p"); c != 201 {
				t.Fatalf("write %d under the maximum: %d", i, c)
			}
		}
		if c := writeTo(t, h, "over", "p"); c != 429 {
			t.Errorf("write beyond the maximum: %d", c)
		}
		time.Sleep(time.Second)
		if st := m.Stats(); st.CurrentRU != 97.07 {
			t.Errorf("after a busy second: scaled to %v, want 97.07", st.CurrentRU)
		}
		writeTo(t, h, "b", "p")
		time.Sleep(time.Second)
		if st := m.Stats(); st.CurrentRU != 10 {
			t.Errorf("after a quiet second: scaled to %v, want 10 (10%% of the maximum)", st.CurrentRU)
		}
		m.SetAutoscaleMaxRU(20)
		for i := range 3 {
			if c := writeTo(t, h, fmt.Sprint("c", i), "p"); c != 201 {
				t.Errorf("write %d under the new maximum: %d", i, c)
			}
		}
		if c := writeTo(t, h, "d", "p"); c != 429 {
			t.Errorf("write beyond the new maximum: %d", c)
		}
		if manual, auto := m.Throughput(); manual != 0 || auto != 20 {
			t.Errorf("Throughput() = %v, %v", manual, auto)
		}
	})
}

// TestOtherWorkload checks, on fake time, that the other workload takes
// its rate from the partitions' budgets, request by request, and is
// throttled like anyone when the budget is spent before its turn.
func TestOtherWorkload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, h := newModel(t, cosmosmodel.Options{ProvisionedRU: 100, Partitions: 2})
		m.SetOtherWorkload(-1, 57.1) // 5 writes of 5.71 a second on each partition, every 200 ms
		k := keyOn(m, 0)
		time.Sleep(time.Second - time.Nanosecond) // 5 of them on each partition: 28.55 of 50
		for i := range 3 {                        // 3 × 5.71 more: 45.68
			if c := writeTo(t, h, fmt.Sprint("a", i), k); c != 201 {
				t.Fatalf("write %d: %d", i, c)
			}
		}
		if c := writeTo(t, h, "over", k); c != 429 {
			t.Errorf("write beyond what the other workload left: %d", c)
		}
		time.Sleep(time.Nanosecond)
		// Second 1: the other workload's first request comes at its start
		// (5.71), then the loader takes the rest of partition 0's budget
		// (7 × 5.71: 45.68 of 50); the other workload's 4 later requests
		// there are throttled.
		for i := range 7 {
			if c := writeTo(t, h, fmt.Sprint("b", i), k); c != 201 {
				t.Fatalf("write %d in second 1: %d", i, c)
			}
		}
		if c := writeTo(t, h, "over2", k); c != 429 {
			t.Errorf("eighth write in second 1: %d, want 429", c)
		}
		time.Sleep(time.Second - time.Nanosecond)
		m.SetOtherWorkload(-1, 0)
		time.Sleep(5 * time.Second)
		st := m.Stats()
		if st.OtherRequests != 20 || st.OtherThrottled != 4 || st.OtherRU != 91.36 {
			t.Errorf("other workload: %d requests, %d throttled, %v RU; want 20, 4, 91.36", st.OtherRequests, st.OtherThrottled, st.OtherRU)
		}
		if st.Requests != 12 || st.Throttled != 2 {
			t.Errorf("the clients': %+v", st)
		}
		ps := m.PartitionStats()
		if ps[0].OtherThrottled != 4 || ps[1].OtherThrottled != 0 || ps[0].OtherRUPerSecond != 0 {
			t.Errorf("partitions: %+v", ps)
		}
		hist := m.History()
		if hist[0].OtherRequests != 10 || hist[1].OtherRequests != 10 || hist[1].OtherThrottled != 4 || hist[2].OtherRequests != 0 {
			t.Errorf("history: %+v", hist[:3])
		}
	})
}

// throughputOf reads the throughput of cc (or of its database if db) with
// the SDK and returns the manual throughput and the autoscale maximum.
func throughputOf(t *testing.T, read func(context.Context, *azcosmos.ThroughputOptions) (azcosmos.ThroughputResponse, error)) (manual, auto int32, err error) {
	t.Helper()
	r, err := read(t.Context(), nil)
	if err != nil {
		return 0, 0, err
	}
	if a, ok := r.ThroughputProperties.AutoscaleMaxThroughput(); ok {
		return 0, a, nil
	}
	m, _ := r.ThroughputProperties.ManualThroughput()
	return m, 0, nil
}

// TestSDKReadsAndReplacesThroughput reads the throughput with the SDK's
// ReadThroughput on a container and a database, for manual and autoscale
// throughput, after changes made by the model's methods and by the SDK's
// ReplaceThroughput; and checks the answers for throughput on databases,
// serverless accounts and a principal that may not read offers.
func TestSDKReadsAndReplacesThroughput(t *testing.T) {
	m, c := start(t, cosmosmodel.Options{ProvisionedRU: 4000, Partitions: 4})
	cc := setup(t, c, "db")
	db, _ := c.NewDatabase("db")
	if manual, auto, err := throughputOf(t, cc.ReadThroughput); err != nil || manual != 4000 || auto != 0 {
		t.Errorf("container: %d, %d, %v; want manual 4000", manual, auto, err)
	}
	if _, _, err := throughputOf(t, db.ReadThroughput); statusOf(err) != http.StatusNotFound {
		t.Errorf("database without throughput of its own: %v, want 404", err)
	}
	m.SetProvisionedRU(1000)
	if manual, _, err := throughputOf(t, cc.ReadThroughput); err != nil || manual != 1000 {
		t.Errorf("after SetProvisionedRU(1000): %d, %v", manual, err)
	}
	m.SetAutoscaleMaxRU(20000)
	r, err := cc.ReadThroughput(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := r.ThroughputProperties.AutoscaleMaxThroughput(); !ok || a != 20000 {
		t.Errorf("autoscale maximum %d, %v; want 20000", a, ok)
	}
	if cur, ok := r.ThroughputProperties.ManualThroughput(); !ok || cur != 2000 {
		t.Errorf("autoscale offer's throughput now %d, %v; want 2000 (10%% of the maximum, idle)", cur, ok)
	}
	if _, err := cc.ReplaceThroughput(t.Context(), azcosmos.NewManualThroughputProperties(700), nil); err != nil {
		t.Fatalf("ReplaceThroughput: %v", err)
	}
	if manual, auto := m.Throughput(); manual != 700 || auto != 0 {
		t.Errorf("after ReplaceThroughput(manual 700): %v, %v", manual, auto)
	}
	if _, err := cc.ReplaceThroughput(t.Context(), azcosmos.NewAutoscaleThroughputProperties(9000), nil); err != nil {
		t.Fatalf("ReplaceThroughput: %v", err)
	}
	if manual, auto := m.Throughput(); manual != 0 || auto != 9000 {
		t.Errorf("after ReplaceThroughput(autoscale 9000): %v, %v", manual, auto)
	}
	if st := m.Stats(); st.Requests != 0 || st.MetadataRequests == 0 {
		t.Errorf("throughput reads drew on the budget: %+v", st)
	}

	_, c2 := start(t, cosmosmodel.Options{ProvisionedRU: 800, DatabaseThroughput: true})
	cc2 := setup(t, c2, "shared")
	db2, _ := c2.NewDatabase("shared")
	if _, _, err := throughputOf(t, cc2.ReadThroughput); statusOf(err) != http.StatusNotFound {
		t.Errorf("container of a database with shared throughput: %v, want 404", err)
	}
	if manual, _, err := throughputOf(t, db2.ReadThroughput); err != nil || manual != 800 {
		t.Errorf("database with shared throughput: %d, %v; want 800", manual, err)
	}

	_, c3 := start(t, cosmosmodel.Options{ProvisionedRU: 800, Serverless: true})
	cc3 := setup(t, c3, "db")
	if _, _, err := throughputOf(t, cc3.ReadThroughput); statusOf(err) != http.StatusBadRequest {
		t.Errorf("serverless: %v, want 400", err)
	}

	_, c4 := start(t, cosmosmodel.Options{ProvisionedRU: 800, OffersForbidden: true})
	cc4 := setup(t, c4, "db")
	if _, _, err := throughputOf(t, cc4.ReadThroughput); statusOf(err) != http.StatusForbidden {
		t.Errorf("offers forbidden: %v, want 403", err)
	}

	_, c5 := start(t, cosmosmodel.Options{})
	cc5 := setup(t, c5, "db")
	if _, _, err := throughputOf(t, cc5.ReadThroughput); statusOf(err) != http.StatusNotFound {
		t.Errorf("unlimited: %v, want 404 (nothing provisioned)", err)
	}
}

// TestSDKPartitionsThrottleApart writes through the SDK to a hot partition
// key until it is throttled, and then to a key of another partition, which
// is served.
func TestSDKPartitionsThrottleApart(t *testing.T) {
	m, c := start(t, cosmosmodel.Options{ProvisionedRU: 200, Partitions: 4})
	cc := setup(t, c, "db")
	hot, cold := keyOn(m, 0), keyOn(m, 3)
	var err error
	for i := 0; i < 20 && err == nil; i++ { // 50 RU a second: the ninth write of a second is over
		_, err = cc.UpsertItem(t.Context(), azcosmos.NewPartitionKeyString(hot), item(fmt.Sprint("h", i), hot, 1024), nil)
	}
	if statusOf(err) != http.StatusTooManyRequests {
		t.Fatalf("20 writes to one partition of 50 RU/s: %v, want a 429", err)
	}
	if _, err := cc.UpsertItem(t.Context(), azcosmos.NewPartitionKeyString(cold), item("c", cold, 1024), nil); err != nil {
		t.Errorf("a write to another partition right after: %v", err)
	}
	if ps := m.PartitionStats(); ps[0].Throttled == 0 || ps[3].Throttled != 0 || ps[3].RU != 5.71 {
		t.Errorf("partition stats: %+v", ps)
	}
}

// TestSDKProxyReadsThroughput reads the throughput through the model in
// front of the real server, which has no offers of its own.
func TestSDKProxyReadsThroughput(t *testing.T) {
	addr := servicetest.Need(t, servicetest.Cosmos)
	u, err := url.Parse(addr)
	if err != nil {
		t.Fatal(err)
	}
	m, c := start(t, cosmosmodel.Options{Backend: u, AutoscaleMaxRU: 5000})
	db := fmt.Sprintf("cosmosmodel-offers-%d", time.Now().UnixNano())
	cc := setup(t, c, db)
	t.Cleanup(func() {
		d, _ := c.NewDatabase(db)
		d.Delete(context.Background(), nil)
	})
	if _, auto, err := throughputOf(t, cc.ReadThroughput); err != nil || auto != 5000 {
		t.Errorf("through the proxy: autoscale %d, %v; want 5000", auto, err)
	}
	m.SetProvisionedRU(1200)
	if manual, _, err := throughputOf(t, cc.ReadThroughput); err != nil || manual != 1200 {
		t.Errorf("through the proxy after a change: %d, %v; want 1200", manual, err)
	}
}
