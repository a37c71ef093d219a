package cosmosbulk_test

// Capacity discovery on the real azcosmos SDK, against the throttling
// model's in-memory mode (which serves the SDK's throughput reads).

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
)

// model starts a model with opts and returns it with a client (429s left
// to the caller) and a container "db"/"c" partitioned on /pk.
func model(t *testing.T, opts cosmosmodel.Options) (*cosmosmodel.Model, *azcosmos.Client, *azcosmos.ContainerClient) {
	t.Helper()
	m, err := cosmosmodel.New(opts)
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
	return m, client, c
}

func TestSDKReadThroughput(t *testing.T) {
	for _, c := range []struct {
		name string
		opts cosmosmodel.Options
		want cosmosbulk.Throughput
		is   error
	}{
		{"manual", cosmosmodel.Options{ProvisionedRU: 10000}, cosmosbulk.Throughput{ManualRU: 10000}, nil},
		{"autoscale", cosmosmodel.Options{AutoscaleMaxRU: 20000}, cosmosbulk.Throughput{AutoscaleMaxRU: 20000}, nil},
		{"shared by the database", cosmosmodel.Options{ProvisionedRU: 4000, DatabaseThroughput: true}, cosmosbulk.Throughput{ManualRU: 4000, Database: true}, nil},
		{"serverless", cosmosmodel.Options{ProvisionedRU: 4000, Serverless: true}, cosmosbulk.Throughput{}, cosmosbulk.ErrNoThroughput},
		{"forbidden", cosmosmodel.Options{ProvisionedRU: 4000, OffersForbidden: true}, cosmosbulk.Throughput{}, cosmosbulk.ErrThroughputForbidden},
		{"nothing provisioned", cosmosmodel.Options{}, cosmosbulk.Throughput{}, cosmosbulk.ErrNoThroughput},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, client, _ := model(t, c.opts)
			got, err := cosmosbulk.ReadThroughput(t.Context(), client, "db", "c")
			if got != c.want || !errors.Is(err, c.is) || (c.is == nil) != (err == nil) {
				t.Errorf("ReadThroughput = %+v, %v; want %+v, %v", got, err, c.want, c.is)
			}
		})
	}
	t.Run("no such container", func(t *testing.T) {
		_, client, _ := model(t, cosmosmodel.Options{ProvisionedRU: 400})
		_, err := cosmosbulk.ReadThroughput(t.Context(), client, "db", "nope")
		if err == nil || errors.Is(err, cosmosbulk.ErrNoThroughput) || cosmosbulk.StatusCode(err) != http.StatusNotFound || cosmosbulk.Classify(err) != cosmosbulk.Permanent {
			t.Errorf("ReadThroughput of a missing container = %v; want the container's own 404, permanent", err)
		}
	})
}

// TestSDKThroughputLimiterFollowsChanges is scenario S7: the capacity is
// read at Start (within a second), and a change of the throughput, manual
// 10,000 to autoscale up to 20,000, is followed within one refresh
// interval.
func TestSDKThroughputLimiterFollowsChanges(t *testing.T) {
	m, client, _ := model(t, cosmosmodel.Options{ProvisionedRU: 10000, Partitions: 4})
	const interval = 300 * time.Millisecond
	lim := cosmosbulk.NewContainerThroughputLimiter(client, "db", "c").WithCeiling(50000).WithRefreshInterval(interval)
	changed := make(chan batcher.Event, 16)
	lim.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.CapacityChanged {
			changed <- e
		}
	})
	b := batcher.NewBatcher().WithRateLimiter(lim)
	t0 := time.Now()
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	took := time.Since(t0)
	if c := lim.Capacity(); c != 10000 {
		t.Fatalf("capacity %d after Start, want 10000", c)
	}
	t.Logf("capacity read in %v", took)
	if took > 5*time.Second { // within 1 s on a quiet machine; loose for a loaded one
		t.Errorf("Start took %v to read the throughput", took)
	}
	<-changed
	m.SetAutoscaleMaxRU(20000)
	t1 := time.Now()
	select {
	case e := <-changed:
		d := time.Since(t1)
		t.Logf("change followed in %v: %v", d, e)
		if e.Val != 20000 {
			t.Errorf("new capacity %d, want 20000", e.Val)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no capacity change 30s after the throughput changed (refresh interval %v)", interval)
	}
}
