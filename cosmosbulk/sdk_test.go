package cosmosbulk_test

// Tests of the Loader on the real azcosmos SDK against the throttling model
// in its in-memory mode: no service needed, so they always run. They check
// what the fake container of loader_test.go cannot: the SDK's requests and
// answers (transactional batches, 207s with 424s, 400s, 429s with their
// retry-after), as the Loader reads them.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/ratelimiter"
)

// memoryModel starts an in-memory model and returns it with a container
// "db"/"c" partitioned on /pk.
func memoryModel(t *testing.T, provisioned float64) (*cosmosmodel.Model, *azcosmos.ContainerClient) {
	t.Helper()
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: provisioned})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	client, err := m.NewClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cosmosbulk.CreateContainer(t.Context(), client, "db", "c", "/pk")
	if err != nil {
		t.Fatal(err)
	}
	return m, c
}

// storedIDs returns how many times each id is stored in the model.
func storedIDs(t *testing.T, m *cosmosmodel.Model) map[string]int {
	t.Helper()
	docs, err := m.Items("db", "c")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, d := range docs {
		var v struct{ ID string }
		if err := json.Unmarshal(d, &v); err != nil {
			t.Fatal(err)
		}
		seen[v.ID]++
	}
	return seen
}

func TestSDKLoadsAndReportsBadItems(t *testing.T) {
	// Good items over 5 partition keys, and two the service refuses: one in
	// a transactional batch (its neighbours come back 424 and must still be
	// written), one whose partition key differs from its document's.
	m, c := memoryModel(t, 0)
	good := items(1000, 5)
	bad := []cosmosbulk.Item{
		{ID: "bad/1", PartitionKey: "tenant-000", Body: []byte(`{"id":"bad/1","pk":"tenant-000"}`)},
		{ID: "bad-2", PartitionKey: "tenant-001", Body: []byte(`{"id":"bad-2","pk":"elsewhere"}`)},
	}
	all := append(slices.Clone(good[:500]), bad[0])
	all = append(all, good[500:]...)
	all = append(all, bad[1])

	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(100000))
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l := cosmosbulk.NewLoader(c, b)
	err := l.LoadAll(t.Context(), slices.Values(all))
	for _, id := range []string{`item "bad/1"`, `item "bad-2"`, "400 Bad Request"} {
		if err == nil || !strings.Contains(err.Error(), id) {
			t.Errorf("LoadAll = %v, want an error naming %s", err, id)
		}
	}
	if err := b.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	seen := storedIDs(t, m)
	for _, it := range good {
		if seen[it.ID] != 1 {
			t.Errorf("%s stored %d times, want once", it.ID, seen[it.ID])
		}
	}
	if len(seen) != len(good) {
		t.Errorf("%d documents stored, want %d", len(seen), len(good))
	}
	st := l.Stats()
	t.Logf("%+v; model %+v", st, m.Stats())
	if st.Written != int64(len(good)) || st.Failed != 2 || st.Batches == 0 {
		t.Errorf("Stats() = %+v, want %d written, 2 failed, transactional batches", st, len(good))
	}
	if bs := b.Stats(); bs.Succeeded != int64(len(good)) || bs.Failed != 2 {
		t.Errorf("Batcher Stats() = %+v, want %d succeeded and 2 failed", bs, len(good))
	}
	// The charges are the model's: 5.71 RU per small document written, 1
	// per failed write (a 207 batch charges its failed operation).
	if ms := m.Stats(); st.RU < 5.71*float64(len(good)) || st.RU > ms.RU+0.01 {
		t.Errorf("Stats().RU = %.2f, want at least %.2f and at most the model's %.2f", st.RU, 5.71*float64(len(good)), ms.RU)
	}
}

func TestSDKThrottlesAreRetriedAfterTheirRetryAfter(t *testing.T) {
	// A limiter ten times the provisioned throughput: the model answers
	// 429s, the Loader turns them into throttles with the model's
	// retry-after, the Batcher pauses and retries, and everything is
	// written once.
	const provisioned = 200
	m, c := memoryModel(t, provisioned)
	its := items(60, 3)
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(10 * provisioned))
	var (
		mu     sync.Mutex
		pauses []time.Duration
	)
	b.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.Throttled {
			mu.Lock()
			pauses = append(pauses, e.Duration)
			mu.Unlock()
		}
	})
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l := cosmosbulk.NewLoader(c, b).WithMargin(0)
	t0 := time.Now()
	if err := l.LoadAll(t.Context(), slices.Values(its)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if err := b.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	seen := storedIDs(t, m)
	for _, it := range its {
		if seen[it.ID] != 1 {
			t.Errorf("%s stored %d times, want once", it.ID, seen[it.ID])
		}
	}
	st, ms := l.Stats(), m.Stats()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d items in %v: %+v; model: %d requests, %d throttled, peak %.2f RU; pauses %v", len(its), took, st, ms.Requests, ms.Throttled, ms.PeakRU, pauses)
	if st.Throttled == 0 || st.Throttled != ms.Throttled {
		t.Errorf("the Loader counted %d 429s, the model answered %d; want the same, and some", st.Throttled, ms.Throttled)
	}
	if len(pauses) == 0 {
		t.Fatal("the Batcher saw no throttle")
	}
	for _, d := range pauses {
		// The model asks for the time to its next second: up to 1s; the
		// Batcher pauses at least that long, and at least its PauseTime.
		if d <= 0 || d > 30*time.Second {
			t.Errorf("a throttle paused for %v", d)
		}
	}
	// 60 documents of 5.71 RU at 200 RU/s span at least 2 seconds.
	if want := time.Duration(float64(time.Second) * (float64(len(its))*5.71/provisioned - 1)); took < want {
		t.Errorf("took %v, less than the %v the provisioned throughput allows", took, want)
	}
	if ms.PeakRU > provisioned {
		t.Errorf("the model served %.2f RU in one second, over %d", ms.PeakRU, provisioned)
	}
}

// items returns n small documents over keys partition keys.
func items(n, keys int) []cosmosbulk.Item {
	out := make([]cosmosbulk.Item, n)
	for i := range out {
		id, pk := fmt.Sprintf("doc-%06d", i), fmt.Sprintf("tenant-%03d", i%keys)
		body := fmt.Sprintf(`{"id":%q,"pk":%q,"n":%d,"text":%q}`, id, pk, i, strings.Repeat("lorem ipsum ", 20))
		out[i] = cosmosbulk.Item{ID: id, PartitionKey: pk, Body: []byte(body)}
	}
	return out
}
