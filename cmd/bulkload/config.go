package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/internal/leasestore"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/samples/cosmos"
)

// config is what the flags say.
type config struct {
	items      int
	size       int
	partitions int
	input      string
	pkPath     string

	ru       int
	capacity int
	margin   float64
	otherRU  int

	cosmosEndpoint string
	cosmosKey      string
	database       string
	container      string

	clickhouse string
	table      string

	leaseStore  string // a lease store address, for capacity shared with other loaders
	leasePrefix string
	reserved    int
	factor      int

	chart        string
	naive        bool
	naiveWorkers int
	timeout      time.Duration
	quiet        bool
	metricsAddr  string // where to serve the Batcher's metrics, "" for nowhere
	limiter      string // limiterController or limiterFixed
}

// target says where the items go.
func (c config) target() string {
	switch {
	case c.clickhouse != "":
		return "clickhouse"
	case c.cosmosEndpoint != "":
		return "cosmos"
	}
	return "embedded"
}

// unit is what the capacity counts.
func (c config) unit() string {
	if c.clickhouse != "" {
		return "rows"
	}
	return "RU"
}

// A usageError is a bad flag or flag value; main exits with status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

const (
	defaultItems = 10000
	defaultRU    = 10000
	// defaultClickHouseCapacity is the rows per second the ClickHouse path
	// grants when -capacity is not given.
	defaultClickHouseCapacity = 50000
	maxDocSize                = 2 << 20
	// defaultOtherRU is the other workload's RU/s on the embedded model
	// (at most half of -ru).
	defaultOtherRU = 1000
)

