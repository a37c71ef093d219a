package cosmosbulk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/redact"
)

// Throughput is the provisioned throughput of a container, or of the
// database whose containers share it.
type Throughput struct {
	// ManualRU is the manual throughput in RU per second; 0 with
	// autoscale.
	ManualRU int
	// AutoscaleMaxRU is the autoscale maximum in RU per second; 0 with
	// manual throughput.
	AutoscaleMaxRU int
	// Database says it was read on the database: the container has no
	// throughput of its own and shares the database's with its other
	// containers.
	Database bool
}

// RU returns the most RU per second the throughput serves: the autoscale
// maximum (autoscale scales up to it at once under load), or the manual
// throughput.
func (t Throughput) RU() int {
	if t.AutoscaleMaxRU > 0 {
		return t.AutoscaleMaxRU
	}
	return t.ManualRU
}

// String describes the throughput as a person reads it: manual or
// autoscale, its figure, and whether it is the container's or the database's.
func (t Throughput) String() string {
	on := "container"
	if t.Database {
		on = "database"
	}
	if t.AutoscaleMaxRU > 0 {
		return fmt.Sprintf("autoscale up to %d RU/s on the %s", t.AutoscaleMaxRU, on)
	}
	return fmt.Sprintf("manual %d RU/s on the %s", t.ManualRU, on)
}

var (
	// ErrNoThroughput is wrapped by ReadThroughput's error when there is no
	// provisioned throughput to read: a serverless account (whose offers
	// cannot be read: 400), or neither the container nor its database has
	// an offer.
	ErrNoThroughput = errors.New("cosmosbulk: no provisioned throughput to read")
	// ErrThroughputForbidden is wrapped by ReadThroughput's error when the
	// service refuses the read (403): the identity may not read offers.
	ErrThroughputForbidden = errors.New("cosmosbulk: reading the throughput is forbidden")
)

// ReadThroughput reads the provisioned throughput of the container, or,
// if it has none of its own, of its database (shared throughput), with
// the SDK's ReadThroughput. It fails with an error wrapping
// [ErrNoThroughput] when there is none (a serverless account, or no offer
// on either), one wrapping [ErrThroughputForbidden] on a 403, and
// otherwise with the SDK's error (a 404 of the container or database
// itself, a 401, a transient failure; see [Classify]).
func ReadThroughput(ctx context.Context, client *azcosmos.Client, database, container string) (Throughput, error) {
	cc, err := client.NewContainer(database, container)
	if err != nil {
		return Throughput{}, fmt.Errorf("cosmosbulk: container %q: %w", container, err)
	}
	r, err := cc.ReadThroughput(ctx, nil)
	if err == nil {
		return fromResponse(r, false)
	}
	if !noOffer(err) {
		return Throughput{}, throughputErr("container "+database+"/"+container, err)
	}
	db, err := client.NewDatabase(database)
	if err != nil {
		return Throughput{}, fmt.Errorf("cosmosbulk: database %q: %w", database, err)
	}
	r, err = db.ReadThroughput(ctx, nil)
	if err == nil {
		return fromResponse(r, true)
	}
	if noOffer(err) {
		return Throughput{}, fmt.Errorf("%w: neither container %s/%s nor its database has an offer", ErrNoThroughput, database, container)
	}
	return Throughput{}, throughputErr("database "+database, err)
}

func fromResponse(r azcosmos.ThroughputResponse, database bool) (Throughput, error) {
	p := r.ThroughputProperties
	if p == nil {
		return Throughput{}, errors.New("cosmosbulk: the throughput read returned no offer")
	}
	// An autoscale offer names its current throughput too: read the
	// maximum first.
	if m, ok := p.AutoscaleMaxThroughput(); ok && m > 0 {
		return Throughput{AutoscaleMaxRU: int(m), Database: database}, nil
	}
	if m, ok := p.ManualThroughput(); ok && m > 0 {
		return Throughput{ManualRU: int(m), Database: database}, nil
	}
	return Throughput{}, fmt.Errorf("%w: the offer names no throughput", ErrNoThroughput)
}

// noOffer reports whether err is the SDK's 404 for a resource without an
// offer: its offer query found none (the request was on /offers). A 404
// of the container or database itself is not.
func noOffer(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound && onOffers(re)
}

