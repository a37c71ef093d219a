package cosmosbulk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/releases"
	"github.com/ratebatch/batcher/ratelimiter"
)

// fakeStore is an in-memory container. It charges each write as Cosmos DB
// does (about EstimateRU, unrounded), answers 429 beyond provisioned RU in a
// fixed one-second window, as the service does, and lets a test make
// chosen writes fail.
type fakeStore struct {
	provisioned float64 // RU per second; 0 means unlimited
	latency     time.Duration
	// fail, if set, may return an error for a write of the document id, at
	// its nth try (from 1).
	fail func(id string, n int) error
	// rangeOf, if set, names the partition key range of each answer.
	rangeOf func(pk string) string

	mu       sync.Mutex
	docs     map[string]int // id -> times written
	tries    map[string]int
	second   int64   // the current fixed second
	ru       float64 // RU served in it
	served   releases.Log
	calls    []string // "upsert pk" or "batch pk n"
	requests int
	refused  int
}

func newFakeStore(provisioned float64) *fakeStore {
	return &fakeStore{provisioned: provisioned, docs: map[string]int{}, tries: map[string]int{}}
}

func chargeOf(body []byte) float64 {
	return 5.71 + 0.44*(math.Max(1, float64(len(body))/1024)-1)
}

func docID(body []byte) string {
	var d struct{ ID string }
	json.Unmarshal(body, &d)
	return d.ID
}

func throttleErr(after time.Duration) error {
	h := http.Header{}
	h.Set("x-ms-retry-after-ms", strconv.FormatInt(after.Milliseconds(), 10))
	h.Set("x-ms-request-charge", "0")
	return &azcore.ResponseError{StatusCode: http.StatusTooManyRequests, ErrorCode: "TooManyRequests",
		RawResponse: &http.Response{StatusCode: http.StatusTooManyRequests, Header: h}}
}

func statusErr(code int) error {
	h := http.Header{}
	h.Set("x-ms-request-charge", "1")
	return &azcore.ResponseError{StatusCode: code, RawResponse: &http.Response{StatusCode: code, Header: h}}
}

// admitLocked charges ru to the current second, or says how long until the
// next one if it would go over.
func (s *fakeStore) admitLocked(ru float64) (time.Duration, bool) {
	now := time.Now()
	sec := now.UnixNano() / int64(time.Second)
	if sec != s.second {
		s.second, s.ru = sec, 0
	}
	s.requests++
	if s.provisioned > 0 && s.ru > 0 && s.ru+ru > s.provisioned+1e-9 {
		s.refused++
		return time.Unix(sec+1, 0).Sub(now), false
	}
	s.ru += ru
	s.served.AddAt(now, int(math.Round(ru*100)))
	return 0, true
}

