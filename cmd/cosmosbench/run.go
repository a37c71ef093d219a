package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/cosmosbulk"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/ratelimiter"
)

// The loaders compared.
const (
	ours  = "ours"  // cosmosbulk.Loader, a Batcher and the scenario's limiter
	naive = "naive" // every item at once, the SDK's default retries
	seed  = "seed"  // capacity fixed at the configured figure, 500ms global pause on any throttle
	// lanes is a diagnostic: ours' Loader and lanes with a fixed capacity
	// (ratelimiter.Provisioned at the configured figure), no Controller.
	lanes = "lanes"
	// onelane is a diagnostic: ours with every item in one throttle lane
	// (cosmosbulk.Loader.WithRangeLanes(false)), as the Loader's items
	// loaded before any answer were until it held keys until their range
	// was known.
	onelane = "onelane"
)

const (
	database  = "bench"
	container = "items"
	pkPath    = "/pk"
	docSize   = 1024
	hotKey    = "hot"
)

// result is what one loader did in one scenario.
type result struct {
	Scenario string `json:"scenario"`
	Loader   string `json:"loader"`
	Run      int    `json:"run"`

	Items    int     `json:"items"`
	Written  int64   `json:"written"`
	Finished bool    `json:"finished"`
	Elapsed  float64 `json:"elapsed_s"`
	Ideal    float64 `json:"ideal_s"` // at what the model would serve the loader, for the RU it was charged
	Ratio    float64 `json:"completion_vs_ideal"`

	Requests  int64   `json:"requests"`
	Throttled int64   `json:"throttled"`
	Share429  float64 `json:"share_429"` // of the loader's requests
	RU        float64 `json:"ru"`        // charged to the loader

	Utilization float64          `json:"utilization"` // the run's whole seconds
	Windows     []windowResult   `json:"windows,omitempty"`
	Other       *otherResult     `json:"other,omitempty"`
	Hot         *hotResult       `json:"hot,omitempty"`
	Discovery   *discoveryResult `json:"discovery,omitempty"`
	CapacityEnd int              `json:"capacity_end,omitempty"` // the limiter's, ours and seed
}

type windowResult struct {
	Name        string  `json:"name"`
	Seconds     int     `json:"seconds"` // whole seconds measured
	Utilization float64 `json:"utilization"`
	Share429    float64 `json:"share_429"`
}

// hotResult is S5's: the cold partitions' completion, and whether their
// writes waited on the hot partition's pauses.
type hotResult struct {
	ColdItems int `json:"cold_items"` // items on partitions other than the hot key's
	// ColdElapsed is when the last cold item was written.
	ColdElapsed   float64 `json:"cold_elapsed_s"`
	ColdIdeal     float64 `json:"cold_ideal_s"`    // the busiest cold partition's RU / its budget
	ColdThrottled int64   `json:"cold_throttled"`  // 429s on the cold partitions
	LanesPaused   int     `json:"lanes_paused"`    // throttle lanes a throttle paused (ours, seed)
	ColdInPaused  int     `json:"cold_in_paused"`  // cold items in a throttle lane a hot item's throttle paused
	HotLaneShared int     `json:"hot_lane_shared"` // cold items in a throttle lane with hot items
}

// discoveryResult is S7's.
type discoveryResult struct {
	FirstRead  float64 `json:"first_read_s"`      // from the Batcher's Start to the capacity read
	Followed   float64 `json:"change_followed_s"` // from the model's change to the capacity following it; -1 never
	Refresh    float64 `json:"refresh_s"`
	Capacities []int   `json:"capacities"`
}

