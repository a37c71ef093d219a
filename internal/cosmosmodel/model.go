// Package cosmosmodel is a throttling model of Azure Cosmos DB: an HTTPS
// server, in process, that speaks enough of the Cosmos DB NoSQL REST API for
// the Go SDK (azcosmos v1.5.0) and does what Azure does and the local
// emulators do not: it enforces a provisioned throughput in RU per second,
// answers 429 when a request would exceed it, and reports realistic request
// charges. It counts the RU it served each second and every 429, for tests
// and demos.
//
// # Use
//
//	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: 10000})
//	if err != nil { ... }
//	if err := m.Start(); err != nil { ... }
//	defer m.Close()
//	client, err := m.NewClient(nil) // an *azcosmos.Client that trusts m's certificate
//	// NewClient(nil) leaves 429s to the caller (*azcore.ResponseError,
//	// StatusCode 429, header x-ms-retry-after-ms); NewClient(&azcosmos.ClientOptions{})
//	// lets the SDK retry them itself (3 times, honouring the retry-after).
//	... create a database and a container, write items ...
//	st := m.Stats()       // RU served, 429s, requests, peak RU in one second
//	h := m.History()      // RU, requests and 429s of each second since New
//	items, _ := m.Items("db", "container") // in-memory mode: what is stored
//
// The exported API: [Options] (ProvisionedRU or AutoscaleMaxRU,
// Partitions, DatabaseThroughput, Serverless, OffersForbidden, Backend,
// BackendTransport, Addr, Observe), [New], [Model.Start], [Model.Close],
// [Model.URL], [Model.Client] (an *http.Client trusting the model's
// self-signed certificate), [Model.NewHTTPClient] (one with connections of
// its own), [Model.NewClient], [Model.ClientOptions], [Model.Handler]
// (serve without a listener), [Model.Stats], [Model.History],
// [Model.PartitionStats], [Model.PartitionHistory], [Model.Items]; the
// throughput's controls [Model.SetProvisionedRU], [Model.SetAutoscaleMaxRU],
// [Model.Throughput], [Model.SetOtherWorkload], [Model.Partitions],
// [Model.PartitionOf]; the charge functions [ReadCharge], [WriteCharge],
// [QueryCharge] and their constants; [Stats], [PartitionStats] and
// [Second].
//
// # Two modes
//
// By default (Options.Backend nil) the model keeps documents in memory and
// answers itself: the database account (GET /), create, read and delete of
// databases and containers, create, upsert, replace, read and delete of
// items, transactional batches (atomic, at most 100 operations, 207 with 424s
// when one fails, as Azure does), and two queries, "SELECT * FROM c" and
// "SELECT VALUE COUNT(1) FROM c" (any alias, one partition or all). Anything
// else is answered 400 with a message naming it. It checks no authorization.
//
// With Options.Backend set it is a reverse proxy in front of a real Cosmos DB
// API server (such as @vercel/cosmosdb-server): it forwards what it admits,
// replaces the backend's x-ms-request-charge with its own figure (and the
// per-operation charges of batches), and rewrites the account's endpoints to
// its own URL, since the SDK sends every request after the first to the
// endpoint the account names.
//
// # Throughput
//
// The budget is the provisioned RU per second (Options.ProvisionedRU, or
// the maximum of an autoscale throughput, Options.AutoscaleMaxRU) in fixed
// one-second windows counted from [New], split evenly between the physical
// partitions (Options.Partitions, 1 by default). A document request draws
// on the partition its partition key (the x-ms-documentdb-partitionkey
// header) is hashed to ([Model.PartitionOf]); one without (a cross-partition
// query) on partition 0. It is answered 429 (code TooManyRequests, headers
// x-ms-substatus: 3200, x-ms-retry-after-ms: the milliseconds until the
// next window, x-ms-request-charge: 0) when the RU its partition already
// served in the current window plus its charge would exceed the
// partition's budget; the other partitions go on serving. A request that
// costs more than the partition's budget on its own is admitted into a
// window in which its partition has served nothing yet, as it could never
// run otherwise. Azure lets a request overdraw a partition's budget a
// little; the model has a hard bound, which is simpler to reason about in
// tests. Requests on the account, databases, containers and offers draw on
// no budget. In proxy mode a read is admitted on the charge of a 1 KB read
// and charged what the document really costs once the backend has
// answered.
//
// Autoscale, as in Azure, scales at once: requests are throttled only
// beyond the maximum, and the throughput it is scaled to
// ([Stats].CurrentRU, and the offer's offerThroughput) follows the load
// between 10% and 100% of the maximum.
//
// The throughput can change mid-run ([Model.SetProvisionedRU],
// [Model.SetAutoscaleMaxRU], or the SDK's ReplaceThroughput): the next
// request sees the new budget. [Model.SetOtherWorkload] runs another
// workload that takes its rate from a partition's budget (or all of
// theirs), request by request, and is throttled like anyone.
//
// # Reading the throughput
//
// The SDK's ContainerClient.ReadThroughput and DatabaseClient.ReadThroughput
// work against the model, in both modes: they read the resource's _rid,
// query /offers for the offer naming it, and read that offer. The model
// answers with its own budget: a manual offer (content.offerThroughput), or
// an autoscale one (content.offerAutopilotSettings.maxThroughput, and the
// throughput scaled to now in offerThroughput). The offer is on every
// container, or with Options.DatabaseThroughput on every database (a
// container's read then finds none: the SDK returns a 404). An unlimited
// model has no offer (404). ReplaceThroughput (a PUT of the offer) changes
// the model's throughput. Options.Serverless answers offer requests 400
// ("not supported for serverless accounts") and Options.OffersForbidden 403,
// as Azure does.
//
// # Driving the scenarios
//
// The issue-14 scenarios run on an in-memory model started in the
// benchmark's process; per-second figures come from [Model.History] (RU,
// 429s, the other workload's RU, and each second's BudgetRU), per
// partition from [Model.PartitionHistory] and [Model.PartitionStats].
// Utilization of a second is RU / (BudgetRU − OtherRU).
//
//   - S1 (limiter = provisioned): New(Options{ProvisionedRU: 10000}).
//   - S2, S3 (limiter 2x, 20x): the same model; only the limiter differs.
//     The bad-input check: ProvisionedRU 500, limiter 10,000.
//   - S4 (10,000 → 4,000 at 20 s → 10,000 at 40 s): ProvisionedRU 10000,
//     and m.SetProvisionedRU(4000), m.SetProvisionedRU(10000) from
//     time.AfterFunc; History's BudgetRU shows each second's figure.
//   - S5 (4 partitions, half the writes to one key): Options{ProvisionedRU:
//     10000, Partitions: 4}; [Model.PartitionOf] says where a key goes; the
//     ideal is the larger of the hot partition's RU / 2,500 and the total
//     RU / 10,000.
//   - S6 (another workload takes 30% from 10 s to 30 s):
//     m.SetOtherWorkload(-1, 3000) at 10 s and m.SetOtherWorkload(-1, 0) at
//     30 s; its 429s are Stats.OtherThrottled (of OtherRequests). It is
//     simulated inside the model, so it has no latency of its own: for the
//     other workload's p99, run a real client beside the loader instead
//     (as cmd/bulkload does) and leave SetOtherWorkload off.
//   - S7 (discovery: manual 10,000, then autoscale up to 20,000):
//     ProvisionedRU 10000, then m.SetAutoscaleMaxRU(20000) (or the SDK's
//     ReplaceThroughput); cosmosbulk.ThroughputLimiter reads it through the
//     SDK and emits a CapacityChanged event when it sees the change.
//
// # Charges
//
// See [ReadCharge], [WriteCharge], [QueryCharge]: 1 RU for a 1 KB point read,
// 5.71 RU for a 1 KB write, growing linearly with size along Azure's
// published figures.
//
// # Time and tests
//
// The model calls time.Now, so inside a testing/synctest bubble it runs on
// fake time: serve requests through [Model.Handler] (no network) in a bubble
// to test the windows deterministically.
package cosmosmodel

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher/internal/redact"
)

