package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/samples/cosmos"
)

// phase is what one loader did.
type phase struct {
	name     string
	items    int
	written  int64
	failed   int64
	firstErr error
	elapsed  time.Duration
	requests int64     // requests sent, every retry included (a transactional batch, or an insert, is one)
	throttle int64     // requests answered 429
	first    int64     // items sent at least once
	resent   int64     // item writes sent again after a first attempt
	units    float64   // RU (or rows) charged
	peak     float64   // most units in one second
	perSec   []float64 // units in each one-second window
	thrSec   []int64   // 429 answers in each window
	// offset is how many seconds the first window starts before the phase:
	// the embedded model counts its windows from its creation, a little
	// before the phase starts; the client's start with the phase.
	offset float64
	// the embedded model's own count, when there is one
	server *cosmosmodel.Stats
	// what the other workload saw meanwhile, if there was one
	other *otherResult
	// what verification found, "" if none was made
	verified string
}

// cosmosTarget opens a container for a phase: in a fresh embedded model, or
// in the real account.
type cosmosTarget struct {
	cfg     config
	model   *cosmosmodel.Model // embedded only
	created time.Time          // when the model was created, which its seconds count from
}

// setupTimeout bounds connecting to a real endpoint and creating the
// database and container.
const setupTimeout = 15 * time.Second

// open returns a container client whose requests s counts; retry says
// whether the SDK retries 429s itself (the naive loader) or leaves them to
// the caller (the Batcher). close releases what open made.
func (t *cosmosTarget) open(ctx context.Context, s *series, retry bool) (cc *azcosmos.ContainerClient, close func(), err error) {
	close = func() {}
	if t.cfg.target() == "embedded" {
		t.created = time.Now()
		m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: float64(t.cfg.ru)})
		if err != nil {
			return nil, nil, err
		}
		if err := m.Start(); err != nil {
			return nil, nil, err
		}
		t.model = m
		close = func() { m.Close() }
	} else if err := reachable(ctx, t.cfg.cosmosEndpoint); err != nil {
		return nil, nil, err
	}
	client, err := t.newClient(s, retry, false)
	if err != nil {
		close()
		return nil, nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	cc, err = cosmos.CreateContainer(sctx, client, t.cfg.database, t.cfg.container, t.cfg.pkPath)
	if err != nil {
		close()
		if sctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("no answer within %v: %w", setupTimeout, err)
		}
		return nil, nil, fmt.Errorf("cosmos endpoint %s: creating database %q and container %q: %w", t.endpoint(), t.cfg.database, t.cfg.container, err)
	}
	return cc, close, nil
}

// newClient returns a client of the target whose requests s counts; retry
// says whether the SDK retries 429s itself or leaves them to the caller;
// own, whether it gets connections of its own to the embedded model (as
// another service would), rather than the model's shared ones.
func (t *cosmosTarget) newClient(s *series, retry, own bool) (*azcosmos.Client, error) {
	o := cosmos.ClientOptions(false)
	if retry {
		o.Retry = policy.RetryOptions{} // the SDK's defaults: 3 retries, honouring x-ms-retry-after-ms
	}
	o.PerRetryPolicies = append(o.PerRetryPolicies, s)
	if t.model != nil {
		if own {
			o.Transport = t.model.NewHTTPClient()
		}
		return t.model.NewClient(o)
	}
	u, _ := url.Parse(t.cfg.cosmosEndpoint)
	if isLoopback(u.Hostname()) {
		// A local emulator's self-signed certificate.
		o.Transport = &http.Client{Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
			MaxIdleConnsPerHost: 256,
			ForceAttemptHTTP2:   true,
		}}
	}
	cred, err := azcosmos.NewKeyCredential(t.cfg.cosmosKey)
	if err != nil {
		return nil, fmt.Errorf("-cosmos-key: %w", err)
	}
	client, err := azcosmos.NewClientWithKey(t.cfg.cosmosEndpoint, cred, o)
	if err != nil {
		return nil, fmt.Errorf("cosmos endpoint %s: %w", t.endpoint(), err)
	}
	return client, nil
}

// rate returns the function that says how many RU the last whole second
// served: the embedded model's own count, or else what the client saw.
func (t *cosmosTarget) rate(s *series) func(time.Time) float64 {
	m := t.model
	if m == nil {
		return s.rate
	}
	return func(time.Time) float64 {
		h := m.History()
		if len(h) < 2 {
			return h[len(h)-1].RU
		}
		return h[len(h)-2].RU
	}
}

// endpoint names the target for messages, its secrets masked.
func (t *cosmosTarget) endpoint() string {
	if t.cfg.cosmosEndpoint != "" {
		return redact.String(t.cfg.cosmosEndpoint)
	}
	return "(embedded model)"
}