func (s *fakeStore) sleep(ctx context.Context) error {
	if s.latency == 0 {
		return nil
	}
	t := time.NewTimer(s.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *fakeStore) upsert(ctx context.Context, pk string, body []byte) (float64, string, error) {
	if err := s.sleep(ctx); err != nil {
		return 0, "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, "upsert "+pk)
	id := docID(body)
	c := chargeOf(body)
	if after, ok := s.admitLocked(c); !ok {
		return 0, "", throttleErr(after)
	}
	s.tries[id]++
	if s.fail != nil {
		if err := s.fail(id, s.tries[id]); err != nil {
			if StatusCode(err) == 0 {
				return 0, "", err // no answer
			}
			return 1, s.rangeID(pk), err
		}
	}
	s.docs[id]++
	return math.Round(c*100) / 100, s.rangeID(pk), nil
}

func (s *fakeStore) rangeID(pk string) string {
	if s.rangeOf == nil {
		return ""
	}
	return s.rangeOf(pk)
}

func (s *fakeStore) batch(ctx context.Context, pk string, bodies [][]byte) (batchResult, error) {
	if err := s.sleep(ctx); err != nil {
		return batchResult{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, fmt.Sprintf("batch %s %d", pk, len(bodies)))
	total := 0.0
	for _, b := range bodies {
		total += chargeOf(b)
	}
	if after, ok := s.admitLocked(total); !ok {
		return batchResult{}, throttleErr(after)
	}
	r := batchResult{rangeID: s.rangeID(pk), success: true, ops: make([]opResult, len(bodies))}
	failedAt := -1
	for i, b := range bodies {
		id := docID(b)
		s.tries[id]++
		if s.fail != nil && failedAt < 0 {
			if err := s.fail(id, s.tries[id]); err != nil {
				var re *azcore.ResponseError
				if !errors.As(err, &re) || re.StatusCode == http.StatusTooManyRequests {
					return batchResult{}, err // the request as a whole, as the service throttles a batch
				}
				failedAt = i
				r.ops[i] = opResult{status: int32(re.StatusCode), charge: 1}
			}
		}
	}
	if failedAt >= 0 {
		// Atomic: nothing is written; the others fail as dependencies.
		r.success = false
		for i := range r.ops {
			if i != failedAt {
				r.ops[i] = opResult{status: http.StatusFailedDependency}
			}
		}
		r.charge = 1
		return r, nil
	}
	for i, b := range bodies {
		s.docs[docID(b)]++
		c := math.Round(chargeOf(b)*100) / 100
		r.ops[i] = opResult{status: http.StatusCreated, charge: c}
		r.charge += c
	}
	return r, nil
}

func (s *fakeStore) callList() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// checkOnce fails t unless each of ids was written exactly once, and
// nothing else.
func (s *fakeStore) checkOnce(t *testing.T, ids []string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if n := s.docs[id]; n != 1 {
			t.Errorf("document %q written %d times, want once", id, n)
		}
	}
	if len(s.docs) != len(ids) {
		t.Errorf("%d documents written, want %d", len(s.docs), len(ids))
	}
}

func item(i int, pk string, pad int) Item {
	id := "item-" + strconv.Itoa(i)
	body := fmt.Sprintf(`{"id":%q,"pk":%q,"pad":%q}`, id, pk, strings.Repeat("x", pad))
	return Item{ID: id, PartitionKey: pk, Body: []byte(body)}
}

func ids(items []Item) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.ID)
	}
	return out
}

// start starts a Batcher with lim inside a bubble, closed at the test's end.
func start(t *testing.T, lim batcher.RateLimiter) *batcher.Batcher {
	t.Helper()
	b := batcher.NewBatcher().WithRateLimiter(lim).WithBufferSize(50000)
	if a, ok := lim.(*ratelimiter.Adaptive); ok {
		b.AddListener(a.Observe)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestEstimateRU(t *testing.T) {
	for _, c := range []struct{ size, want int }{
		{0, 6}, {100, 6}, {1024, 6}, {2048, 7}, {4096, 8}, {10240, 10}, {100 * 1024, 50}, {2 << 20, 907},
	} {
		if got := EstimateRU(c.size); got != c.want {
			t.Errorf("EstimateRU(%d) = %d, want %d", c.size, got, c.want)
		}
	}
}

func TestProcessBatchGroupsByPartitionKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeStore(0)
		b := start(t, ratelimiter.NewProvisioned(10000))
		// Without range lanes, nothing is held for a key's first write to
		// learn its range (see TestRangesRouteKeys).
		l := newLoader(s, b).WithRangeLanes(false)
		var items []Item
		for i, pk := range []string{"a", "b", "a", "c", "a", "c"} {
			items = append(items, item(i, pk, 10))
		}
		// Enqueued at once, they go out in one batch at the first flush.
		if err := l.LoadAll(t.Context(), slices.Values(items)); err != nil {
			t.Fatal(err)
		}
		got := s.callList()
		slices.Sort(got)
		want := []string{"batch a 3", "batch c 2", "upsert b"}
		if !slices.Equal(got, want) {
			t.Errorf("requests %v, want %v", got, want)
		}
		s.checkOnce(t, ids(items))
		st := l.Stats()
		if st.Written != 6 || st.Requests != 3 || st.Batches != 2 || st.Throttled != 0 {
			t.Errorf("Stats() = %+v, want 6 written in 3 requests, 2 of them batches", st)
		}
		if want := 6 * 5.71; math.Abs(st.RU-want) > 0.001 {
			t.Errorf("Stats().RU = %v, want %v", st.RU, want)
		}
	})
}