// runOne runs one loader through one scenario on a fresh model.
func runOne(ctx context.Context, cfg config, sc scenario, loader string) (result, error) {
	r := result{Scenario: sc.Name, Loader: loader}
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: sc.ProvisionedRU * cfg.ruScale, Partitions: sc.Partitions})
	if err != nil {
		return r, err
	}
	born := time.Now().Add(-m.Stats().Elapsed)
	if err := m.Start(); err != nil {
		return r, err
	}
	defer m.Close()

	items, hotPart := makeItems(cfg, sc, m)
	r.Items = len(items)

	cnt := newCounter(born)
	o := &azcosmos.ClientOptions{}
	o.PerRetryPolicies = []policy.Policy{cnt}
	if kindOf(loader) == naive {
		o.Retry = policy.RetryOptions{} // the SDK's defaults: 3 retries, honouring the retry-after
	} else {
		o.Retry = policy.RetryOptions{MaxRetries: -1} // 429s to the Loader
		if kindOf(loader) == seed {
			o.PerRetryPolicies = append(o.PerRetryPolicies, fixedRetryAfter{})
		}
	}
	client, err := m.NewClient(o)
	if err != nil {
		return r, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	cc, err := cosmosbulk.CreateContainer(sctx, client, database, container, pkPath)
	cancel()
	if err != nil {
		return r, err
	}

	// The run's deadline: what the slowest loader may take.
	idealLen := sc.idealTime(float64(len(items))*cosmosmodel.WriteCharge(docSize), cfg.ruScale)
	deadline := time.Duration(cfg.timeoutFactor*float64(idealLen)) + 10*time.Second
	rctx, cancelRun := context.WithTimeout(ctx, deadline)
	defer cancelRun()

	var ow *otherWorkload
	if sc.Other != nil {
		ow, err = newOther(m, born, sc.Other, cfg.ruScale)
		if err != nil {
			return r, err
		}
	}

	var run loadRun
	switch kindOf(loader) {
	case ours, seed, lanes, onelane:
		run, err = loadBatcher(rctx, cfg, sc, loader, m, client, cc, items, hotPart)
	case naive:
		run, err = loadNaive(rctx, cfg, sc, m, cc, items, hotPart, ow)
	default:
		err = fmt.Errorf("no loader %q", loader)
	}
	if ow != nil {
		ow.finish()
	}
	if err != nil {
		return r, err
	}
	r.Written, r.Finished = run.written, run.written == int64(len(items))
	r.Elapsed = run.elapsed.Seconds()
	r.Requests, r.Throttled, r.RU = cnt.totals()
	r.Share429 = share(r.Throttled, r.Requests)
	r.CapacityEnd = run.capacityEnd
	r.Discovery = run.discovery
	if sc.Partitions > 1 {
		r.Ideal = partitionedIdeal(m, sc, cfg.ruScale).Seconds()
	} else {
		r.Ideal = sc.idealTime(r.RU, cfg.ruScale).Seconds()
	}
	if r.Ideal > 0 {
		r.Ratio = r.Elapsed / r.Ideal
	}

	var oc *counter
	if ow != nil {
		oc = ow.cnt
		r.Other = ow.result()
	}
	hist := m.History()
	measure := func(name string, from, to time.Duration) windowResult {
		w := windowResult{Name: name}
		if to == 0 || to > run.elapsed {
			to = run.elapsed
		}
		var ru, avail float64
		var req, thr int64
		for i, s := range hist {
			at := born.Add(s.At).Sub(run.start)
			if at < from || at+time.Second > to || s.BudgetRU == 0 {
				continue
			}
			os := oc.second(i)
			ru += s.RU - os.ru
			avail += s.BudgetRU - os.ru
			req += s.Requests - os.requests
			thr += s.Throttled - os.throttled
			w.Seconds++
		}
		if avail > 0 {
			w.Utilization = ru / avail
		}
		w.Share429 = share(thr, req)
		return w
	}
	if cfg.trace != nil {
		for i, s := range hist {
			os := oc.second(i)
			fmt.Fprintf(cfg.trace, "%s %s second %5.1fs: RU %7.0f of %7.0f, requests %5d, 429s %4d; other RU %5.0f, 429s %d\n", sc.Name, loader,
				born.Add(s.At).Sub(run.start).Seconds(), s.RU-os.ru, s.BudgetRU, s.Requests-os.requests, s.Throttled-os.throttled, os.ru, os.throttled)
		}
	}
	r.Utilization = measure("run", 0, 0).Utilization
	for _, w := range sc.Windows {
		r.Windows = append(r.Windows, measure(w.Name, w.From, w.To))
	}
	if sc.HotShare > 0 {
		h := run.hot
		ps := m.PartitionStats()
		budget := sc.ProvisionedRU * cfg.ruScale / float64(len(ps))
		for p, st := range ps {
			if p == hotPart {
				continue
			}
			h.ColdThrottled += st.Throttled
			h.ColdIdeal = max(h.ColdIdeal, st.RU/budget)
		}
		r.Hot = h
	}
	return r, nil
}