func onOffers(re *azcore.ResponseError) bool {
	return re.RawResponse != nil && re.RawResponse.Request != nil &&
		strings.Contains(re.RawResponse.Request.URL.Path, "/offers")
}

// throughputErr classifies a failed read of what's throughput.
func throughputErr(what string, err error) error {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w (%s): %w", ErrThroughputForbidden, what, redact.Error(err))
		case re.StatusCode == http.StatusBadRequest && onOffers(re):
			return fmt.Errorf("%w (%s): the account answers 400 to reading offers, as a serverless account does: %w", ErrNoThroughput, what, redact.Error(err))
		}
	}
	return fmt.Errorf("cosmosbulk: reading the throughput of %s: %w", what, redact.Error(err))
}

// ThroughputLimiter defaults.
const (
	DefaultTargetFraction  = 1.0
	DefaultRefreshInterval = 15 * time.Second
	DefaultReadTimeout     = 10 * time.Second
)

// A ThroughputLimiter is a [batcher.RateLimiter] that discovers its
// capacity: it reads the provisioned throughput of a container (or of its
// database), manual or autoscale, and grants a target fraction of it, as
// the Java SDK's throughput control does with its targetThroughputThreshold,
// never more than a ceiling the user sets. It reads the throughput at
// Start and again every refresh interval, so that a change (a scale-up, a
// switch to autoscale) is followed within one interval.
//
// Capacity is min(ceiling, ⌊fraction × RU⌋), at least 1, where RU is
// [Throughput.RU]: the manual throughput or the autoscale maximum.
// MaxCapacity is the ceiling, always.
//
// # When the throughput cannot be read
//
// A read can fail for good ([ErrThroughputForbidden]: the identity may not
// read offers; [ErrNoThroughput]: a serverless account, or no offer) or for
// now (a timeout, a 503). At Start, if the first read fails either way:
//
//   - with a fallback set ([ThroughputLimiter.WithFallback]), Capacity is
//     the fallback, a [batcher.LimiterError] event reports the error, and
//     the reads go on at each interval: the first that succeeds sets the
//     capacity from the throughput;
//   - without one, Start returns the error (wrapping ErrThroughputForbidden,
//     ErrNoThroughput, or the SDK's error), and the Batcher's Start with it.
//
// A read that fails after one has succeeded keeps the last capacity and is
// reported by a LimiterError event; the reads go on.
//
// # Use with a controller
//
// Reads come seldom and say what is provisioned, not what is left when
// other workloads use the same throughput. Wrap the limiter in one that
// lowers its grant on throttles (such as ratelimiter.NewAdaptive), which
// follows this one's capacity as it changes.
//
// # Events
//
// It emits a [batcher.CapacityChanged] event whenever Capacity changes (Val
// the new capacity, Msg the throughput read, such as "manual 10000 RU/s on
// the container", or "fallback"), and a [batcher.LimiterError] event for
// each failed read (Err the error, without secrets). Events are emitted by
// the goroutine that read, one at a time.
//
// Create it with [NewThroughputLimiter] or [NewContainerThroughputLimiter],
// configure it with the With* methods (they panic once it has started),
// and give it to a Batcher, which starts and stops it. It is safe for
// concurrent use.
type ThroughputLimiter struct {
	read     func(context.Context) (Throughput, error)
	fraction float64
	ceiling  int
	fallback int
	interval time.Duration
	timeout  time.Duration

	listeners batcher.Listeners
	capacity  atomic.Int64
	started   atomic.Bool

	mu struct {
		sync.Mutex
		last    Throughput
		lastErr error
		read    bool // a read has succeeded
		stop    context.CancelFunc
		done    chan struct{}
	}
}

// NewThroughputLimiter returns a limiter whose capacity is a fraction of
// the throughput read returns (see [ThroughputLimiter]); read is called at
// Start and every refresh interval, with a context that ends after the
// read timeout. The ceiling must be set with WithCeiling.
func NewThroughputLimiter(read func(ctx context.Context) (Throughput, error)) *ThroughputLimiter {
	return &ThroughputLimiter{
		read:     read,
		fraction: DefaultTargetFraction,
		interval: DefaultRefreshInterval,
		timeout:  DefaultReadTimeout,
	}
}

