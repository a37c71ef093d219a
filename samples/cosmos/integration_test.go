package cosmos_test

// Integration tests: the Loader on the real azcosmos SDK, through the
// throttling model (internal/cosmosmodel) in front of the real local Cosmos
// DB API server. The model enforces the provisioned RU per second with 429s
// and reports Azure's charges; the server stores the documents, which the
// tests read back from it directly.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/samples/cosmos"
)

// env is a model in front of the real server, and a database of the test's
// own on the server, dropped at the end.
type env struct {
	model  *cosmosmodel.Model
	client *azcosmos.Client // through the model
	direct *azcosmos.Client // to the server, bypassing the model
	db     string
}

func newEnv(t *testing.T, provisioned float64) *env {
	t.Helper()
	addr := servicetest.Need(t, servicetest.Cosmos)
	backend, err := url.Parse(addr)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: provisioned, Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	client, err := m.NewClient(nil) // MaxRetries -1: 429s reach the Loader
	if err != nil {
		t.Fatal(err)
	}
	cred, err := azcosmos.NewKeyCredential(servicetest.CosmosKey)
	if err != nil {
		t.Fatal(err)
	}
	direct, err := azcosmos.NewClientWithKey(addr, cred, cosmos.ClientOptions(true))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{model: m, client: client, direct: direct, db: fmt.Sprintf("loadtest-%d", time.Now().UnixNano())}
	t.Cleanup(func() {
		if db, err := direct.NewDatabase(e.db); err == nil {
			db.Delete(context.Background(), nil)
		}
	})
	return e
}