// maxPartitions is the most physical partitions a Model has.
const maxPartitions = 1024

// Key is a valid account key for clients of the model, which checks no
// authorization: the Cosmos DB emulator's well-known key.
const Key = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="

// Options configure a Model.
type Options struct {
	// ProvisionedRU is the provisioned (manual) throughput in RU per
	// second. 0 means unlimited: no request is throttled, but charges are
	// still reported and counted. Negative values are invalid.
	ProvisionedRU float64

	// AutoscaleMaxRU, if more than 0, makes the throughput autoscale with
	// this maximum, in RU per second, instead of ProvisionedRU (set one or
	// the other). As in Azure, the account scales at once between 10% and
	// 100% of the maximum with the load: requests are throttled only
	// beyond the maximum, and the throughput it is scaled to
	// ([Stats].CurrentRU) is the RU served in the last second, at least
	// 10% of the maximum. Negative values are invalid.
	AutoscaleMaxRU float64

	// Partitions is the number of physical partitions, at least 1 (the
	// default, 0, means 1). The budget is split evenly between them, and
	// each partition key is hashed to one ([Model.PartitionOf]): a
	// partition whose second is spent answers 429 while the others still
	// serve. At most 1024.
	Partitions int

	// DatabaseThroughput puts the throughput on the databases (shared
	// throughput) rather than on the containers: reading a container's
	// throughput then finds no offer (the SDK returns a 404), and reading
	// its database's finds it. The budget is the model's either way.
	DatabaseThroughput bool

	// Serverless makes the account serverless: reading or replacing a
	// throughput is answered 400 ("not supported for serverless
	// accounts"), as Azure does. Requests are still throttled beyond the
	// model's budget, if it has one.
	Serverless bool

	// OffersForbidden answers every request on offers (throughput reads
	// and replaces) 403 Forbidden, as Azure does for an identity that may
	// not read them.
	OffersForbidden bool

	// Backend is the URL of a Cosmos DB API server to forward to, such as
	// https://127.0.0.1:8081/. nil keeps documents in memory.
	Backend *url.URL

	// BackendTransport sends requests to Backend. The default trusts the
	// system's certificates, and skips verification for a loopback Backend
	// only (local servers use self-signed certificates).
	BackendTransport http.RoundTripper

	// Addr is the address Start listens on. The default is 127.0.0.1:0,
	// a free port on the loopback interface.
	Addr string

	// Observe, if set, is called for every request on a document as the
	// model admits or throttles it: at is the moment the model counts it
	// in (the moment it arrived, its body read), charge the RU it was
	// admitted on (in proxy mode the estimate, exact for writes), admitted
	// false for a 429. It runs on the request's goroutine, before the
	// request goes on; it must be quick and safe for concurrent use. A test
	// can compare at with when the client sent the request.
	Observe func(r *http.Request, at time.Time, charge float64, admitted bool)
}