func TestFitBatch(t *testing.T) {
	mk := func(n, size int) []*batcher.Operation {
		var ops []*batcher.Operation
		for i := range n {
			ops = append(ops, batcher.NewOperation(nil, 0, Item{ID: strconv.Itoa(i), Body: make([]byte, size)}, true))
		}
		return ops
	}
	for _, c := range []struct{ n, size, want int }{
		{1, 10, 1}, {100, 10, 100}, {150, 10, 100}, {10, 500 << 10, 4}, {3, 3 << 20, 0},
	} {
		if got := fitBatch(mk(c.n, c.size)); got != c.want {
			t.Errorf("fitBatch(%d ops of %d bytes) = %d, want %d", c.n, c.size, got, c.want)
		}
	}
}

func TestLoaderFeedback(t *testing.T) {
	cases := []struct {
		name        string
		fail        func(id string, n int) error
		wantErr     string // in LoadAll's error, "" for none
		wantWritten int
	}{
		{"transient then written", func(id string, n int) error {
			if id == "item-3" && n < 3 {
				return statusErr(http.StatusServiceUnavailable)
			}
			return nil
		}, "", 8},
		{"transport error then written", func(id string, n int) error {
			if id == "item-5" && n == 1 {
				return errors.New("connection reset by peer")
			}
			return nil
		}, "", 8},
		{"bad request fails for good", func(id string, n int) error {
			if id == "item-2" || id == "item-5" {
				return statusErr(http.StatusBadRequest)
			}
			return nil
		}, `item "item-2"`, 6},
		{"too large fails for good", func(id string, n int) error {
			if id == "item-6" {
				return statusErr(http.StatusRequestEntityTooLarge)
			}
			return nil
		}, `item "item-6"`, 7},
		{"transient forever runs out of attempts", func(id string, n int) error {
			if id == "item-1" {
				return statusErr(http.StatusServiceUnavailable)
			}
			return nil
		}, "too many attempts", 7},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := newFakeStore(0)
				s.fail = c.fail
				b := start(t, ratelimiter.NewProvisioned(10000))
				l := newLoader(s, b)
				var items []Item
				for i := range 8 {
					items = append(items, item(i, []string{"a", "b"}[i%2], 10)) // batches of a and of b
				}
				err := l.LoadAll(t.Context(), slices.Values(items))
				switch {
				case c.wantErr == "" && err != nil:
					t.Errorf("LoadAll = %v", err)
				case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
					t.Errorf("LoadAll = %v, want an error saying %q", err, c.wantErr)
				}
				s.mu.Lock()
				written := len(s.docs)
				for id, n := range s.docs {
					if n != 1 {
						t.Errorf("%s written %d times", id, n)
					}
				}
				s.mu.Unlock()
				if written != c.wantWritten || l.Stats().Written != int64(written) {
					t.Errorf("%d written (Stats says %d), want %d", written, l.Stats().Written, c.wantWritten)
				}
				if st := b.Stats(); st.Succeeded != int64(c.wantWritten) || st.Failed != int64(8-c.wantWritten) {
					t.Errorf("Batcher Stats %+v, want %d succeeded", st, c.wantWritten)
				}
			})
		})
	}
}

func TestLoaderThrottleHonoursRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeStore(0)
		var mu sync.Mutex
		var times []time.Time
		s.fail = func(id string, n int) error {
			mu.Lock()
			defer mu.Unlock()
			times = append(times, time.Now())
			if n == 1 {
				return throttleErr(700 * time.Millisecond)
			}
			return nil
		}
		b := start(t, ratelimiter.NewProvisioned(10000))
		l := newLoader(s, b)
		if err := l.LoadAll(t.Context(), slices.Values([]Item{item(1, "a", 10)})); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(times) != 2 || times[1].Sub(times[0]) < 700*time.Millisecond {
			t.Errorf("tries at %v, want two, 700ms or more apart", times)
		}
		if st := l.Stats(); st.Throttled != 1 || st.Written != 1 {
			t.Errorf("Stats() = %+v, want 1 throttled, 1 written", st)
		}
		if st := b.Stats(); st.Throttled != 1 {
			t.Errorf("Batcher Stats().Throttled = %d, want 1", st.Throttled)
		}
	})
}