// NewContainerThroughputLimiter returns a limiter that reads the
// throughput of the container, or of its database, with [ReadThroughput].
// The ceiling must be set with WithCeiling.
func NewContainerThroughputLimiter(client *azcosmos.Client, database, container string) *ThroughputLimiter {
	return NewThroughputLimiter(func(ctx context.Context) (Throughput, error) {
		return ReadThroughput(ctx, client, database, container)
	})
}

func (t *ThroughputLimiter) checkNotStarted(method string) {
	if t.started.Load() {
		panic("cosmosbulk: ThroughputLimiter." + method + " called after Start")
	}
}

// WithCeiling sets the most capacity the limiter ever grants, in RU per
// second, whatever the throughput read: the limiter's MaxCapacity. It must
// be set, at least 1.
func (t *ThroughputLimiter) WithCeiling(ru int) *ThroughputLimiter {
	t.checkNotStarted("WithCeiling")
	t.ceiling = ru
	return t
}

// WithTargetFraction sets the fraction of the throughput read that the
// limiter grants. The default, 1, grants all of it; 0.8 leaves a fifth to
// other workloads. It must be more than 0 and at most 1.
func (t *ThroughputLimiter) WithTargetFraction(f float64) *ThroughputLimiter {
	t.checkNotStarted("WithTargetFraction")
	t.fraction = f
	return t
}

// WithRefreshInterval sets how often the throughput is read again. The
// default is 15s; it must be at least 100ms. Each read is a few metadata
// requests, which Azure limits per account: keep it in seconds.
func (t *ThroughputLimiter) WithRefreshInterval(d time.Duration) *ThroughputLimiter {
	t.checkNotStarted("WithRefreshInterval")
	t.interval = d
	return t
}

// WithReadTimeout sets how long one read may take. The default is 10s; it
// must be more than 0.
func (t *ThroughputLimiter) WithReadTimeout(d time.Duration) *ThroughputLimiter {
	t.checkNotStarted("WithReadTimeout")
	t.timeout = d
	return t
}

// WithFallback sets the capacity granted while the throughput has never
// been read (see the type's doc). The default, 0, means none: Start fails
// if its read does. It must be 0 to the ceiling.
func (t *ThroughputLimiter) WithFallback(ru int) *ThroughputLimiter {
	t.checkNotStarted("WithFallback")
	t.fallback = ru
	return t
}

// MaxCapacity returns the ceiling.
func (t *ThroughputLimiter) MaxCapacity() int { return t.ceiling }

// Capacity returns the capacity granted now: the target fraction of the
// throughput last read, at most the ceiling; the fallback if none was read
// yet; 0 before Start.
func (t *ThroughputLimiter) Capacity() int { return int(t.capacity.Load()) }

// GiveMe does nothing: the capacity is what is provisioned.
func (t *ThroughputLimiter) GiveMe(int) {}

// AddListener adds a listener for the limiter's events and returns its id.
func (t *ThroughputLimiter) AddListener(fn func(batcher.Event)) int {
	return t.listeners.AddListener(fn)
}

// RemoveListener removes a listener added by AddListener.
func (t *ThroughputLimiter) RemoveListener(id int) { t.listeners.RemoveListener(id) }

// Throughput returns the throughput last read and whether a read has
// succeeded, and the error of the last read (nil if it succeeded).
func (t *ThroughputLimiter) Throughput() (last Throughput, ok bool, lastErr error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.last, t.mu.read, t.mu.lastErr
}

func (t *ThroughputLimiter) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: cosmosbulk ThroughputLimiter "+format, append([]any{batcher.ErrInvalidSetting}, args...)...))
	}
	if t.read == nil {
		bad("has no read function")
	}
	if t.ceiling < 1 {
		bad("Ceiling is %d; set it (WithCeiling) to the most RU/s it may ever grant, at least 1", t.ceiling)
	}
	if !(t.fraction > 0 && t.fraction <= 1) {
		bad("TargetFraction is %v; it must be more than 0 and at most 1", t.fraction)
	}
	if t.interval < 100*time.Millisecond {
		bad("RefreshInterval is %v; it must be at least 100ms", t.interval)
	}
	if t.timeout <= 0 {
		bad("ReadTimeout is %v; it must be more than 0", t.timeout)
	}
	if t.fallback < 0 || t.ceiling >= 1 && t.fallback > t.ceiling {
		bad("Fallback is %d; it must be 0 (none) to the ceiling, %d", t.fallback, t.ceiling)
	}
	return errors.Join(errs...)
}

