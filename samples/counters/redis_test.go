package counters

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/servicetest"
)

// These tests need a real Redis: the shared one that `make test` starts, or
// a private one (servicetest.StartRedis) for the test that stops it.

// newRedisClient returns a client of addr; with noRetries, it does not retry
// failed commands itself, so that the Counter's retries are what is tested.
func newRedisClient(t testing.TB, addr string, noRetries bool) *goredis.Client {
	t.Helper()
	opts := &goredis.Options{Addr: addr, DialTimeout: time.Second}
	if noRetries {
		opts.MaxRetries = -1
	}
	client := goredis.NewClient(opts)
	t.Cleanup(func() { client.Close() })
	if err := client.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("redis at %s: %v", addr, err)
	}
	return client
}

// testPrefix returns a key prefix of the test's own, whose keys are deleted
// when it ends.
func testPrefix(t testing.TB, client *goredis.Client) string {
	prefix := fmt.Sprintf("batcher-test:%016x:", rand.Uint64())
	t.Cleanup(func() {
		ctx := context.Background()
		iter := client.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			client.Del(ctx, keys...)
		}
	})
	return prefix
}

// redisCounts reads the counts of want's keys.
func redisCounts(t testing.TB, client *goredis.Client, store *RedisStore, want map[string]int64) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	for key := range want {
		n, err := client.Get(t.Context(), store.Key(key)).Int64()
		if err != nil {
			t.Fatalf("GET %s: %v", store.Key(key), err)
		}
		got[key] = n
	}
	return got
}

// logSaved logs how many writes coalescing saved and, with check, fails the
// test if the writes were not under 1% of the increments.
func logSaved(t testing.TB, s Stats, check bool) {
	t.Helper()
	calls := s.StoreCalls + s.StoreErrors
	t.Logf("%d increments -> %d flushes, %d key writes (INCRBY, each applied once), %d store round trips (%d failed); "+
		"writes saved against one per increment: %.3f%% (%d fewer)",
		s.Increments, s.Flushes, s.Deltas, calls, s.StoreErrors,
		100*(1-float64(s.Deltas)/float64(s.Increments)), s.Increments-s.Deltas)
	if check && s.Deltas*100 >= s.Increments {
		t.Errorf("%d key writes for %d increments: want under 1%%", s.Deltas, s.Increments)
	}
}

// 16 goroutines × 50,000 increments over 200 keys, into the shared Redis:
// every total exact after Shutdown, with far under 1% of the writes that one
// write per increment would make. (A key is written at most once a flush, so
// the saving depends on the increments per key per flush: with flushes every
// 500 ms, the 800,000 increments stay under 1% of writes unless they take
// more than 20 s.)
func TestRedisExact(t *testing.T) {
	client := newRedisClient(t, servicetest.Need(t, servicetest.Redis), false)
	store := NewRedisStore(client, testPrefix(t, client))
	c := NewCounter(store).WithFlushInterval(500 * time.Millisecond)
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	want := load(t, c, 16, 50_000, 200)
	if err := c.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	wantCounts(t, redisCounts(t, client, store, want), want)
	s := c.Stats()
	if s.Increments != 800_000 || s.Failed != 0 || s.Written != s.Deltas {
		t.Errorf("stats %+v", s)
	}
	t.Logf("%v from the first increment to Shutdown's return", elapsed.Round(time.Millisecond))
	logSaved(t, s, true)
}

// A private Redis is killed mid-run and restarted a second later, while some
// store calls fail after Redis applied them (their reply "lost"): every total
// is still exact, none counted twice.
func TestRedisRestartExact(t *testing.T) {
	srv := servicetest.StartRedis(t)
	client := newRedisClient(t, srv.Addr(), true)
	redisStore := NewRedisStore(client, "counters:")
	store := &flakyStore{Store: redisStore, loseEvery: 5}
	c := NewCounter(store).WithFlushInterval(50*time.Millisecond).WithBatchSize(50).
		WithRetryBackoff(20*time.Millisecond, 200*time.Millisecond).WithMaxAttempts(100).
		WithWriteTimeout(2 * time.Second)
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}

	// Increment for about 3 s; kill Redis after 1 s, start it after 2 s.
	var wg sync.WaitGroup
	var restartErr atomic.Value
	wg.Go(func() {
		time.Sleep(time.Second)
		if err := srv.Kill(); err != nil {
			restartErr.Store(err)
			return
		}
		time.Sleep(time.Second)
		if err := srv.Start(); err != nil {
			restartErr.Store(err)
		}
	})
	stopAt := time.Now().Add(3 * time.Second)
	want := make([]map[string]int64, 8)
	for g := range want {
		want[g] = map[string]int64{}
		wg.Go(func() {
			for k := 0; time.Now().Before(stopAt); k++ {
				key := fmt.Sprintf("key-%d", (g*7+k)%100)
				if err := c.Increment(key, 1); err != nil {
					t.Error(err)
					return
				}
				want[g][key]++
				if k%64 == 0 {
					time.Sleep(100 * time.Microsecond) // leave the CPU to Redis and the flushes
				}
			}
		})
	}
	wg.Wait()
	if err, _ := restartErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	total := map[string]int64{}
	for _, w := range want {
		for k, n := range w {
			total[k] += n
		}
	}
	wantCounts(t, redisCounts(t, client, redisStore, total), total)
	s := c.Stats()
	if s.Failed != 0 || s.Written+s.Skipped != s.Deltas {
		t.Errorf("stats %+v: want none failed, every delta written once", s)
	}
	if s.StoreErrors <= store.losses.Load() {
		t.Errorf("%d store errors, %d of them injected: the kill failed no write", s.StoreErrors, store.losses.Load())
	}
	if s.Skipped == 0 {
		t.Error("no delta was skipped: the lost replies did not exercise the dedupe")
	}
	t.Logf("Redis killed for 1 s: %d store calls failed (%d after Redis applied them), %d deltas skipped on retry as already applied",
		s.StoreErrors, store.losses.Load(), s.Skipped)
	logSaved(t, s, false) // the increments made in 3 s depend on the machine's load
}