// loadBacklog loads n items through a Batcher limited by lim into s, with a
// foreign writer taking foreign RU a second from s if foreign > 0, and
// returns the loader, the items, how long it took, and the loader's Stats
// 5s after the start.
func loadBacklog(t *testing.T, s *fakeStore, lim batcher.RateLimiter, n, pad int, foreign float64) (*Loader, []Item, time.Duration, Stats) {
	t.Helper()
	b := start(t, lim)
	l := newLoader(s, b)
	var items []Item
	for i := range n {
		items = append(items, item(i, "pk"+strconv.Itoa(i%50), pad))
	}
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	if foreign > 0 {
		// Another service writes foreign RU a second, in 20 slices.
		wg.Go(func() {
			for ctx.Err() == nil {
				s.mu.Lock()
				s.admitLocked(foreign / 20)
				s.mu.Unlock()
				select {
				case <-time.After(50 * time.Millisecond):
				case <-ctx.Done():
				}
			}
		})
	}
	var at5 Stats
	wg.Go(func() {
		select {
		case <-time.After(5 * time.Second):
			at5 = l.Stats()
		case <-ctx.Done():
		}
	})
	t0 := time.Now()
	if err := l.LoadAll(t.Context(), slices.Values(items)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	stop()
	wg.Wait()
	return l, items, took, at5
}

func TestLoaderKeepsWithinProvisionedThroughput(t *testing.T) {
	// The limiter grants what is provisioned: every item written once, no
	// second over it, not one 429, and the throughput used.
	synctest.Test(t, func(t *testing.T) {
		const provisioned, n = 1000, 3000
		s := newFakeStore(provisioned)
		s.latency = 3 * time.Millisecond
		l, items, took, _ := loadBacklog(t, s, ratelimiter.NewProvisioned(provisioned), n, 300, 0)
		s.checkOnce(t, ids(items))
		peak, at := releases.MaxWindow(s.served.All(), time.Second)
		st := l.Stats()
		t.Logf("%d items in %v: %d requests, %.0f RU (%.0f RU/s), peak 1s window %.2f RU at %v, %d throttled", n, took, st.Requests, st.RU, st.RU/took.Seconds(), float64(peak)/100, at, st.Throttled)
		if float64(peak)/100 > provisioned {
			t.Errorf("peak one-second window %.2f RU, over the provisioned %d", float64(peak)/100, provisioned)
		}
		if st.Throttled != 0 || s.refused != 0 {
			t.Errorf("%d requests throttled, want none", st.Throttled)
		}
		// The margin leaves a tenth of it unused.
		if use := st.RU / took.Seconds(); use < 0.8*provisioned/(1+DefaultMargin) {
			t.Errorf("used %.0f RU/s of %d", use, provisioned)
		}
		if p := float64(peak) / 100; p < 0.98*provisioned/(1+DefaultMargin) {
			t.Errorf("peak one-second window %.2f RU, want about %.0f", p, provisioned/(1+DefaultMargin))
		}
	})
}

func TestLoaderAdaptsToAForeignWriter(t *testing.T) {
	// Someone else uses 400 of 1000 RU/s: the adaptive limiter brings the
	// loader under the rest, with 429s only in the first seconds.
	synctest.Test(t, func(t *testing.T) {
		const provisioned, foreign, n = 1000, 400, 6000
		s := newFakeStore(provisioned)
		s.latency = 3 * time.Millisecond
		lim := ratelimiter.NewAdaptive(ratelimiter.NewProvisioned(provisioned))
		l, items, took, at5 := loadBacklog(t, s, lim, n, 300, foreign)
		s.checkOnce(t, ids(items))
		st := l.Stats()
		late := float64(st.Throttled-at5.Throttled) / float64(st.Requests-at5.Requests)
		t.Logf("%d items in %v: %d requests, %d throttled (%d in the first 5s); after 5s %.2f%% throttled; %.0f RU/s", n, took, st.Requests, st.Throttled, at5.Throttled, 100*late, st.RU/took.Seconds())
		if late >= 0.01 {
			t.Errorf("%.2f%% of requests after 5s were throttled, want under 1%%", 100*late)
		}
	})
}

func TestLoaderCost(t *testing.T) {
	l := newLoader(newFakeStore(0), nil).WithMargin(0.1)
	if got := l.Cost(item(1, "a", 10)); got != 7 { // 5.71 * 1.1 = 6.281
		t.Errorf("Cost of a small item = %d, want 7", got)
	}
	if got := l.WithMargin(0).Cost(item(1, "a", 10)); got != 6 {
		t.Errorf("Cost of a small item without margin = %d, want 6", got)
	}
	// Actual costs carry their fractions over: 100 writes of 5.71 RU with
	// a margin of 10% report 628 in all (628.1), as 6s and 7s.
	l = newLoader(newFakeStore(0), nil).WithMargin(0.1)
	w := batcher.NewWatcher(func(context.Context, []*batcher.Operation) error { return nil })
	for range 100 {
		l.setCost(batcher.NewOperation(w, 7, nil, true), 5.71)
	}
	if total := l.milliCost.Load() / 1000; total != 628 {
		t.Errorf("100 writes of 5.71 RU reported %d in all, want 628", total)
	}
	// So do declared costs: 100 small items declare 628 in all, each 6 or
	// 7, where rounding each up would declare 700.
	l = newLoader(newFakeStore(0), nil).WithMargin(0.1)
	total := 0
	for i := range 100 {
		c := l.declare(item(i, "a", 10))
		if c != 6 && c != 7 {
			t.Fatalf("item %d declared %d, want 6 or 7", i, c)
		}
		total += c
	}
	if total != 628 {
		t.Errorf("100 small items declared %d in all, want 628", total)
	}
}

func TestLoaderSettings(t *testing.T) {
	l := newLoader(newFakeStore(0), batcher.NewBatcher()).WithMaxBatchSize(101).WithConcurrency(0).WithMaxAttempts(-1).WithMargin(1).WithLanes(0)
	_, err := l.Load(t.Context(), item(1, "a", 1))
	for _, s := range []string{"MaxBatchSize is 101", "Concurrency is 0", "MaxAttempts is -1", "Margin is 1", "Lanes is 0"} {
		if !errors.Is(err, batcher.ErrInvalidSetting) || !strings.Contains(err.Error(), s) {
			t.Errorf("Load = %v, want it to say %q", err, s)
		}
	}
	// Before the Batcher starts: the Batcher's error.
	l = newLoader(newFakeStore(0), batcher.NewBatcher())
	if _, err := l.Load(t.Context(), item(1, "a", 1)); !errors.Is(err, batcher.ErrImproperOrder) {
		t.Errorf("Load before Start = %v, want ErrImproperOrder", err)
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "WithConcurrency") {
			t.Errorf("WithConcurrency after Load: recovered %v, want a panic naming it", r)
		}
	}()
	l.WithConcurrency(2)
}