// Start checks the settings, reads the throughput (see the type's doc for
// a read that fails), and starts the goroutine that reads it again every
// refresh interval until ctx ends or Stop is called. It returns an error
// naming every bad setting (each wrapping [batcher.ErrInvalidSetting]), or
// the first read's error when there is no fallback, or, while it runs
// already, an error wrapping [batcher.ErrImproperOrder].
func (t *ThroughputLimiter) Start(ctx context.Context) error {
	t.mu.Lock()
	if t.mu.done != nil {
		select {
		case <-t.mu.done:
		default:
			t.mu.Unlock()
			return fmt.Errorf("%w: cosmosbulk ThroughputLimiter started twice", batcher.ErrImproperOrder)
		}
	}
	if err := t.validate(); err != nil {
		t.mu.Unlock()
		return err
	}
	t.started.Store(true)
	loopCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	t.mu.stop, t.mu.done = cancel, done
	t.mu.Unlock()

	if err := t.readOnce(ctx); err != nil && t.Capacity() == 0 {
		if t.fallback == 0 {
			cancel()
			close(done)
			return fmt.Errorf("%w (set WithFallback to start without it)", err)
		}
		t.setCapacity(t.fallback, "fallback")
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(t.interval)
		defer tick.Stop()
		for {
			select {
			case <-loopCtx.Done():
				return
			case <-tick.C:
				t.readOnce(loopCtx)
			}
		}
	}()
	return nil
}

// readOnce reads the throughput, sets the capacity from it, and reports a
// failure; it returns the read's error. Only one goroutine calls it at a
// time: Start, then the goroutine Start starts.
func (t *ThroughputLimiter) readOnce(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, t.timeout)
	tp, err := t.read(rctx)
	cancel()
	if err == nil && tp.RU() <= 0 {
		err = fmt.Errorf("%w: the throughput read is %d RU/s", ErrNoThroughput, tp.RU())
	}
	if err != nil {
		if ctx.Err() != nil { // stopping: not a failure of the read
			return err
		}
		err = redact.Error(err)
		t.mu.Lock()
		t.mu.lastErr = err
		t.mu.Unlock()
		t.listeners.Emit(batcher.Event{Kind: batcher.LimiterError, Err: err,
			Msg: fmt.Sprintf("cosmosbulk: reading the throughput failed; the capacity stays %d", t.capacity.Load())})
		return err
	}
	t.mu.Lock()
	t.mu.last, t.mu.read, t.mu.lastErr = tp, true, nil
	t.mu.Unlock()
	c := int(math.Floor(t.fraction*float64(tp.RU()) + 1e-9))
	t.setCapacity(min(max(c, 1), t.ceiling), tp.String())
	return nil
}

func (t *ThroughputLimiter) setCapacity(c int, why string) {
	if old := t.capacity.Swap(int64(c)); old != int64(c) {
		t.listeners.Emit(batcher.Event{Kind: batcher.CapacityChanged, Val: c, Msg: why})
	}
}

// Stop stops the goroutine that reads the throughput and waits for it; a
// Batcher's Shutdown calls it. It returns ctx.Err() if ctx ends first.
// Capacity keeps its last value.
func (t *ThroughputLimiter) Stop(ctx context.Context) error {
	t.mu.Lock()
	stop, done := t.mu.stop, t.mu.done
	t.mu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ThroughputLimiter is a rate limiter that emits events and has work to
// stop.
var (
	_ batcher.RateLimiter = (*ThroughputLimiter)(nil)
	_ batcher.Stopper     = (*ThroughputLimiter)(nil)
	_ batcher.EventSource = (*ThroughputLimiter)(nil)
	_ batcher.Processor   = (*Loader)(nil)
)
