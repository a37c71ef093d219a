package cosmosmodel_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/internal/servicetest"
)

// start starts a model and returns it with a client that surfaces 429s.
func start(t *testing.T, opts cosmosmodel.Options) (*cosmosmodel.Model, *azcosmos.Client) {
	t.Helper()
	m, err := cosmosmodel.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	c, err := m.NewClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, c
}

// setup creates database db with container "items" partitioned on /pk.
func setup(t *testing.T, c *azcosmos.Client, db string) *azcosmos.ContainerClient {
	t.Helper()
	ctx := t.Context()
	if _, err := c.CreateDatabase(ctx, azcosmos.DatabaseProperties{ID: db}, nil); err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	d, err := c.NewDatabase(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateContainer(ctx, azcosmos.ContainerProperties{ID: "items",
		PartitionKeyDefinition: azcosmos.PartitionKeyDefinition{Paths: []string{"/pk"}}}, nil); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	cc, err := d.NewContainer("items")
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// item returns a JSON document of about size bytes.
func item(id, pk string, size int) []byte {
	b, _ := json.Marshal(map[string]string{"id": id, "pk": pk, "pad": ""})
	pad := strings.Repeat("x", max(size-len(b), 0))
	b, _ = json.Marshal(map[string]string{"id": id, "pk": pk, "pad": pad})
	return b
}

func statusOf(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// roundTrip runs every call the model supports through the SDK and checks
// the answers and charges.
func roundTrip(t *testing.T, m *cosmosmodel.Model, cc *azcosmos.ContainerClient) {
	ctx := t.Context()
	pk := azcosmos.NewPartitionKeyString("p1")
	doc := item("a", "p1", 1024)

	r, err := cc.CreateItem(ctx, pk, doc, nil)
	if err != nil {
		t.Fatalf("CreateItem: %v", err)
	}
	if r.RequestCharge != 5.71 {
		t.Errorf("CreateItem of 1 KB charged %v RU, want 5.71", r.RequestCharge)
	}
	if _, err := cc.CreateItem(ctx, pk, doc, nil); statusOf(err) != http.StatusConflict {
		t.Errorf("CreateItem twice: %v, want 409", err)
	}
	if r, err = cc.UpsertItem(ctx, pk, item("b", "p1", 4096), nil); err != nil || r.RequestCharge != 7.03 {
		t.Errorf("UpsertItem of 4 KB: %v, charge %v, want 7.03", err, r.RequestCharge)
	}
	if _, err = cc.ReplaceItem(ctx, pk, "b", item("b", "p1", 2048), nil); err != nil {
		t.Errorf("ReplaceItem: %v", err)
	}
	if _, err = cc.ReplaceItem(ctx, pk, "nope", item("nope", "p1", 10), nil); statusOf(err) != http.StatusNotFound {
		t.Errorf("ReplaceItem of a missing item: %v, want 404", err)
	}
	r, err = cc.ReadItem(ctx, pk, "a", nil)
	if err != nil {
		t.Fatalf("ReadItem: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(r.Value, &got); err != nil || got["id"] != "a" || got["_etag"] == nil {
		t.Errorf("ReadItem: %s (%v)", r.Value, err)
	}
	if r.RequestCharge != 1 {
		t.Errorf("ReadItem of 1 KB charged %v, want 1", r.RequestCharge)
	}
	if _, err = cc.ReadItem(ctx, pk, "zz", nil); statusOf(err) != http.StatusNotFound {
		t.Errorf("ReadItem of a missing item: %v, want 404", err)
	}
	if _, err = cc.DeleteItem(ctx, pk, "a", nil); err != nil {
		t.Errorf("DeleteItem: %v", err)
	}

	b := cc.NewTransactionalBatch(pk)
	for i := range 10 {
		b.UpsertItem(item(fmt.Sprint("u", i), "p1", 1024), nil)
	}
	b.ReadItem("b", nil)
	br, err := cc.ExecuteTransactionalBatch(ctx, b, nil)
	if err != nil || !br.Success || len(br.OperationResults) != 11 {
		t.Fatalf("batch: %v, success %v, %d results", err, br.Success, len(br.OperationResults))
	}
	if br.RequestCharge < 57.1 || br.RequestCharge > 58.5 {
		t.Errorf("batch of 10 1 KB upserts and a 2 KB read charged %v, want 57.1 + about 1.1", br.RequestCharge)
	}
	for i, res := range br.OperationResults[:10] {
		if res.StatusCode != http.StatusCreated || res.RequestCharge != 5.71 {
			t.Errorf("batch result %d: %d %v RU, want 201 5.71", i, res.StatusCode, res.RequestCharge)
		}
	}
	if len(br.OperationResults[10].ResourceBody) == 0 {
		t.Errorf("batch read returned no body")
	}

	b = cc.NewTransactionalBatch(pk)
	b.UpsertItem(item("v", "p1", 100), nil)
	b.CreateItem(item("b", "p1", 100), nil) // exists: the batch fails
	br, err = cc.ExecuteTransactionalBatch(ctx, b, nil)
	if err != nil || br.Success || br.OperationResults[1].StatusCode != http.StatusConflict {
		t.Errorf("failing batch: %v, success %v, %+v", err, br.Success, br.OperationResults)
	}

	// Queries: every item of the partition, in pages, and a count.
	n := 0
	pager := cc.NewQueryItemsPager("SELECT * FROM c", pk, &azcosmos.QueryOptions{PageSizeHint: 4})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("query: %v", err)
		}
		if page.RequestCharge < cosmosmodel.QueryBaseCharge {
			t.Errorf("query page charged %v", page.RequestCharge)
		}
		n += len(page.Items)
	}
	count := cc.NewQueryItemsPager("SELECT VALUE COUNT(1) FROM c", azcosmos.NewPartitionKey(), nil)
	page, err := count.NextPage(ctx)
	if err != nil || len(page.Items) != 1 {
		t.Fatalf("count: %v, %d items", err, len(page.Items))
	}
	// b, u0-u9 (and v in proxy mode, where batches are not atomic)
	if n < 11 || string(page.Items[0]) != fmt.Sprint(n) {
		t.Errorf("query found %d items, count says %s; want 11 or 12 and the same", n, page.Items[0])
	}
}

// throttle checks the 429s the SDK sees, with and without its own retries.
func throttle(t *testing.T, m *cosmosmodel.Model, cc *azcosmos.ContainerClient, retrying *azcosmos.ContainerClient) {
	ctx := t.Context()
	pk := azcosmos.NewPartitionKeyString("p2")
	m.SetProvisionedRU(20) // three 1 KB writes a second
	defer m.SetProvisionedRU(0)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = cc.UpsertItem(ctx, pk, item(fmt.Sprint("t", i), "p2", 1024), nil)
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("10 writes at 20 RU/s: %v, want a 429", err)
	}
	h := re.RawResponse.Header
	after, _ := time.ParseDuration(h.Get("x-ms-retry-after-ms") + "ms")
	if after < time.Millisecond || after > time.Second || h.Get("x-ms-substatus") != "3200" || h.Get("x-ms-request-charge") != "0" {
		t.Errorf("429 headers: %v", h)
	}
	time.Sleep(after)
	if _, err := cc.UpsertItem(ctx, pk, item("t-after", "p2", 1024), nil); err != nil {
		t.Errorf("write after waiting %v: %v", after, err)
	}
	throttled := m.Stats().Throttled
	for i := range 5 {
		if _, err := retrying.UpsertItem(ctx, pk, item(fmt.Sprint("r", i), "p2", 1024), nil); err != nil {
			t.Errorf("write %d with the SDK's retries: %v", i, err)
		}
	}
	if m.Stats().Throttled == throttled {
		t.Errorf("5 writes at 20 RU/s with the SDK's retries met no 429")
	}
}

// retryingContainer is the container through a client that leaves 429s to
// the SDK's default retries.
func retryingContainer(t *testing.T, m *cosmosmodel.Model, db string) *azcosmos.ContainerClient {
	c, err := m.NewClient(&azcosmos.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := c.NewContainer(db, "items")
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

func TestSDKInMemory(t *testing.T) {
	m, c := start(t, cosmosmodel.Options{})
	cc := setup(t, c, "db")
	roundTrip(t, m, cc)
	items, err := m.Items("db", "items")
	if err != nil || len(items) != 11 {
		t.Fatalf("Items: %d, %v; want 11 (b, u0-u9)", len(items), err)
	}
	throttle(t, m, cc, retryingContainer(t, m, "db"))
}

func TestSDKProxy(t *testing.T) {
	addr := servicetest.Need(t, servicetest.Cosmos)
	u, err := url.Parse(addr)
	if err != nil {
		t.Fatal(err)
	}
	m, c := start(t, cosmosmodel.Options{Backend: u})
	db := fmt.Sprintf("cosmosmodel-%d", time.Now().UnixNano())
	cc := setup(t, c, db)
	t.Cleanup(func() {
		d, _ := c.NewDatabase(db)
		d.Delete(context.Background(), nil)
	})
	roundTrip(t, m, cc)
	throttle(t, m, cc, retryingContainer(t, m, db))
}

// TestConcurrentWritersNeverOverBudget writes from many goroutines at once:
// no second serves more than the provisioned RU, and every write lands once.
func TestConcurrentWritersNeverOverBudget(t *testing.T) {
	m, c := start(t, cosmosmodel.Options{ProvisionedRU: 300})
	cc := setup(t, c, "db")
	const writers, perWriter = 40, 3 // 685 RU: at least three seconds' worth
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range perWriter {
				pk := fmt.Sprint("p", w%7)
				for {
					_, err := cc.UpsertItem(t.Context(), azcosmos.NewPartitionKeyString(pk), item(fmt.Sprint(w, "-", i), pk, 1024), nil)
					var re *azcore.ResponseError
					if errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests {
						after, _ := time.ParseDuration(re.RawResponse.Header.Get("x-ms-retry-after-ms") + "ms")
						time.Sleep(after)
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	items, err := m.Items("db", "items")
	if err != nil || len(items) != writers*perWriter {
		t.Errorf("%d items (%v), want %d", len(items), err, writers*perWriter)
	}
	for _, s := range m.History() {
		if s.RU > 300 {
			t.Errorf("second %v served %v RU, over the 300 provisioned", s.At, s.RU)
		}
	}
	st := m.Stats()
	if want := float64(writers*perWriter) * 5.71; math.Abs(st.RU-want) > 0.001 || st.Throttled == 0 {
		t.Errorf("stats %+v: want %v RU and some 429s", st, want)
	}
}