func share(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// partitionedIdeal is S5's ideal: the busiest partition's RU over its
// budget, or the total over the provisioned throughput, whichever is
// longer.
func partitionedIdeal(m *cosmosmodel.Model, sc scenario, ruScale float64) time.Duration {
	ps := m.PartitionStats()
	prov := sc.ProvisionedRU * ruScale
	total, busiest := 0.0, 0.0
	for _, p := range ps {
		total += p.RU
		busiest = max(busiest, p.RU)
	}
	s := max(busiest/(prov/float64(len(ps))), total/prov)
	return time.Duration(s * float64(time.Second))
}

// makeItems returns the scenario's items, 1 KB each, and the hot key's
// physical partition (-1 without one): enough of them for the scenario's
// length at what the model would serve.
func makeItems(cfg config, sc scenario, m *cosmosmodel.Model) ([]cosmosbulk.Item, int) {
	charge := cosmosmodel.WriteCharge(docSize)
	keys := make([]string, cfg.keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%04d", i)
	}
	hotPart := -1
	var n int
	if sc.HotShare > 0 {
		parts := max(sc.Partitions, 1)
		hotPart = m.PartitionOf(hotKey)
		onHot := 0
		for _, k := range keys {
			if m.PartitionOf(k) == hotPart {
				onHot++
			}
		}
		hotFrac := sc.HotShare + (1-sc.HotShare)*float64(onHot)/float64(len(keys))
		prov := sc.ProvisionedRU * cfg.ruScale
		perItem := charge * max(hotFrac/(prov/float64(parts)), 1/prov) // seconds an item takes
		n = int(sc.Length.Seconds() / perItem)
	} else {
		n = int(sc.availableRU(0, sc.Length, cfg.ruScale) / charge)
	}
	items := make([]cosmosbulk.Item, n)
	pad := strings.Repeat("x", docSize)
	for i := range items {
		pk := keys[i%len(keys)]
		if sc.HotShare > 0 && float64(i%100) < sc.HotShare*100 {
			pk = hotKey
		} else if sc.HotShare > 0 {
			pk = keys[(i/2)%len(keys)]
		}
		id := fmt.Sprintf("%s-%d", sc.Name, i)
		doc, _ := json.Marshal(map[string]string{"id": id, "pk": pk, "pad": ""})
		body, _ := json.Marshal(map[string]string{"id": id, "pk": pk, "pad": pad[:max(docSize-len(doc), 0)]})
		items[i] = cosmosbulk.Item{ID: id, PartitionKey: pk, Body: body}
	}
	return items, hotPart
}

// loadRun is what a loader's run measured itself.
type loadRun struct {
	start       time.Time
	elapsed     time.Duration
	written     int64
	capacityEnd int
	hot         *hotResult
	discovery   *discoveryResult
}

// limiterFor returns ours' limiter for the scenario: a Controller whose
// ceiling is the configured figure, or, for discovery, a ThroughputLimiter
// reading the container's throughput.
func limiterFor(cfg config, sc scenario, loader string, client *azcosmos.Client) (batcher.RateLimiter, *cosmosbulk.ThroughputLimiter) {
	ceiling := int(sc.LimiterRU * cfg.ruScale)
	if k := kindOf(loader); k == seed || k == lanes {
		return ratelimiter.NewProvisioned(ceiling), nil
	}
	if sc.Discover {
		tl := cosmosbulk.NewContainerThroughputLimiter(client, database, container).
			WithCeiling(int(discoveryCeiling * cfg.ruScale)).
			WithRefreshInterval(cfg.refresh)
		return tl, tl
	}
	return ratelimiter.NewController(ceiling), nil
}

// discoveryCeiling is the ceiling S7's user configured: above anything the
// container is given in the scenario.
const discoveryCeiling = 50000

// loadBatcher loads the items with cosmosbulk's Loader through a Batcher:
// ours (16 lanes, the scenario's limiter) or the seed-like policy (one
// lane, a fixed capacity, and every 429's retry-after made 500ms).
func loadBatcher(ctx context.Context, cfg config, sc scenario, loader string, m *cosmosmodel.Model, client *azcosmos.Client, cc *azcosmos.ContainerClient, items []cosmosbulk.Item, hotPart int) (loadRun, error) {
	lim, tl := limiterFor(cfg, sc, loader, client)
	b := batcher.NewBatcher().WithRateLimiter(lim)
	var disc *discoveryResult
	var (
		dmu       sync.Mutex
		capEvents []capEvent
	)
	if tl != nil {
		tl.AddListener(func(e batcher.Event) {
			if e.Kind == batcher.CapacityChanged {
				dmu.Lock()
				capEvents = append(capEvents, capEvent{time.Now(), e.Val})
				dmu.Unlock()
			}
		})
	}
	l := cosmosbulk.NewLoader(cc, b).WithMaxBatchSize(cfg.batch).WithMargin(marginOf(cfg, loader))
	switch kindOf(loader) {
	case seed:
		l.WithLanes(1).WithRangeLanes(false)
	case onelane:
		l.WithRangeLanes(false)
	}
	var (
		pmu       sync.Mutex
		paused    = map[*batcher.Watcher]bool{} // watchers of throttled batches
		hotPaused = map[*batcher.Watcher]bool{} // of throttled hot items
	)
	if sc.HotShare > 0 {
		b.AddListener(func(e batcher.Event) {
			if e.Kind != batcher.Throttled || len(e.Batch) == 0 {
				return
			}
			op := e.Batch[0]
			pmu.Lock()
			paused[op.Watcher()] = true
			if m.PartitionOf(op.Payload().(cosmosbulk.Item).PartitionKey) == hotPart {
				hotPaused[op.Watcher()] = true
			}
			pmu.Unlock()
		})
	}
	if cfg.trace != nil {
		t0 := time.Now()
		trace := func(who string) func(batcher.Event) {
			return func(e batcher.Event) {
				switch e.Kind {
				case batcher.CapacityChanged, batcher.Throttled:
					fmt.Fprintf(cfg.trace, "%s %s %8.3fs %v %d %s %v ops=%d\n", sc.Name, who, time.Since(t0).Seconds(), e.Kind, e.Val, e.Msg, e.Duration, len(e.Batch))
				}
			}
		}
		b.AddListener(trace("batcher"))
		if es, ok := lim.(batcher.EventSource); ok {
			es.AddListener(trace("limiter"))
		}
	}
	startAt := time.Now()
	if err := b.Start(ctx); err != nil {
		return loadRun{}, err
	}
	defer b.Close()
	if tl != nil {
		disc = &discoveryResult{Refresh: cfg.refresh.Seconds(), Followed: -1}
		dmu.Lock()
		if len(capEvents) > 0 {
			disc.FirstRead = capEvents[0].at.Sub(startAt).Seconds()
		} else {
			disc.FirstRead = -1
		}
		dmu.Unlock()
	}
	run := loadRun{start: time.Now()}
	changed := scheduleChanges(m, sc, cfg.ruScale)
	defer changed.stop()

	var (
		ws   []*cosmosbulk.Write
		cold []*cosmosbulk.Write // items on the cold partitions
	)
	var coldDone chan time.Time
	var err error
	if sc.HotShare > 0 {
		ws = make([]*cosmosbulk.Write, 0, len(items))
		for _, it := range items {
			w, lerr := l.Load(ctx, it)
			if lerr != nil {
				err = lerr
				break
			}
			ws = append(ws, w)
			if m.PartitionOf(it.PartitionKey) != hotPart {
				cold = append(cold, w)
			}
		}
		coldDone = make(chan time.Time, 1)
		go func() {
			for _, w := range cold {
				if w.Wait(ctx) != nil {
					break
				}
			}
			coldDone <- time.Now()
		}()
		for _, w := range ws {
			if werr := w.Wait(ctx); werr != nil {
				err = werr
				break
			}
		}
	} else {
		err = l.LoadAll(ctx, slices.Values(items))
	}
	run.elapsed = time.Since(run.start)
	run.written = l.Stats().Written
	run.capacityEnd = lim.Capacity()
	if coldDone != nil {
		end := <-coldDone
		h := &hotResult{ColdItems: len(cold), ColdElapsed: end.Sub(run.start).Seconds()}
		// A write's throttle lane: its range's ("" the default lane), which
		// each of its watchers belongs to.
		laneOf := map[*batcher.Watcher]string{}
		hotLanes := map[string]bool{}
		for _, w := range ws {
			if op := w.Operation(); op != nil {
				laneOf[op.Watcher()] = w.RangeID()
				if m.PartitionOf(w.Item().PartitionKey) == hotPart {
					hotLanes[w.RangeID()] = true
				}
			}
		}
		pmu.Lock()
		pausedLanes, hotPausedLanes := map[string]bool{}, map[string]bool{}
		for w := range paused {
			pausedLanes[laneOf[w]] = true
		}
		for w := range hotPaused {
			hotPausedLanes[laneOf[w]] = true
		}
		pmu.Unlock()
		h.LanesPaused = len(pausedLanes)
		for _, w := range cold {
			if hotPausedLanes[w.RangeID()] {
				h.ColdInPaused++
			}
			if hotLanes[w.RangeID()] {
				h.HotLaneShared++
			}
		}
		run.hot = h
	}
	if disc != nil {
		dmu.Lock()
		for _, e := range capEvents {
			disc.Capacities = append(disc.Capacities, e.val)
		}
		if at, ok := changed.at(0); ok {
			for _, e := range capEvents {
				if e.at.After(at) && e.val > capEvents[0].val {
					disc.Followed = e.at.Sub(at).Seconds()
					break
				}
			}
		}
		dmu.Unlock()
		run.discovery = disc
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return run, err
	}
	return run, nil
}

type capEvent struct {
	at  time.Time
	val int
}

// changes holds the timers of a scenario's throughput changes, and when
// each was made.
type changes struct {
	mu     sync.Mutex
	timers []*time.Timer
	made   map[int]time.Time
}

func scheduleChanges(m *cosmosmodel.Model, sc scenario, ruScale float64) *changes {
	c := &changes{made: map[int]time.Time{}}
	for i, ch := range sc.Changes {
		c.timers = append(c.timers, time.AfterFunc(ch.At, func() {
			if ch.AutoMaxRU > 0 {
				m.SetAutoscaleMaxRU(ch.AutoMaxRU * ruScale)
			} else {
				m.SetProvisionedRU(ch.ManualRU * ruScale)
			}
			c.mu.Lock()
			c.made[i] = time.Now()
			c.mu.Unlock()
		}))
	}
	return c
}

func (c *changes) stop() {
	for _, t := range c.timers {
		t.Stop()
	}
}

func (c *changes) at(i int) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.made[i]
	return t, ok
}