// container creates a container with partition key /pk and returns a client
// for it through the model.
func (e *env) container(t *testing.T, name string) *azcosmos.ContainerClient {
	t.Helper()
	c, err := cosmos.CreateContainer(t.Context(), e.client, e.db, name, "/pk")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// items returns n documents of about 300 bytes over keys partition keys.
func items(n, keys int) []cosmos.Item {
	out := make([]cosmos.Item, n)
	for i := range out {
		id, pk := fmt.Sprintf("doc-%06d", i), fmt.Sprintf("tenant-%03d", i%keys)
		body := fmt.Sprintf(`{"id":%q,"pk":%q,"n":%d,"text":%q}`, id, pk, i, strings.Repeat("lorem ipsum ", 20))
		out[i] = cosmos.Item{ID: id, PartitionKey: pk, Body: []byte(body)}
	}
	return out
}

// checkStored reads the container back from the server itself and fails t
// unless it holds each of want exactly once, and nothing else.
func (e *env) checkStored(t *testing.T, container string, want []cosmos.Item) {
	t.Helper()
	c, err := e.direct.NewContainer(e.db, container)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, it := range want {
		keys[it.PartitionKey] = true
	}
	seen := map[string]int{}
	for pk := range keys {
		// The local server ignores the partition key of a query: say it in
		// the WHERE clause.
		q := azcosmos.QueryOptions{QueryParameters: []azcosmos.QueryParameter{{Name: "@pk", Value: pk}}}
		p := c.NewQueryItemsPager("SELECT c.id FROM c WHERE c.pk = @pk", azcosmos.NewPartitionKeyString(pk), &q)
		for p.More() {
			page, err := p.NextPage(t.Context())
			if err != nil {
				t.Fatalf("reading back partition %s: %v", pk, err)
			}
			for _, raw := range page.Items {
				var d struct{ ID string }
				if err := json.Unmarshal(raw, &d); err != nil {
					t.Fatal(err)
				}
				seen[d.ID]++
			}
		}
	}
	missing, twice := 0, 0
	for _, it := range want {
		switch seen[it.ID] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	if missing > 0 || twice > 0 || len(seen) != len(want) {
		t.Errorf("the server holds %d documents of %d: %d missing, %d more than once", len(seen), len(want), missing, twice)
	}
}

// checkSeconds fails t if the model served more than provisioned RU in any
// second, and returns the peak.
func (e *env) checkSeconds(t *testing.T, provisioned float64) float64 {
	t.Helper()
	peak := 0.0
	for _, s := range e.model.History() {
		peak = max(peak, s.RU)
		if s.RU > provisioned+1e-6 {
			t.Errorf("second %v served %.2f RU, over the provisioned %.0f", s.At, s.RU, provisioned)
		}
	}
	return peak
}

// stalls measures how late the process runs: a goroutine that wakes every
// 5ms and records the longest delay past its time. Requests that wait in a
// stalled process reach the service later than the Batcher released them,
// next to the releases made once it runs again.
type stalls struct {
	mu    sync.Mutex
	worst time.Duration
	stop  chan struct{}
	done  chan struct{}
}

func startStalls() *stalls {
	s := &stalls{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		const every = 5 * time.Millisecond
		for {
			t0 := time.Now()
			select {
			case <-s.stop:
				return
			case <-time.After(every):
			}
			if late := time.Since(t0) - every; late > 0 {
				s.mu.Lock()
				s.worst = max(s.worst, late)
				s.mu.Unlock()
			}
		}
	}()
	return s
}

// end stops the measure and returns the worst delay.
func (s *stalls) end() time.Duration {
	close(s.stop)
	<-s.done
	return s.worst
}

// tolerance is the longest stall the Loader's default margin absorbs: the
// requests held up in a stalled process reach the service together with
// those released once it runs again, and the margin leaves room for
// DefaultMargin seconds of them. Over it, 429s are to be expected whatever
// the client does, and the tests report them rather than fail.
const tolerance = time.Duration(cosmos.DefaultMargin * float64(time.Second))

// A run is what load measured.
type run struct {
	l     *cosmos.Loader
	took  time.Duration
	snap  cosmos.Stats  // the Loader's Stats at the snap time
	stall time.Duration // the longest the process stalled
}

// load loads its items through a Batcher limited by lim, taking a snapshot
// of the Loader's Stats at snap after the start.
func load(t *testing.T, c *azcosmos.ContainerClient, lim batcher.RateLimiter, its []cosmos.Item, snap time.Duration) run {
	t.Helper()
	b := batcher.NewBatcher().WithRateLimiter(lim).WithBufferSize(len(its) + 1)
	if a, ok := lim.(*ratelimiter.Adaptive); ok {
		b.AddListener(a.Observe)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := run{l: cosmos.NewLoader(c, b)}
	var (
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		select {
		case <-time.After(snap):
			r.snap = r.l.Stats()
		case <-done:
		}
	})
	st := startStalls()
	t0 := time.Now()
	err := r.l.LoadAll(t.Context(), slices.Values(its))
	r.took = time.Since(t0)
	r.stall = st.end()
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatalf("LoadAll: %v", err)
	}
	if err := b.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	return r
}

func TestIntegrationLoadWithinProvisioned(t *testing.T) {
	// The limiter grants what is provisioned: every document once, no
	// second over it, and not one 429.
	const provisioned, n, keys = 2400, 2000, 10
	e := newEnv(t, provisioned)
	c := e.container(t, "orders")
	its := items(n, keys)
	r := load(t, c, ratelimiter.NewProvisioned(provisioned), its, time.Hour)
	e.checkStored(t, "orders", its)
	peak := e.checkSeconds(t, provisioned)
	st, ms := r.l.Stats(), e.model.Stats()
	t.Logf("%d items in %v: %d requests (%d transactional batches), %.0f RU, %.0f RU/s; model: peak second %.2f RU of %d, %d requests, %d throttled; worst stall %v",
		n, r.took.Round(time.Millisecond), st.Requests, st.Batches, st.RU, st.RU/r.took.Seconds(), peak, provisioned, ms.Requests, ms.Throttled, r.stall.Round(time.Millisecond))
	switch {
	case st.Throttled == 0 && ms.Throttled == 0:
	case r.stall > tolerance:
		t.Logf("%d requests were answered 429, after the process stalled for %v, longer than the %v the margin absorbs: not counted as a failure",
			st.Throttled, r.stall.Round(time.Millisecond), tolerance)
	default:
		t.Errorf("%d requests were answered 429 (model: %d), want none", st.Throttled, ms.Throttled)
		for _, s := range e.model.History() {
			t.Logf("second %v: %.2f RU, %d requests, %d throttled", s.At, s.RU, s.Requests, s.Throttled)
		}
	}
	if st.Written != n {
		t.Errorf("Stats().Written = %d, want %d", st.Written, n)
	}
}

func TestIntegrationLoadAdaptsToAForeignWriter(t *testing.T) {
	// Another service writes foreignRU a second into the same account; the
	// loader, with an adaptive limiter over the provisioned throughput,
	// settles under what is left: under 1% of its requests get 429 after
	// the first 5 seconds, and it still loads everything.
	const provisioned, foreignRU, n, keys = 2400, 1000, 3000, 10
	e := newEnv(t, provisioned)
	c := e.container(t, "orders")
	fc := e.container(t, "foreign")

	ctx, stop := context.WithCancel(t.Context())
	var fw sync.WaitGroup
	var (
		fmu                              sync.Mutex
		foreignWritten, foreignThrottled int
	)
	fw.Go(func() {
		// Every 50ms, a twentieth of foreignRU in small upserts sent at
		// once, ignoring 429s.
		perTick := int(foreignRU/20/cosmosmodel.WriteCharge(300) + 0.5)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var wg sync.WaitGroup
			for range perTick {
				id := fmt.Sprintf("f-%d", i)
				i++
				wg.Go(func() {
					body := fmt.Sprintf(`{"id":%q,"pk":"f","text":%q}`, id, strings.Repeat("x", 250))
					_, err := fc.UpsertItem(ctx, azcosmos.NewPartitionKeyString("f"), []byte(body), nil)
					fmu.Lock()
					defer fmu.Unlock()
					if err != nil {
						foreignThrottled++
					} else {
						foreignWritten++
					}
				})
			}
			wg.Wait()
		}
	})
	time.Sleep(time.Second) // the foreign writer is there first
	its := items(n, keys)
	lim := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(provisioned))
	var evMu sync.Mutex
	var caps []int
	lim.AddListener(func(ev batcher.Event) {
		if ev.Kind == batcher.CapacityChanged {
			evMu.Lock()
			caps = append(caps, ev.Val)
			evMu.Unlock()
		}
	})
	r := load(t, c, lim, its, 5*time.Second)
	l, took, at5 := r.l, r.took, r.snap
	stop()
	fw.Wait()

	e.checkStored(t, "orders", its)
	peak := e.checkSeconds(t, provisioned)
	st := l.Stats()
	late := float64(st.Throttled-at5.Throttled) / float64(max(1, st.Requests-at5.Requests))
	evMu.Lock()
	t.Logf("%d items in %v: %d requests, %d answered 429 (%d in the first 5s): %.2f%% after 5s; %.0f RU/s; model: peak second %.2f RU of %d; foreign writer: %d written, %d refused; capacity went %v; worst stall %v",
		n, took.Round(time.Millisecond), st.Requests, st.Throttled, at5.Throttled, 100*late, st.RU/took.Seconds(), peak, provisioned, foreignWritten, foreignThrottled, caps, r.stall.Round(time.Millisecond))
	evMu.Unlock()
	if late >= 0.01 && r.stall > tolerance {
		t.Logf("%.2f%% of the loader's requests after the first 5s were answered 429, after the process stalled for %v, longer than the %v the margin absorbs: not counted as a failure",
			100*late, r.stall.Round(time.Millisecond), tolerance)
	} else if late >= 0.01 {
		t.Errorf("%.2f%% of the loader's requests after the first 5s were answered 429, want under 1%%", 100*late)
	}
	if st.Written != n {
		t.Errorf("Stats().Written = %d, want %d", st.Written, n)
	}
}