// TestLoaderThrottlesOnlyTheHotLane checks that the items of a partition
// key go to its lane's watcher, and that a 429 on a hot key is reported as
// a throttle of its own lane's operations only, with the retry-after the
// service asked for.
func TestLoaderThrottlesOnlyTheHotLane(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeStore(0)
		s.fail = func(id string, n int) error {
			if strings.HasPrefix(id, "hot") && n == 1 {
				return throttleErr(500 * time.Millisecond)
			}
			return nil
		}
		b := start(t, ratelimiter.NewProvisioned(100000))
		l := newLoader(s, b)
		hot, cold := "hot-key", ""
		for i := 0; cold == ""; i++ {
			if k := fmt.Sprint("cold-", i); l.Lane(k) != l.Lane(hot) {
				cold = k
			}
		}
		var mu sync.Mutex
		var throttled []*batcher.Operation
		var pauses []time.Duration
		b.AddListener(func(e batcher.Event) {
			if e.Kind == batcher.Throttled {
				mu.Lock()
				throttled = append(throttled, e.Batch...)
				pauses = append(pauses, e.Duration)
				mu.Unlock()
			}
		})
		var items []Item
		for i := range 20 {
			pk, prefix := hot, "hot"
			if i%2 == 1 {
				pk, prefix = cold, "cold"
			}
			it := item(i, pk, 10)
			it.ID = fmt.Sprint(prefix, "-", i)
			it.Body = []byte(fmt.Sprintf(`{"id":%q,"pk":%q}`, it.ID, pk))
			items = append(items, it)
		}
		var ws []*Write
		for _, it := range items {
			w, err := l.Load(t.Context(), it)
			if err != nil {
				t.Fatal(err)
			}
			ws = append(ws, w)
		}
		for _, w := range ws {
			if err := w.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
			want := l.w[l.Lane(w.Item().PartitionKey)]
			if w.Operation().Watcher() != want {
				t.Errorf("item %s is not on its lane's watcher", w.Item().ID)
			}
		}
		if len(l.w) != DefaultLanes {
			t.Errorf("%d lanes, want %d", len(l.w), DefaultLanes)
		}
		s.checkOnce(t, ids(items))
		mu.Lock()
		defer mu.Unlock()
		if len(throttled) < 10 {
			t.Errorf("%d operations throttled, want each of the 10 hot ones at least once", len(throttled))
		}
		if st := l.Stats(); st.SentThrottled != int64(len(throttled)) || st.Sent != 20+st.SentThrottled {
			t.Errorf("Stats() = %+v; want %d item writes throttled, of %d sent", st, len(throttled), 20+len(throttled))
		}
		for _, op := range throttled {
			if it := op.Payload().(Item); it.PartitionKey != hot || op.Watcher() != l.w[l.Lane(hot)] {
				t.Errorf("item %s of key %s throttled: only the hot lane should be", it.ID, it.PartitionKey)
			}
		}
		for _, d := range pauses {
			if d < 500*time.Millisecond {
				t.Errorf("a throttle paused for %v, less than the 500ms asked for", d)
			}
		}
	})
}