// naiveBackoff is how long the naive loader waits before trying an item
// again once the SDK's own retries are spent, as such code often does.
const naiveBackoff = time.Second

// loadNaive loads the items the way code without a rate limiter does: all
// at once (as many at a time as cfg.naiveWorkers), each upserted with the
// SDK's default retries (three, honouring the retry-after), and tried again
// after a second when those run out, until the run's deadline.
func loadNaive(ctx context.Context, cfg config, sc scenario, m *cosmosmodel.Model, cc *azcosmos.ContainerClient, items []cosmosbulk.Item, hotPart int, _ *otherWorkload) (loadRun, error) {
	run := loadRun{start: time.Now()}
	changed := scheduleChanges(m, sc, cfg.ruScale)
	defer changed.stop()
	var written atomic.Int64
	var coldEnd atomic.Int64 // nanoseconds since start
	next := make(chan int, 1024)
	var wg sync.WaitGroup
	for range cfg.naiveWorkers {
		wg.Go(func() {
			for i := range next {
				it := items[i]
				pk := azcosmos.NewPartitionKeyString(it.PartitionKey)
				for ctx.Err() == nil {
					_, err := cc.UpsertItem(ctx, pk, it.Body, nil)
					if err == nil {
						written.Add(1)
						if hotPart >= 0 && m.PartitionOf(it.PartitionKey) != hotPart {
							d := int64(time.Since(run.start))
							for {
								cur := coldEnd.Load()
								if d <= cur || coldEnd.CompareAndSwap(cur, d) {
									break
								}
							}
						}
						break
					}
					var re *azcore.ResponseError
					if errors.As(err, &re) && re.StatusCode >= 400 && re.StatusCode < 500 && re.StatusCode != http.StatusTooManyRequests {
						break // refused for good
					}
					select {
					case <-time.After(naiveBackoff):
					case <-ctx.Done():
					}
				}
			}
		})
	}
	for i := range items {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	run.elapsed = time.Since(run.start)
	run.written = written.Load()
	if hotPart >= 0 {
		h := &hotResult{ColdElapsed: time.Duration(coldEnd.Load()).Seconds()}
		for _, it := range items {
			if m.PartitionOf(it.PartitionKey) != hotPart {
				h.ColdItems++
			}
		}
		run.hot = h
	}
	return run, nil
}
