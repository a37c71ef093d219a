package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/redisstream"
)

// Redis killed and restarted, then down for 30 s, in the middle of a run of
// producers and a consumer: every record whose Append returned nil is
// processed (at least once).
func TestRedisRestartedAndDown(t *testing.T) {
	srv := servicetest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	st := redisstream.New(rdb, "events").WithClaimIdle(5 * time.Second)
	if err := st.Open(t.Context()); err != nil {
		t.Fatal(err)
	}
	sp := spool.New(st, spool.JSON[int]())
	defer sp.Close()
	b := batcher.NewBatcher().WithFlushInterval(5 * time.Millisecond)
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	var mu sync.Mutex
	processed := map[int]int{}
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[int]) error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range batch {
			processed[r.Value]++
		}
		return nil
	})
	c := sp.Consumer(b, w).WithMaxInFlight(500).WithReadBatch(100)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()

	var amu sync.Mutex
	var acked []int
	var failed int
	pctx, pcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			for i := 0; pctx.Err() == nil; i++ {
				v := p*10_000_000 + i
				err := sp.Append(pctx, v)
				amu.Lock()
				if err == nil {
					acked = append(acked, v)
				} else {
					failed++
				}
				amu.Unlock()
				if err != nil {
					time.Sleep(50 * time.Millisecond)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	count := func() int { amu.Lock(); defer amu.Unlock(); return len(acked) }
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(2 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("500 appends", func() bool { return count() >= 500 })
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	n := count()
	waitFor("500 more appends after the restart", func() bool { return count() >= n+500 })
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Second)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	n = count()
	waitFor("500 more appends after the outage", func() bool { return count() >= n+500 })
	pcancel()
	wg.Wait()
	amu.Lock()
	all := append([]int(nil), acked...)
	amu.Unlock()
	waitFor("every acknowledged record processed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, v := range all {
			if processed[v] == 0 {
				return false
			}
		}
		return true
	})
	cancel()
	if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	mu.Lock()
	twice := 0
	for _, n := range processed {
		if n > 1 {
			twice++
		}
	}
	mu.Unlock()
	t.Logf("%d appends acknowledged, %d failed while Redis was down, %d records processed twice; the consumer's backend calls failed %d times", len(all), failed, twice, c.Stats().AckErrs)
	if failed == 0 {
		t.Errorf("no Append failed: Redis was not down")
	}
	_ = fmt.Sprint()
}