// parseFlags reads args into a config and checks every value, naming each
// bad flag and its value in one error.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bulkload", flag.ContinueOnError)
	// The flag package prints a bad flag's error, and the usage, itself:
	// main prints the error once instead, with a pointer to -h, and the
	// usage goes out for -h alone.
	fs.SetOutput(io.Discard)
	fs.IntVar(&c.items, "items", defaultItems, "number of documents to generate (not with -input)")
	fs.IntVar(&c.size, "size", 1024, "approximate size of each generated document, in bytes (64 B to 2 MB)")
	fs.IntVar(&c.partitions, "partitions", 20, "number of distinct partition key values in the generated documents")
	fs.StringVar(&c.input, "input", "", "a JSON-lines file of documents to load instead of generated ones (each with an id and the partition key property; - for standard input)")
	fs.StringVar(&c.pkPath, "partition-key", "/pk", "the container's partition key path; documents from -input must have it as a string")
	fs.IntVar(&c.ru, "ru", defaultRU, "provisioned throughput in RU/s: of the embedded model, or of the real container with -cosmos-endpoint")
	fs.IntVar(&c.capacity, "capacity", 0, "the Batcher's rate limit, in RU/s (rows/s with -clickhouse); 0 means -ru less -other-ru (50,000 rows/s with -clickhouse)")
	fs.IntVar(&c.otherRU, "other-ru", -1, "another workload writing to the same container at this many RU/s while each loader runs, to show who the throttling hurts; the default -1 means 1,000 RU/s for the embedded model and none for a real endpoint")
	fs.StringVar(&c.limiter, "limiter", limiterController, "the Batcher's rate limiter: controller finds the throughput the service really gives, up to -capacity (cutting on 429s, probing back up), so a -capacity above it still loads at its pace; fixed grants -capacity whatever happens, as if it were right")
	fs.Float64Var(&c.margin, "margin", cosmos.DefaultMargin, "how much more than its RU charge each write counts for against the Batcher's capacity, for network delays (0.02: about 98% of the capacity is used)")
	fs.StringVar(&c.cosmosEndpoint, "cosmos-endpoint", "", "a real Cosmos DB endpoint, such as https://myaccount.documents.azure.com:443/ or https://127.0.0.1:8081/ (default: the embedded model)")
	fs.StringVar(&c.cosmosKey, "cosmos-key", "", "the account key for -cosmos-endpoint (default: $COSMOS_KEY, else the emulator's well-known key)")
	fs.StringVar(&c.database, "database", "bulkload", "the database to load into (created if missing)")
	fs.StringVar(&c.container, "container", "items", "the container to load into (created if missing, with -partition-key)")
	fs.StringVar(&c.clickhouse, "clickhouse", "", "load into ClickHouse instead, at this DSN, such as clickhouse://127.0.0.1:9000/default")
	fs.StringVar(&c.table, "table", "bulkload_items", "the ClickHouse table to load into (created if missing)")
	fs.StringVar(&c.leaseStore, "lease-store", "", "share -capacity with the other loaders that use this lease store: "+leasestore.Usage+". Passwords and SAS tokens are never printed")
	fs.StringVar(&c.leasePrefix, "lease-prefix", "bulkload", "the name of the shared capacity in the lease store: loaders with the same store and prefix share it")
	fs.IntVar(&c.reserved, "reserved", 0, "with -lease-store: capacity reserved for this loader alone, on top of its share of -capacity")
	fs.IntVar(&c.factor, "factor", ratelimiter.DefaultFactor, "with -lease-store: the capacity of one partition of the shared capacity; -capacity must be a multiple of it")
	fs.StringVar(&c.chart, "chart", filepath.Join(os.TempDir(), "bulkload-ru.svg"), "where to write the chart of RU/s over time (SVG); empty for none")
	fs.BoolVar(&c.naive, "naive", true, "also load with the naive loader (unbounded concurrency, the SDK's own retries) and compare")
	fs.IntVar(&c.naiveWorkers, "naive-workers", 0, "how many writes the naive loader runs at once; 0 means one goroutine per item (unbounded)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Minute, "give up on the whole run after this long")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress line")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve the Batcher's metrics in the Prometheus text format at http://ADDR/metrics while the run lasts, such as 127.0.0.1:9464 (:0 picks a free port, which the output names); empty for none")
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "Usage: bulkload [flags]\n\nLoads documents through the batcher into an embedded throttling Cosmos DB model\n(default), a real Cosmos DB (-cosmos-endpoint) or ClickHouse (-clickhouse), and\ncompares it with a naive loader.\n\nFlags:\n")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return c, err
		}
		return c, &usageError{errors.New(redact.String(err.Error()))} // the value of a bad flag may hold a password
	}
	if fs.NArg() > 0 {
		return c, &usageError{fmt.Errorf("unexpected arguments %q: bulkload takes only flags", fs.Args())}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var errs []error
	bad := func(name string, value any, why string) {
		// The value and the reason may hold an address with a password.
		errs = append(errs, errors.New(redact.String(fmt.Sprintf("-%s %v: %s", name, value, why))))
	}
	if c.items < 1 {
		bad("items", c.items, "must be at least 1")
	}
	if c.input != "" && set["items"] {
		bad("items", c.items, "cannot be used with -input, which loads every document of the file")
	}
	if c.size < 64 || c.size > maxDocSize {
		bad("size", c.size, "must be from 64 to 2097152 bytes (Cosmos DB's largest document)")
	}
	if c.partitions < 1 {
		bad("partitions", c.partitions, "must be at least 1")
	}
	if c.input != "" && c.input != "-" {
		if fi, err := os.Stat(c.input); err != nil {
			bad("input", c.input, "cannot be read: "+err.Error())
		} else if fi.IsDir() {
			bad("input", c.input, "is a directory, not a JSON-lines file")
		}
	}
	if p := c.pkPath; !strings.HasPrefix(p, "/") || len(p) < 2 || strings.Count(p, "/") > 1 {
		bad("partition-key", p, "must be a top-level property path such as /pk")
	}
	if c.ru < 1 {
		bad("ru", c.ru, "must be at least 1 RU/s")
	}
	if c.capacity < 0 {
		bad("capacity", c.capacity, "must be 0 (the default) or more")
	}
	if c.limiter != limiterController && c.limiter != limiterFixed {
		bad("limiter", c.limiter, "must be controller or fixed")
	}
	if !(c.margin >= 0 && c.margin < 1) {
		bad("margin", c.margin, "must be 0 or more and less than 1")
	}
	if c.naiveWorkers < 0 {
		bad("naive-workers", c.naiveWorkers, "must be 0 (unbounded) or more")
	}
	if c.timeout <= 0 {
		bad("timeout", c.timeout, "must be more than 0")
	}
	if a := c.metricsAddr; a != "" {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			bad("metrics-addr", a, "must be host:port or :port, such as 127.0.0.1:9464")
		}
	}
	if c.cosmosEndpoint != "" && c.clickhouse != "" {
		bad("clickhouse", c.clickhouse, "cannot be used with -cosmos-endpoint: choose one target")
	}
	if e := c.cosmosEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("cosmos-endpoint", e, "must be an http(s) URL with a host, such as https://127.0.0.1:8081/")
		}
		if c.cosmosKey == "" {
			c.cosmosKey = os.Getenv("COSMOS_KEY")
		}
		if c.cosmosKey == "" {
			c.cosmosKey = cosmosmodel.Key
		}
		if _, err := base64.StdEncoding.DecodeString(c.cosmosKey); err != nil {
			bad("cosmos-key", "(hidden)", "is not a base64 account key")
		}
	} else {
		for _, f := range []string{"cosmos-key"} {
			if set[f] {
				bad(f, "(given)", "needs -cosmos-endpoint")
			}
		}
	}
	if c.clickhouse != "" {
		if _, err := clickhouse.ParseDSN(c.clickhouse); err != nil {
			bad("clickhouse", c.clickhouse, "is not a ClickHouse DSN: "+err.Error())
		}
		if !validIdent(c.table) {
			bad("table", c.table, "must be a plain table name (letters, digits, _)")
		}
		if c.capacity == 0 {
			c.capacity = defaultClickHouseCapacity
		}
		c.naive = false // no naive comparison for ClickHouse
		if c.otherRU > 0 {
			bad("other-ru", c.otherRU, "is for Cosmos DB only")
		}
		c.otherRU = 0
	} else {
		switch {
		case c.otherRU == -1 && c.cosmosEndpoint == "":
			c.otherRU = min(defaultOtherRU, c.ru/2)
		case c.otherRU == -1:
			c.otherRU = 0
		case c.otherRU < 0 || c.otherRU >= c.ru:
			bad("other-ru", c.otherRU, fmt.Sprintf("must be from 0 to less than -ru (%d)", c.ru))
		}
		if c.capacity == 0 {
			c.capacity = max(c.ru-c.otherRU, 1)
		}
	}
	if c.leaseStore != "" {
		if _, err := leasestore.Parse(c.leaseStore); err != nil {
			errs = append(errs, fmt.Errorf("-lease-store: %w", err)) // it names the store, redacted
		}
		if c.reserved < 0 {
			bad("reserved", c.reserved, "must be 0 or more")
		}
		if c.factor < 1 {
			bad("factor", c.factor, "must be at least 1")
		} else if c.capacity%c.factor != 0 {
			bad("capacity", c.capacity, fmt.Sprintf("must be a multiple of -factor (%d) to be shared through -lease-store", c.factor))
		}
		if c.leasePrefix == "" {
			bad("lease-prefix", `""`, "must not be empty")
		}
	} else {
		for _, f := range []string{"reserved", "factor"} {
			if set[f] {
				bad(f, "(given)", "needs -lease-store")
			}
		}
	}
	for _, f := range []string{"database", "container"} {
		v := c.database
		if f == "container" {
			v = c.container
		}
		if v == "" || strings.ContainsAny(v, "/\\?#") {
			bad(f, fmt.Sprintf("%q", v), "must be a non-empty name without / \\ ? #")
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c, &usageError{err}
	}
	return c, nil
}

func validIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if r != '_' && (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return true
}
