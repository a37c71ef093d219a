package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher/internal/cosmosmodel"
)

// otherKey is the partition key of the other workload's documents.
const otherKey = "other-workload"

// otherResult is what the other workload saw.
type otherResult struct {
	Writes    int64   `json:"writes"`    // succeeded
	Failed    int64   `json:"failed"`    // the SDK's retries spent
	Requests  int64   `json:"requests"`  // every attempt
	Throttled int64   `json:"throttled"` // 429 answers
	Share429  float64 `json:"share_429"`
	P50       float64 `json:"p50_ms"` // a write's latency, the SDK's retries included
	P99       float64 `json:"p99_ms"`
}

// otherWorkload is another service writing 1 KB documents to the same
// container at a steady rate from spec.From to spec.To into the run, as a
// user-facing service would: each write when it is due, whatever happened
// to the ones before, with the SDK's default retries and connections of its
// own. It is a real client, so that its latency is real.
type otherWorkload struct {
	cnt  *counter
	cc   *azcosmos.ContainerClient
	spec otherSpec
	rate float64 // writes per second

	ctx    context.Context
	cancel context.CancelFunc
	quit   chan struct{}
	ticker sync.WaitGroup
	writes sync.WaitGroup

	written, failed atomic.Int64
	mu              sync.Mutex
	lat             []time.Duration
}

func newOther(m *cosmosmodel.Model, born time.Time, spec *otherSpec, ruScale float64) (*otherWorkload, error) {
	o := &otherWorkload{cnt: newCounter(born), spec: *spec, quit: make(chan struct{})}
	opts := &azcosmos.ClientOptions{}
	opts.Transport = m.NewHTTPClient()
	opts.PerRetryPolicies = []policy.Policy{o.cnt}
	client, err := m.NewClient(opts) // the SDK's default retries
	if err != nil {
		return nil, err
	}
	if o.cc, err = client.NewContainer(database, container); err != nil {
		return nil, err
	}
	o.rate = spec.RU * ruScale / cosmosmodel.WriteCharge(docSize)
	o.ctx, o.cancel = context.WithCancel(context.Background())
	start := time.Now()
	o.ticker.Go(func() { o.run(start) })
	return o, nil
}

// run issues the writes as they fall due, every 10ms.
func (o *otherWorkload) run(start time.Time) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	pad := strings.Repeat("o", docSize)
	n := 0
	for {
		select {
		case <-o.quit:
			return
		case now := <-t.C:
			in := now.Sub(start)
			if in < o.spec.From {
				continue
			}
			if in >= o.spec.To {
				return
			}
			for due := int(math.Floor((in - o.spec.From).Seconds() * o.rate)); n < due; n++ {
				id := fmt.Sprintf("other-%d", n)
				doc, _ := json.Marshal(map[string]string{"id": id, "pk": otherKey, "pad": ""})
				body, _ := json.Marshal(map[string]string{"id": id, "pk": otherKey, "pad": pad[:max(docSize-len(doc), 0)]})
				o.writes.Go(func() { o.write(body) })
			}
		}
	}
}

func (o *otherWorkload) write(body []byte) {
	t0 := time.Now()
	_, err := o.cc.UpsertItem(o.ctx, azcosmos.NewPartitionKeyString(otherKey), body, nil)
	d := time.Since(t0)
	if err != nil {
		if o.ctx.Err() == nil {
			o.failed.Add(1)
		}
		return
	}
	o.written.Add(1)
	o.mu.Lock()
	o.lat = append(o.lat, d)
	o.mu.Unlock()
}

// finish stops issuing writes and waits up to 10s for those under way.
func (o *otherWorkload) finish() {
	select {
	case <-o.quit:
		return
	default:
	}
	close(o.quit)
	o.ticker.Wait()
	giveUp := time.AfterFunc(10*time.Second, o.cancel)
	o.writes.Wait()
	giveUp.Stop()
	o.cancel()
}

func (o *otherWorkload) result() *otherResult {
	req, thr, _ := o.cnt.totals()
	r := &otherResult{Writes: o.written.Load(), Failed: o.failed.Load(), Requests: req, Throttled: thr, Share429: share(thr, req)}
	o.mu.Lock()
	lat := slices.Clone(o.lat)
	o.mu.Unlock()
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		r.P50 = float64(lat[n/2]) / float64(time.Millisecond)
		r.P99 = float64(lat[min(n-1, n*99/100)]) / float64(time.Millisecond)
	}
	return r
}