// A Model is a throttling Cosmos DB model; see the package doc. Create it
// with New, then Start it to listen, or serve its Handler yourself. Its
// methods are safe for concurrent use. Close stops it; it cannot be
// restarted.
type Model struct {
	opts    Options
	meter   *meter
	store   *store  // in-memory mode
	backend *client // proxy mode
	handler http.Handler
	offers  offers

	mu struct {
		sync.Mutex
		started bool
		closed  bool
		url     string
		srv     *http.Server
		done    chan struct{} // closed when Serve has returned
		pool    *x509.CertPool
		client  *http.Client
		clients []*http.Client // made by NewHTTPClient
	}
}

// New checks opts and returns a Model whose throughput windows start now.
// It does not listen yet: see Start and Handler.
func New(opts Options) (*Model, error) {
	var errs []error
	if opts.ProvisionedRU < 0 || opts.ProvisionedRU != opts.ProvisionedRU {
		errs = append(errs, fmt.Errorf("cosmosmodel: ProvisionedRU is %v; want 0 (unlimited) or more", opts.ProvisionedRU))
	}
	if opts.AutoscaleMaxRU < 0 || opts.AutoscaleMaxRU != opts.AutoscaleMaxRU {
		errs = append(errs, fmt.Errorf("cosmosmodel: AutoscaleMaxRU is %v; want 0 (manual throughput) or more", opts.AutoscaleMaxRU))
	}
	if opts.AutoscaleMaxRU > 0 && opts.ProvisionedRU > 0 {
		errs = append(errs, fmt.Errorf("cosmosmodel: ProvisionedRU is %v and AutoscaleMaxRU is %v; set one or the other", opts.ProvisionedRU, opts.AutoscaleMaxRU))
	}
	if opts.Partitions < 0 || opts.Partitions > maxPartitions {
		errs = append(errs, fmt.Errorf("cosmosmodel: Partitions is %d; want 1 to %d (0 means 1)", opts.Partitions, maxPartitions))
	}
	if b := opts.Backend; b != nil && (b.Scheme != "https" && b.Scheme != "http" || b.Host == "") {
		errs = append(errs, fmt.Errorf("cosmosmodel: Backend %q is not an http(s) URL with a host", redact.String(b.String())))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	m := &Model{opts: opts, meter: newMeter(time.Now(), opts.Partitions, opts.ProvisionedRU, opts.AutoscaleMaxRU)}
	m.offers.rids = map[string]resource{}
	if opts.Backend == nil {
		m.store = newStore()
		m.handler = http.HandlerFunc(m.serveMemory)
	} else {
		m.backend = newClient(opts.Backend, opts.BackendTransport)
		m.handler = http.HandlerFunc(m.serveProxy)
	}
	return m, nil
}

// Start listens on Options.Addr and serves HTTPS, with a self-signed
// certificate for 127.0.0.1, ::1 and localhost that Client trusts, and
// HTTP/2. It returns once the model accepts connections.
func (m *Model) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return errors.New("cosmosmodel: Start after Close")
	}
	if m.mu.started {
		return errors.New("cosmosmodel: Start called twice")
	}
	cert, pool, err := selfSigned()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", m.opts.Addr)
	if err != nil {
		return fmt.Errorf("cosmosmodel: listen on %s: %w", m.opts.Addr, err)
	}
	srv := &http.Server{
		Handler:           m.handler,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          discardLog,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "") // returns http.ErrServerClosed on Close
	}()
	m.mu.started = true
	m.mu.srv = srv
	m.mu.done = done
	m.mu.url = "https://" + ln.Addr().String() + "/"
	m.mu.pool = pool
	m.mu.client = newHTTPClient(pool)
	return nil
}

