package azblob

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratebatch/batcher/ratelimiter"
)

// killable is a LeaseManager that can be made to fail every call, as the
// store looks to an instance that has lost its network.
type killable struct {
	ratelimiter.LeaseManager
	dead atomic.Bool
}

var errKilled = errors.New("killed by the test")

func (k *killable) Provision(ctx context.Context, n int) error {
	if k.dead.Load() {
		return errKilled
	}
	return k.LeaseManager.Provision(ctx, n)
}

func (k *killable) Acquire(ctx context.Context, p int, owner string, d time.Duration) error {
	if k.dead.Load() {
		return errKilled
	}
	return k.LeaseManager.Acquire(ctx, p, owner, d)
}

func (k *killable) Renew(ctx context.Context, p int, owner string, d time.Duration) error {
	if k.dead.Load() {
		return errKilled
	}
	return k.LeaseManager.Renew(ctx, p, owner, d)
}

func (k *killable) Release(ctx context.Context, p int, owner string) error {
	if k.dead.Load() {
		return errKilled
	}
	return k.LeaseManager.Release(ctx, p, owner)
}

func (k *killable) Announce(ctx context.Context, d ratelimiter.Demand) ([]ratelimiter.Demand, error) {
	if k.dead.Load() {
		return nil, errKilled
	}
	return k.LeaseManager.Announce(ctx, d)
}

// TestSharedResource runs two SharedResources, as two processes, over
// Managers on one Azurite container: the first takes the whole shared
// capacity, the two split it when both want it all, and when the first
// loses the store the second gets its partitions once their 15 s leases
// expire. Sampled every 20 ms, their capacities never add up to more than
// the shared capacity.
func TestSharedResource(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for 15 s leases to expire")
	}
	t.Parallel()
	const (
		factor = 1000
		shared = 4 * factor
	)
	c := testContainer(t)
	newInstance := func() (*ratelimiter.SharedResource, *killable) {
		m, err := New(c, &Options{Prefix: "shared/"})
		if err != nil {
			t.Fatal(err)
		}
		k := &killable{LeaseManager: m}
		r := ratelimiter.NewSharedResource().
			WithFactor(factor).
			WithSharedCapacity(shared, k).
			WithLeaseDuration(MinLeaseDuration)
		return r, k
	}

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// Each instance's Batcher would say, every 100 ms, that it could use
	// the whole capacity.
	feed := func(r *ratelimiter.SharedResource) {
		wg.Go(func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				r.GiveMe(shared)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	r1, k1 := newInstance()
	r2, _ := newInstance()
	var over atomic.Int64
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if sum := r1.Capacity() + r2.Capacity(); sum > shared {
				over.Store(int64(sum))
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	start := time.Now()
	waitFor := func(what string, within time.Duration, cond func() bool) {
		t.Helper()
		t0 := time.Now()
		for !cond() {
			if time.Since(t0) > within {
				t.Fatalf("%s: not within %v (capacities %d and %d)", what, within, r1.Capacity(), r2.Capacity())
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s after %v (at %v)", what, time.Since(t0).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}

	if err := r1.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r1.Stop(context.Background())
	feed(r1)
	waitFor("the first instance holds every partition", 10*time.Second, func() bool { return r1.Capacity() == shared })

	if err := r2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r2.Stop(context.Background())
	feed(r2)
	waitFor("the two instances hold half each", 20*time.Second, func() bool {
		return r1.Capacity() == shared/2 && r2.Capacity() == shared/2
	})

	k1.dead.Store(true)
	killed := time.Now()
	waitFor("the cut-off instance counts nothing", 5*time.Second, func() bool { return r1.Capacity() == 0 })
	waitFor("the other instance holds every partition", MinLeaseDuration+10*time.Second, func() bool { return r2.Capacity() == shared })
	// The first renewed its leases every third of their duration, so
	// they ran out between two thirds and all of it after the cut.
	if took := time.Since(killed); took < MinLeaseDuration*2/3-time.Second {
		t.Errorf("the other instance had every partition %v after the first lost the store; its leases last %v", took, MinLeaseDuration)
	}
	if sum := over.Load(); sum != 0 {
		t.Errorf("the instances counted %d at once, over the shared %d", sum, shared)
	}
	stopCtx, stopCancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer stopCancel()
	if err := r2.Stop(stopCtx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}
