// Package sharedsim runs several real OS processes, each a Batcher on a
// SharedResource over one real lease store (Redis, etcd or Azure Blob
// Storage), all with a backlog, and measures what the figures ask:
// the releases of all of them together in every one-second window, how the
// shared capacity is used and divided, how fast one instance ramps up, how
// fast a killed instance's partitions go to the others, and what happens
// while the store is down.
//
// One process runs the scenario (Run); it starts the instances as child
// processes of a binary that calls InstanceMain (cmd/sharedsim, or a test
// binary), reads what each reports on its standard output, kills one with
// SIGKILL, and stops and restarts the store.
package sharedsim

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/leasestore"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Stores are the lease stores an instance can use.
var Stores = leasestore.Kinds

// instanceFlags are one instance's settings, as command-line flags.
type instanceFlags struct {
	store, addr, prefix      string
	shared, reserved, factor int
	cost                     int
	lease                    time.Duration
}

func (f *instanceFlags) args() []string {
	return []string{
		"-store", f.store, "-addr", f.addr, "-prefix", f.prefix,
		"-shared", fmt.Sprint(f.shared), "-reserved", fmt.Sprint(f.reserved), "-factor", fmt.Sprint(f.factor),
		"-cost", fmt.Sprint(f.cost), "-lease", f.lease.String(),
	}
}

// InstanceMain runs one instance with the given arguments (flags: -store,
// -addr, -prefix, -shared, -reserved, -factor, -cost, -lease) until SIGTERM
// or SIGINT, when it shuts its Batcher down (releasing its leases), and
// returns the exit code. It reports on stdout, one line each:
//
//	READY <unix ns>                 the Batcher has started
//	R <unix ns> <cost>              a batch released (the moment the Batcher counts it from), with its cost
//	P <unix ns> <n> <p1,p2,...>     the partitions it counts changed
//	E <unix ns> <message>           the lease store failed
//	DONE <unix ns> <error or ok>    Shutdown returned
func InstanceMain(args []string, stdout, stderr io.Writer) int {
	var f instanceFlags
	fs := flag.NewFlagSet("sharedsim instance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.store, "store", "redis", "lease store: "+strings.Join(Stores, ", "))
	fs.StringVar(&f.addr, "addr", "", "the store's address (Redis host:port, etcd URL, or blob container URL)")
	fs.StringVar(&f.prefix, "prefix", "sharedsim", "the names of this shared capacity in the store")
	fs.IntVar(&f.shared, "shared", 10000, "shared capacity, cost units per second")
	fs.IntVar(&f.reserved, "reserved", 500, "reserved capacity per instance")
	fs.IntVar(&f.factor, "factor", 1000, "capacity of one partition")
	fs.IntVar(&f.cost, "cost", 10, "cost of each operation")
	fs.DurationVar(&f.lease, "lease", ratelimiter.DefaultLeaseDuration, "lease duration")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runInstance(ctx, f, stdout); err != nil {
		fmt.Fprintln(stderr, "sharedsim instance:", err)
		return 1
	}
	return 0
}

// reporter writes report lines, flushed every 20 ms so that the scenario
// sees them soon.
type reporter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

// line writes a line stamped now: the time is taken before the lock, which
// a flush to a slow reader may hold for a while.
func (r *reporter) line(kind string, rest ...any) { r.lineAt(kind, time.Now(), rest...) }

// lineAt writes a line stamped at.
func (r *reporter) lineAt(kind string, at time.Time, rest ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprint(r.w, kind, " ", at.UnixNano())
	for _, x := range rest {
		fmt.Fprint(r.w, " ", x)
	}
	r.w.WriteByte('\n')
}

func (r *reporter) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.w.Flush()
}

