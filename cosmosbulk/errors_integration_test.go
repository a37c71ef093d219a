package cosmosbulk_test

// The error classes against the real Cosmos DB API server
// (@vercel/cosmosdb-server on 127.0.0.1:8081, started by
// scripts/services.sh), without the model in between: each answer the
// server gives, classified, and what the Loader does with it.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/ratelimiter"
)

// realServer returns a client of the real server (429s left to the
// caller) and a new database's name, deleted at the test's end.
func realServer(t *testing.T) (*azcosmos.Client, string) {
	t.Helper()
	addr := servicetest.Need(t, servicetest.Cosmos)
	cred, err := azcosmos.NewKeyCredential(servicetest.CosmosKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := azcosmos.NewClientWithKey(addr, cred, cosmosbulk.ClientOptions(true))
	if err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("cosmosbulk-errors-%d", time.Now().UnixNano())
	t.Cleanup(func() {
		if d, err := c.NewDatabase(db); err == nil {
			d.Delete(context.Background(), nil)
		}
	})
	return c, db
}

func TestIntegrationErrorClasses(t *testing.T) {
	client, db := realServer(t)
	ctx := t.Context()
	cc, err := cosmosbulk.CreateContainer(ctx, client, db, "c", "/pk")
	if err != nil {
		t.Fatal(err)
	}
	pk := azcosmos.NewPartitionKeyString("p")
	if _, err := cc.CreateItem(ctx, pk, []byte(`{"id":"a","pk":"p"}`), nil); err != nil {
		t.Fatal(err)
	}
	missing, _ := client.NewContainer(db, "nope")
	_, errConflict := cc.CreateItem(ctx, pk, []byte(`{"id":"a","pk":"p"}`), nil)
	_, errNoID := cc.UpsertItem(ctx, pk, []byte(`{"pk":"p"}`), nil)
	_, errMissing := missing.UpsertItem(ctx, pk, []byte(`{"id":"a","pk":"p"}`), nil)
	_, errNotJSON := cc.UpsertItem(ctx, pk, []byte(`not json`), nil) // this server answers 500
	cred, _ := azcosmos.NewKeyCredential(servicetest.CosmosKey)
	closed, _ := azcosmos.NewClientWithKey("https://127.0.0.1:1/", cred, cosmosbulk.ClientOptions(true))
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, errRefused := closed.CreateDatabase(cctx, azcosmos.DatabaseProperties{ID: "x"}, nil)
	cancel()
	for _, c := range []struct {
		name   string
		err    error
		status int
		want   cosmosbulk.Class
	}{
		{"create of an existing id", errConflict, http.StatusConflict, cosmosbulk.Permanent},
		{"document without an id", errNoID, http.StatusBadRequest, cosmosbulk.Permanent},
		{"container that does not exist", errMissing, http.StatusNotFound, cosmosbulk.Permanent},
		{"server error", errNotJSON, http.StatusInternalServerError, cosmosbulk.Transient},
		{"connection refused", errRefused, 0, cosmosbulk.Transient},
	} {
		if got := cosmosbulk.Classify(c.err); got != c.want || cosmosbulk.StatusCode(c.err) != c.status {
			t.Errorf("%s: %v: class %v, status %d; want %v, %d", c.name, c.err, got, cosmosbulk.StatusCode(c.err), c.want, c.status)
		}
	}
}

// TestIntegrationLoaderFailsPermanentErrorsAtOnce loads through the Loader
// into the real server: permanent refusals fail their item at its first
// attempt with an *ItemError, a server error is retried until the attempts
// run out, and the good items are written.
func TestIntegrationLoaderFailsPermanentErrorsAtOnce(t *testing.T) {
	client, db := realServer(t)
	ctx := t.Context()
	cc, err := cosmosbulk.CreateContainer(ctx, client, db, "c", "/pk")
	if err != nil {
		t.Fatal(err)
	}
	b := batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(100000))
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l := cosmosbulk.NewLoader(cc, b).WithMaxAttempts(3)
	good := items(50, 5)
	bad := map[string]cosmosbulk.Item{
		"no-id":    {ID: "no-id", PartitionKey: "solo-1", Body: []byte(`{"pk":"solo-1"}`)},
		"not-json": {ID: "not-json", PartitionKey: "solo-2", Body: []byte(`not json`)},
	}
	var ops []*cosmosbulk.Write
	for _, it := range append(slices.Clone(good), bad["no-id"], bad["not-json"]) {
		op, err := l.Load(ctx, it)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op)
	}
	for _, op := range ops {
		it := op.Item()
		err := op.Wait(ctx)
		var ie *cosmosbulk.ItemError
		switch it.ID {
		case "no-id":
			if !errors.As(err, &ie) || ie.StatusCode != 400 || ie.Class != cosmosbulk.Permanent || op.Operation().Attempt() != 1 {
				t.Errorf("no-id: %v after %d attempts; want a permanent 400 at the first", err, op.Operation().Attempt())
			}
		case "not-json":
			if !errors.Is(err, batcher.ErrTooManyAttempts) || !errors.As(err, &ie) || ie.Class != cosmosbulk.Transient || op.Operation().Attempt() != 3 {
				t.Errorf("not-json: %v after %d attempts; want the server's 500 retried 3 times", err, op.Operation().Attempt())
			}
		default:
			if err != nil {
				t.Errorf("%s: %v", it.ID, err)
			}
		}
	}
	missing, _ := client.NewContainer(db, "nope")
	lm := cosmosbulk.NewLoader(missing, b)
	err = lm.LoadAll(ctx, slices.Values(good[:3]))
	var ie *cosmosbulk.ItemError
	if !errors.As(err, &ie) || ie.StatusCode != http.StatusNotFound || lm.Stats().Requests > 3 {
		t.Errorf("into a missing container: %v after %d requests; want 404s, one request an item at most", err, lm.Stats().Requests)
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Written != int64(len(good)) || st.Failed != 1 || st.Retried < 3 {
		t.Errorf("Stats() = %+v; want %d written, 1 failed for good, the 500 retried", st, len(good))
	}
}

// TestIntegrationThroughputOfAServerWithoutOffers reads the throughput of
// the real server, which has no offers (it answers 400, as a serverless
// account does): ReadThroughput says ErrNoThroughput, and a limiter starts
// on its fallback, or not at all without one.
func TestIntegrationThroughputOfAServerWithoutOffers(t *testing.T) {
	client, db := realServer(t)
	if _, err := cosmosbulk.CreateContainer(t.Context(), client, db, "c", "/pk"); err != nil {
		t.Fatal(err)
	}
	_, err := cosmosbulk.ReadThroughput(t.Context(), client, db, "c")
	if !errors.Is(err, cosmosbulk.ErrNoThroughput) {
		t.Fatalf("ReadThroughput: %v; want ErrNoThroughput", err)
	}
	b := batcher.NewBatcher().WithRateLimiter(cosmosbulk.NewContainerThroughputLimiter(client, db, "c").WithCeiling(1000))
	if err := b.Start(t.Context()); !errors.Is(err, cosmosbulk.ErrNoThroughput) {
		t.Errorf("a Batcher on a limiter without a fallback started: %v", err)
	}
	lim := cosmosbulk.NewContainerThroughputLimiter(client, db, "c").WithCeiling(1000).WithFallback(400)
	b = batcher.NewBatcher().WithRateLimiter(lim)
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	if lim.Capacity() != 400 {
		t.Errorf("capacity %d, want the fallback 400", lim.Capacity())
	}
}