// TestLoaderOddRetryAfters checks, on fake time, what a 429 with a
// retry-after that is absurdly large, malformed, zero or negative does: the
// item is tried again within MaxRetryAfter (a minute), not after hours,
// and then written.
func TestLoaderOddRetryAfters(t *testing.T) {
	for _, header := range []string{"7200000", "1e300", "soon", "NaN", "0", "-5", ""} {
		t.Run(header, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := newFakeStore(0)
				var mu sync.Mutex
				var times []time.Time
				s.fail = func(id string, n int) error {
					mu.Lock()
					defer mu.Unlock()
					times = append(times, time.Now())
					if n == 1 {
						h := http.Header{}
						h.Set("x-ms-retry-after-ms", header)
						return &azcore.ResponseError{StatusCode: 429, RawResponse: &http.Response{StatusCode: 429, Header: h}}
					}
					return nil
				}
				b := start(t, ratelimiter.NewProvisioned(10000))
				l := newLoader(s, b)
				if err := l.LoadAll(t.Context(), slices.Values([]Item{item(1, "a", 10)})); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				defer mu.Unlock()
				if len(times) != 2 || times[1].Sub(times[0]) > MaxRetryAfter+time.Second {
					t.Errorf("tries at %v; want two, the second within %v of the first", times, MaxRetryAfter)
				}
			})
		})
	}
}

