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

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher/internal/cosmosmodel"
)

// otherPK is the partition key value of the other workload's documents.
const otherPK = "other-workload"

// otherDocSize is the size of the other workload's documents.
const otherDocSize = 1024

// otherResult is what the other workload saw while a loader ran.
type otherResult struct {
	units     float64 // RU charged
	writes    int64   // writes that succeeded
	failed    int64   // writes that failed, the SDK's retries spent
	throttled int64   // 429 answers, retries included
	p50, p99  time.Duration
}

// other is another service writing to the same container at a steady rate
// while a loader runs, as a user-facing service would: each write when it
// is due, whatever happened to the ones before, with the SDK's default
// retries. Its 429s and latency show who pays for the loader's throttling.
type other struct {
	s    *series
	cc   *azcosmos.ContainerClient
	pk   azcosmos.PartitionKey
	pad  string
	prop string
	name string

	ctx    context.Context
	cancel context.CancelFunc
	quit   chan struct{}
	ticker sync.WaitGroup
	writes sync.WaitGroup

	written, failed atomic.Int64
	mu              struct {
		sync.Mutex
		lat []time.Duration
	}
}

// startOther starts writing about ru RU a second of 1 KB documents to the
// target's container, until finish.
func startOther(ctx context.Context, t *cosmosTarget, ru int, phase string) (*other, error) {
	s := newSeries()
	client, err := t.newClient(s, true, true)
	if err != nil {
		return nil, err
	}
	cc, err := client.NewContainer(t.cfg.database, t.cfg.container)
	if err != nil {
		return nil, err
	}
	o := &other{s: s, cc: cc, pk: azcosmos.NewPartitionKeyString(otherPK), prop: strings.TrimPrefix(t.cfg.pkPath, "/"), name: phase, quit: make(chan struct{})}
	o.pad = strings.Repeat("o", otherDocSize-len(o.doc(0, ""))) // the document without padding
	o.ctx, o.cancel = context.WithCancel(ctx)
	perSecond := float64(ru) / cosmosmodel.WriteCharge(otherDocSize)
	o.ticker.Go(func() { o.run(perSecond) })
	return o, nil
}

func (o *other) doc(n int, pad string) []byte {
	b, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("other-%s-%d", o.name, n), o.prop: otherPK, "pad": pad})
	return b
}

// run issues the writes as they fall due, every 10ms.
func (o *other) run(perSecond float64) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	start, n := time.Now(), 0
	for {
		select {
		case <-o.quit:
			return
		case now := <-t.C:
			for due := int(math.Floor(now.Sub(start).Seconds() * perSecond)); n < due; n++ {
				body := o.doc(n, o.pad)
				o.writes.Go(func() { o.write(body) })
			}
		}
	}
}

func (o *other) write(body []byte) {
	t0 := time.Now()
	_, err := o.cc.UpsertItem(o.ctx, o.pk, body, nil)
	d := time.Since(t0)
	if err != nil {
		if o.ctx.Err() == nil {
			o.failed.Add(1)
		}
		return
	}
	o.written.Add(1)
	o.mu.Lock()
	o.mu.lat = append(o.mu.lat, d)
	o.mu.Unlock()
}

// finish stops issuing writes, waits up to 10 s for those under way
// (cancelling the rest), and returns what the workload saw; nil for a nil
// workload.
func (o *other) finish() *otherResult {
	if o == nil {
		return nil
	}
	close(o.quit)
	o.ticker.Wait()
	giveUp := time.AfterFunc(10*time.Second, o.cancel)
	o.writes.Wait()
	giveUp.Stop()
	o.cancel()
	units, _, throttled := o.s.totals()
	r := &otherResult{units: units, writes: o.written.Load(), failed: o.failed.Load(), throttled: throttled}
	o.mu.Lock()
	lat := slices.Clone(o.mu.lat)
	o.mu.Unlock()
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		r.p50 = lat[n/2]
		r.p99 = lat[min(n-1, n*99/100)]
	}
	return r
}