// NewManager returns a lease manager for store at addr (for azblob, the
// blob service URL of the account: each run gets its own container, named
// by prefix), and a function that closes its client.
func NewManager(ctx context.Context, store, addr, prefix string) (ratelimiter.LeaseManager, func(), error) {
	var spec string
	switch store {
	case "redis":
		spec = "redis://" + addr
	case "etcd":
		spec = "etcd://" + strings.TrimPrefix(addr, "http://")
	case "azblob":
		spec = strings.TrimSuffix(addr, "/") + "/" + prefix
	default:
		return nil, nil, fmt.Errorf("sharedsim: unknown store %q; want one of %s", store, strings.Join(Stores, ", "))
	}
	s, err := leasestore.Parse(spec)
	if err != nil {
		return nil, nil, err
	}
	return s.Open(ctx, prefix)
}

func runInstance(ctx context.Context, f instanceFlags, stdout io.Writer) error {
	if f.cost <= 0 {
		return fmt.Errorf("-cost is %d; it must be more than 0", f.cost)
	}
	mgr, closeMgr, err := NewManager(ctx, f.store, f.addr, f.prefix)
	if err != nil {
		return err
	}
	defer closeMgr()
	rep := &reporter{w: bufio.NewWriter(stdout)}
	defer rep.flush()

	limiter := ratelimiter.NewSharedResource().
		WithReservedCapacity(f.reserved).
		WithSharedCapacity(f.shared, mgr).
		WithFactor(f.factor).
		WithLeaseDuration(f.lease)
	limiter.AddListener(func(e batcher.Event) {
		if e.Kind == batcher.LimiterError {
			rep.line("E", strings.ReplaceAll(redact.String(e.Err.Error()), "\n", " "))
		}
	})
	w := batcher.NewWatcher(func(ctx context.Context, ops []*batcher.Operation) error {
		// Stamped with the moment the Batcher released the batch, which
		// its rate limiting counts from: a stamp taken here would carry
		// however long the goroutine waited to run, and on a loaded machine
		// two batches released a second and a millisecond apart, as a
		// backlog releases them, can be stamped less than a second apart.
		released, ok := batcher.ReleasedAt(ctx)
		if !ok {
			return errors.New("sharedsim: ProcessBatch's context does not say when the batch was released")
		}
		cost := 0
		for _, op := range ops {
			cost += op.Cost()
		}
		rep.lineAt("R", released, cost)
		return nil
	})
	// A buffer of one second of the whole capacity: enough for a backlog
	// to ask for every partition at once, and little enough that Shutdown
	// drains in a few seconds.
	b := batcher.NewBatcher().WithRateLimiter(limiter).WithBufferSize(max((f.shared+f.reserved)/f.cost, 10))
	if err := b.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	rep.line("READY")
	rep.flush()

	var wg sync.WaitGroup
	produce, stopProducing := context.WithCancel(ctx)
	defer stopProducing()
	wg.Go(func() { // the backlog
		for i := 0; produce.Err() == nil; i++ {
			if err := b.EnqueueContext(produce, batcher.NewOperation(w, f.cost, i, true)); err != nil {
				return
			}
		}
	})
	wg.Go(func() { // the partitions counted, and flushing the report
		last := "-"
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			ps := limiter.CountedPartitions()
			if l := joinInts(ps); l != last {
				rep.line("P", len(ps), l)
				last = l
			}
			rep.flush()
			select {
			case <-produce.Done():
				return
			case <-t.C:
			}
		}
	})
	<-ctx.Done()
	stopProducing()
	wg.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = b.Shutdown(sctx)
	if err != nil {
		rep.line("DONE", strings.ReplaceAll(err.Error(), "\n", " "))
	} else {
		rep.line("DONE", "ok")
	}
	rep.line("P", 0, "")
	return err
}

// joinInts returns ps as "1,2,3".
func joinInts(ps []int) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprint(&b, p)
	}
	return b.String()
}

// Main is what a binary's main (or a test's TestMain) calls first: if the
// process was started as an instance by Run, it runs the instance and exits;
// otherwise it returns.
func Main() {
	if os.Getenv(childEnv) == "1" {
		os.Exit(InstanceMain(os.Args[1:], os.Stdout, os.Stderr))
	}
}

// childEnv marks a process that Run started as an instance.
const childEnv = "SHAREDSIM_INSTANCE"