// TestLoaderFollowsAThroughputChange checks, on fake time, a Loader under
// a ThroughputLimiter while the provisioned throughput drops from 1,000 to
// 400 RU/s: the 429s come only between the drop and the limiter's next
// read, and none once it has read the new figure.
func TestLoaderFollowsAThroughputChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeStore(1000)
		s.latency = 3 * time.Millisecond
		lim := NewThroughputLimiter(func(context.Context) (Throughput, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return Throughput{ManualRU: int(s.provisioned)}, nil
		}).WithCeiling(5000).WithRefreshInterval(time.Second)
		b := start(t, lim)
		l := newLoader(s, b)
		var items []Item
		for i := range 2000 { // about 12,600 RU: 3 s at 1,000 then 24 s at 400
			items = append(items, item(i, "pk"+strconv.Itoa(i%50), 300))
		}
		var refusedAt []int
		var wg sync.WaitGroup
		wg.Go(func() {
			time.Sleep(3500 * time.Millisecond)
			s.mu.Lock()
			s.provisioned = 400
			s.mu.Unlock()
			for range 2 { // the limiter reads at 4 s; its old releases leave the window by 5 s
				time.Sleep(time.Second)
				s.mu.Lock()
				refusedAt = append(refusedAt, s.refused)
				s.mu.Unlock()
			}
		})
		if err := l.LoadAll(t.Context(), slices.Values(items)); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		s.checkOnce(t, ids(items))
		if c := lim.Capacity(); c != 400 {
			t.Errorf("capacity %d at the end, want 400", c)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		t.Logf("429s: %d by 4.5 s, %d by 5.5 s, %d at the end", refusedAt[0], refusedAt[1], s.refused)
		if s.refused != refusedAt[1] {
			t.Errorf("%d 429s after the limiter followed the drop (%d by 5.5 s), want none", s.refused-refusedAt[1], refusedAt[1])
		}
	})
}

// TestLoaderHoldsAKeyUntilItsRangeIsKnown checks, on fake time, the
// learning step for items loaded up front: a key's first item goes alone,
// in the default lane; its further items wait for that first answer and
// then go, together, to the lane of the range it named; and if the first
// write ends without an answer (its retries run out on resets), the held
// items are written in the default lane rather than held for ever.
func TestLoaderHoldsAKeyUntilItsRangeIsKnown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeStore(0)
		s.latency = 20 * time.Millisecond
		s.rangeOf = func(pk string) string {
			if pk == "hot" {
				return "1"
			}
			return "2"
		}
		s.fail = func(id string, n int) error {
			if id == "lost-0" {
				return errors.New("read tcp: connection reset by peer")
			}
			return nil
		}
		b := start(t, ratelimiter.NewProvisioned(100000))
		l := newLoader(s, b).WithMaxAttempts(2)
		var ws []*Write
		for _, pk := range []string{"hot", "cold", "lost"} {
			for i := range 3 {
				it := item(i, pk, 10)
				it.ID = fmt.Sprint(pk, "-", i)
				it.Body = []byte(fmt.Sprintf(`{"id":%q,"pk":%q}`, it.ID, pk))
				w, err := l.Load(t.Context(), it)
				if err != nil {
					t.Fatal(err)
				}
				if i > 0 && w.Operation() != nil {
					t.Errorf("%s: enqueued before its key's first answer", it.ID)
				}
				ws = append(ws, w)
			}
		}
		for _, w := range ws {
			err := w.Wait(t.Context())
			id := w.Item().ID
			want := map[string]string{"hot-1": "1", "hot-2": "1", "cold-1": "2", "cold-2": "2"}[id]
			switch {
			case id == "lost-0":
				if !errors.Is(err, batcher.ErrTooManyAttempts) {
					t.Errorf("lost-0: %v; want its retries run out", err)
				}
			case err != nil:
				t.Errorf("%s: %v", id, err)
			case w.RangeID() != want:
				t.Errorf("%s written in range %q's lane, want %q", id, w.RangeID(), want)
			}
			select {
			case <-w.Done():
			default:
				t.Errorf("%s: Done not closed after Wait", id)
			}
		}
		got := s.callList()
		slices.Sort(got)
		want := []string{"batch cold 2", "batch hot 2", "batch lost 2", "upsert cold", "upsert hot", "upsert lost", "upsert lost"}
		if !slices.Equal(got, want) {
			t.Errorf("requests %v, want %v", got, want)
		}
		if n := len(l.ranges.learning); n != 0 || l.ranges.held != 0 {
			t.Errorf("%d keys still learning, %d items held", n, l.ranges.held)
		}
	})
}