func newHTTPClient(pool *x509.CertPool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxConnsPerHost:     16, // HTTP/2 runs 250 requests on each
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext, // loopback, but the process may be very busy
	}}
}

// Close stops the server, closing its connections, and waits for its
// goroutines to end. It is safe to call more than once, and before Start.
func (m *Model) Close() error {
	m.mu.Lock()
	if m.mu.closed {
		m.mu.Unlock()
		return nil
	}
	m.mu.closed = true
	srv, done, clients := m.mu.srv, m.mu.done, append([]*http.Client{m.mu.client}, m.mu.clients...)
	m.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Close()
	<-done
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	if m.backend != nil {
		m.backend.c.CloseIdleConnections()
	}
	return err
}

// URL returns the model's endpoint for azcosmos.NewClientWithKey, such as
// https://127.0.0.1:34567/; "" before Start.
func (m *Model) URL() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.url
}

// Client returns an HTTP client that trusts the model's certificate and
// speaks HTTP/2 to it, over at most 16 connections (so thousands of
// concurrent requests queue for a stream rather than dial a storm of
// connections); nil before Start. Give it to azcosmos as the
// transport (ClientOptions does). Clients that cannot use it must skip
// certificate verification, for 127.0.0.1 only.
func (m *Model) Client() *http.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.client
}

// NewHTTPClient returns a new HTTP client like Client, with connections of
// its own: a client for another process's traffic, which should not queue
// behind this one's for a connection. Close closes its idle connections.
// It returns nil before Start.
func (m *Model) NewHTTPClient() *http.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.pool == nil {
		return nil
	}
	c := newHTTPClient(m.mu.pool)
	m.mu.clients = append(m.mu.clients, c)
	return c
}

// ClientOptions returns azcosmos client options whose transport is Client,
// and which leave 429s to the caller: MaxRetries is -1, so a throttled
// request fails with an *azcore.ResponseError of StatusCode 429 instead of
// being retried by the SDK. Set Retry.MaxRetries to 0 for the SDK's default
// retries. It returns nil before Start.
func (m *Model) ClientOptions() *azcosmos.ClientOptions {
	c := m.Client()
	if c == nil {
		return nil
	}
	o := &azcosmos.ClientOptions{}
	o.Transport = c
	o.Retry = policy.RetryOptions{MaxRetries: -1}
	return o
}