// reachable dials the endpoint's host, so that a wrong address fails in
// seconds with a clear error rather than after the SDK's retries.
func reachable(ctx context.Context, endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return redact.Error(fmt.Errorf("-cosmos-endpoint %s: %w", endpoint, err))
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80"}[u.Scheme]+map[string]string{"https": "443"}[u.Scheme])
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(dctx, "tcp", host)
	if err != nil {
		return redact.Error(fmt.Errorf("cosmos endpoint %s is unreachable: %w", endpoint, err))
	}
	c.Close()
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loadBatcher loads items through a Batcher whose limiter grants the
// configured capacity, with the samples/cosmos Loader as its processor.
func loadBatcher(ctx context.Context, cfg config, lim batcher.RateLimiter, t *cosmosTarget, items []cosmos.Item, prog *progress, metrics *metricsServer) (phase, error) {
	s := newSeries()
	cc, closeTarget, err := t.open(ctx, s, false)
	if err != nil {
		return phase{}, err
	}
	defer closeTarget()
	var sent sends
	b := batcher.NewBatcher().WithRateLimiter(lim).WithEmitBatch()
	b.AddListener(sent.event)
	if err := b.Start(ctx); err != nil {
		return phase{}, err
	}
	if err := metrics.serve(ctx, b); err != nil {
		b.Close()
		return phase{}, err
	}
	loader := cosmos.NewLoader(cc, b).WithMargin(cfg.margin)

	o, err := t.startOther(ctx, "batcher")
	if err != nil {
		b.Close()
		return phase{}, err
	}
	s.restart() // count from the first item on
	stop := prog.start("batcher", len(items), func() int64 { return loader.Stats().Written }, s, t.rate(s))
	loadErr := loader.LoadAll(ctx, slices.Values(items))
	shutdownErr := b.Shutdown(context.WithoutCancel(ctx))
	elapsed := time.Since(s.start())
	stop()
	other := o.finish()

	ls, bs := loader.Stats(), b.Stats()
	p := phase{name: "batcher", items: len(items), written: ls.Written, failed: bs.Failed, elapsed: elapsed}
	p.first, p.resent = sent.counts()
	p.fill(s, t)
	p.other = other
	if loadErr != nil {
		p.firstErr = loadErr
	}
	if shutdownErr != nil && p.firstErr == nil {
		p.firstErr = shutdownErr
	}
	if ctx.Err() != nil {
		return p, ctx.Err()
	}
	p.verify(ctx, cfg, t, cc, items)
	return p, nil
}

// naiveAttempts and naiveBackoff are the naive loader's own retries, on top
// of the SDK's: a fixed back-off, as such code often has.
const (
	naiveAttempts = 10
	naiveBackoff  = time.Second
)

// loadNaive loads items the way code without a rate limiter does: every
// item at once (or workers at a time), each upserted with the SDK's default
// retries (three, honouring the 429's retry-after), and tried again after a
// second when those run out or the request failed on the way, up to ten
// times.
func loadNaive(ctx context.Context, cfg config, t *cosmosTarget, items []cosmos.Item, prog *progress) (phase, error) {
	s := newSeries()
	cc, closeTarget, err := t.open(ctx, s, true)
	if err != nil {
		return phase{}, err
	}
	defer closeTarget()
	var written, failed, first, resent atomic.Int64
	var errOnce sync.Once
	var firstErr error
	var sem chan struct{}
	if cfg.naiveWorkers > 0 {
		sem = make(chan struct{}, cfg.naiveWorkers)
	}

	o, err := t.startOther(ctx, "naive")
	if err != nil {
		return phase{}, err
	}
	s.restart()
	stop := prog.start("naive", len(items), written.Load, s, t.rate(s))
	var wg sync.WaitGroup
	for _, it := range items {
		if sem != nil {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				break
			}
		}
		wg.Go(func() {
			if sem != nil {
				defer func() { <-sem }()
			}
			pk := azcosmos.NewPartitionKeyString(it.PartitionKey)
			var tries atomic.Int64 // requests sent for this item, the SDK's retries included
			defer func() {
				if n := tries.Load(); n > 0 {
					first.Add(1)
					resent.Add(n - 1)
				}
			}()
			ictx := withTries(ctx, &tries)
			for attempt := 1; ; attempt++ {
				_, err := cc.UpsertItem(ictx, pk, it.Body, nil)
				if err == nil {
					written.Add(1)
					return
				}
				// Retry 429s and anything that is not the service refusing
				// the document (a timeout, a broken connection, a 5xx).
				var re *azcore.ResponseError
				refused := errors.As(err, &re) && re.StatusCode >= 400 && re.StatusCode < 500 && re.StatusCode != http.StatusTooManyRequests
				if !refused && attempt < naiveAttempts && ctx.Err() == nil {
					select {
					case <-time.After(naiveBackoff):
						continue
					case <-ctx.Done():
					}
				}
				failed.Add(1)
				errOnce.Do(func() { firstErr = fmt.Errorf("item %s: %w", it.ID, err) })
				return
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(s.start())
	stop()
	other := o.finish()

	p := phase{name: "naive", items: len(items), written: written.Load(), failed: failed.Load(), elapsed: elapsed, firstErr: firstErr,
		first: first.Load(), resent: resent.Load()}
	p.fill(s, t)
	p.other = other
	if ctx.Err() != nil {
		return p, ctx.Err()
	}
	p.verify(ctx, cfg, t, cc, items)
	return p, nil
}

// startOther starts the other workload, if the config asks for one; its
// finish is then safe to call on nil.
func (t *cosmosTarget) startOther(ctx context.Context, phase string) (*other, error) {
	if t.cfg.otherRU <= 0 {
		return nil, nil
	}
	return startOther(ctx, t, t.cfg.otherRU, phase)
}

// served returns the units the service served during the phase: the
// loader's and the other workload's.
func (p *phase) served() float64 {
	if p.server != nil {
		return p.server.RU // exact, and without the setup's metadata requests
	}
	if p.other != nil {
		return p.units + p.other.units
	}
	return p.units
}

// used returns the share of the capacity the service served during the
// phase (the other workload's included): served over what the one-second
// windows the phase ran in could serve, each window whole, since a service
// that counts fixed windows (as the embedded model does) lets the last,
// partial, one serve its whole budget.
func (p *phase) used(cfg config) float64 {
	provisioned := float64(cfg.ru)
	if cfg.target() == "clickhouse" {
		provisioned = float64(cfg.capacity)
	}
	return p.served() / (provisioned * float64(max(len(p.perSec), 1)))
}

// fill copies the counts of s, and of the embedded model, into p.
func (p *phase) fill(s *series, t *cosmosTarget) {
	p.units, p.requests, p.throttle = s.totals()
	p.perSec, p.thrSec = s.seconds(p.elapsed)
	if t.model != nil {
		// The model's own seconds are exact: the client's put a response in
		// the second it arrived, not the one the model charged it to.
		st := t.model.Stats()
		p.server = &st
		p.perSec, p.thrSec = p.perSec[:0], p.thrSec[:0]
		for _, sec := range t.model.History() {
			p.perSec = append(p.perSec, sec.RU)
			p.thrSec = append(p.thrSec, sec.Throttled)
		}
		for n := len(p.perSec); n > 1 && p.perSec[n-1] == 0 && p.thrSec[n-1] == 0; n-- {
			p.perSec, p.thrSec = p.perSec[:n-1], p.thrSec[:n-1] // the verification's second
		}
		p.offset = s.start().Sub(t.created).Seconds()
	}
	for _, v := range p.perSec {
		p.peak = max(p.peak, v)
	}
}

// verify checks that the container holds every item exactly once: in the
// embedded model by reading its store, in a real account by counting the
// container (which may hold other documents too).
func (p *phase) verify(ctx context.Context, cfg config, t *cosmosTarget, cc *azcosmos.ContainerClient, items []cosmos.Item) {
	if t.model != nil {
		docs, err := t.model.Items(cfg.database, cfg.container)
		if err != nil {
			p.verified = "could not read the model: " + err.Error()
			return
		}
		want := make(map[string]int, len(items))
		for _, it := range items {
			want[it.PartitionKey+"\x00"+it.ID]++
		}
		missing, extra := len(want), 0
		for _, d := range docs {
			var doc map[string]any
			_ = json.Unmarshal(d, &doc)
			id, _ := doc["id"].(string)
			pk, _ := doc[strings.TrimPrefix(cfg.pkPath, "/")].(string)
			if pk == otherPK {
				continue
			}
			if n, ok := want[pk+"\x00"+id]; ok && n == 1 {
				want[pk+"\x00"+id] = 0
				missing--
			} else {
				extra++
			}
		}
		if missing == 0 && extra == 0 {
			p.verified = fmt.Sprintf("all %s items stored, each once", commas(int64(len(items))))
		} else {
			p.verified = fmt.Sprintf("MISMATCH: %d items missing, %d unexpected documents", missing, extra)
		}
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pager := cc.NewQueryItemsPager("SELECT VALUE COUNT(1) FROM c", azcosmos.NewPartitionKey(), nil)
	page, err := pager.NextPage(qctx)
	if err != nil || len(page.Items) != 1 {
		p.verified = fmt.Sprintf("could not count the container: %v", err)
		return
	}
	p.verified = fmt.Sprintf("the container holds %s documents", page.Items[0])
	if cfg.otherRU > 0 {
		p.verified += fmt.Sprintf(" (the other workload's %q partition included)", otherPK)
	}
}