// NewClient returns an azcosmos client for the model, with Key as its key.
// o may be nil for ClientOptions(); otherwise a nil Transport is set to
// Client, and a Transport given (such as NewHTTPClient's) is kept. It fails
// before Start.
func (m *Model) NewClient(o *azcosmos.ClientOptions) (*azcosmos.Client, error) {
	c := m.Client()
	if c == nil {
		return nil, errors.New("cosmosmodel: NewClient before Start")
	}
	if o == nil {
		o = m.ClientOptions()
	} else {
		cp := *o
		if cp.Transport == nil {
			cp.Transport = c
		}
		o = &cp
	}
	cred, err := azcosmos.NewKeyCredential(Key)
	if err != nil {
		return nil, err
	}
	return azcosmos.NewClientWithKey(m.URL(), cred, o)
}

// Handler returns the model as an http.Handler, to serve requests without a
// listener (for instance in a testing/synctest bubble, with
// httptest.NewRecorder). It names its own endpoint in the database account
// as https://<the request's Host>/.
func (m *Model) Handler() http.Handler { return m.handler }

// Stats returns what the model served so far.
func (m *Model) Stats() Stats { return m.meter.stats(time.Now()) }

// History returns the model's seconds, from its creation (or the oldest
// kept: a day's worth) to the current one, which is still counting.
func (m *Model) History() []Second { return m.meter.history(time.Now(), -1) }

// SetProvisionedRU makes the throughput manual, ru RU per second, from now
// on (0: unlimited), split evenly between the partitions; the current
// second keeps what it served. Negative values are treated as 0. Reads of
// the throughput through the SDK see the change at once.
func (m *Model) SetProvisionedRU(ru float64) {
	m.meter.setThroughput(time.Now(), max(ru, 0), 0)
}

// SetAutoscaleMaxRU makes the throughput autoscale with a maximum of ru RU
// per second from now on (see Options.AutoscaleMaxRU); ru <= 0 makes it
// unlimited.
func (m *Model) SetAutoscaleMaxRU(ru float64) {
	if ru <= 0 {
		m.meter.setThroughput(time.Now(), 0, 0)
		return
	}
	m.meter.setThroughput(time.Now(), 0, ru)
}

// Throughput returns the throughput configured now: the manual RU per
// second (0 if autoscale or unlimited) and the autoscale maximum (0 if
// manual).
func (m *Model) Throughput() (manualRU, autoscaleMaxRU float64) {
	return m.meter.throughput()
}

// SetOtherWorkload runs (ru > 0) or stops (ru <= 0) another workload, from
// now on, on physical partition p, or on all of them if p < 0 (ru split
// evenly): requests of 1 KB writes (WriteCharge(1024) RU each) spaced
// evenly at ru RU per second, each admitted or throttled against the
// partition's budget like any request, at its own moment. It stands for
// another service writing to the same container: what it is served is
// taken from the budget the model's clients see. A throttled request is
// counted (Stats.OtherThrottled) and not retried. It is simulated when the
// model is next asked (a request, Stats, History), with no goroutine of
// its own. p beyond the last partition means the last.
func (m *Model) SetOtherWorkload(p int, ru float64) {
	m.meter.setOther(time.Now(), p, max(ru, 0), WriteCharge(1024))
}

// Partitions returns the number of physical partitions.
func (m *Model) Partitions() int { return m.meter.parts }

// PartitionOf returns the physical partition (0 to Partitions()-1) that a
// partition key with these values is hashed to, such as
// PartitionOf("customer-1") for a container partitioned on one string
// property. Requests that name no partition key (cross-partition queries)
// draw on partition 0.
func (m *Model) PartitionOf(values ...any) int {
	b, err := json.Marshal(values)
	if err != nil {
		return 0
	}
	return partitionOf(string(b), m.meter.parts)
}

// PartitionStats returns what each physical partition served so far.
func (m *Model) PartitionStats() []PartitionStats { return m.meter.partitionStats(time.Now()) }

// PartitionHistory returns physical partition p's seconds, as History
// does for the whole model; nil if p is not a partition.
func (m *Model) PartitionHistory(p int) []Second {
	if p < 0 || p >= m.meter.parts {
		return nil
	}
	return m.meter.history(time.Now(), p)
}

// Items returns the documents of a container in the in-memory store, as
// stored (with the system properties _rid, _self, _etag, _ts), ordered by
// partition key and id. It fails in proxy mode, and for a database or
// container that does not exist.
func (m *Model) Items(database, container string) ([][]byte, error) {
	if m.store == nil {
		return nil, errors.New("cosmosmodel: Items is only available in in-memory mode; query the backend instead")
	}
	return m.store.items(database, container)
}
