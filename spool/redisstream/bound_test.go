package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/redisstream"
)

// boundLongDone is set once a process ran the bound test's long stop.
var boundLongDone atomic.Bool

// boundStop is how long TestBoundConsumerStopped stops the consumer: the
// issue's minute the first time it runs in a process, 2 s on the next
// runs of `go test -count=n` (the minute once, not once per count);
// REDISSTREAM_BOUND_STOP sets it for every run.
func boundStop() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("REDISSTREAM_BOUND_STOP")); err == nil {
		return d
	}
	if boundLongDone.CompareAndSwap(false, true) {
		return time.Minute
	}
	return 2 * time.Second
}

// The consumer stopped while producers go on: the stream stays within
// MaxLen, and once it is full, for the whole stop, Redis's memory and this
// process's heap stay flat, the producers that wait are blocked and those
// that refuse get ErrFull; once a consumer returns every record whose
// Append returned nil is processed.
func TestBoundConsumerStopped(t *testing.T) {
	srv := servicetest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	const maxLen = 500
	const name = "bounded"
	stream := func(consumer string, refuse bool) *redisstream.Stream {
		s := redisstream.New(rdb, name).WithConsumer(consumer).WithMaxLen(maxLen)
		if refuse {
			s = s.WithErrorWhenFull()
		}
		if err := s.Open(t.Context()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}

	// The consumer: a spool Consumer into a Batcher, run, stopped, and
	// run again.
	var pmu sync.Mutex
	processed := map[string]int{}
	countProcessed := func() int { pmu.Lock(); defer pmu.Unlock(); return len(processed) }
	csp := spool.New(stream("consumer", false), spool.Bytes())
	b := batcher.NewBatcher().WithFlushInterval(5 * time.Millisecond)
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[[]byte]) error {
		pmu.Lock()
		defer pmu.Unlock()
		for _, r := range batch {
			processed[string(r.Value)]++
		}
		return nil
	})
	runConsumer := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		c := csp.Consumer(b, w).WithMaxInFlight(200).WithReadBatch(50)
		go func() { done <- c.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Consumer.Run = %v", err)
			}
		}
	}

	// The producers: two that wait when the stream is full, two that are
	// refused.
	var amu sync.Mutex
	var acked []string
	countAcked := func() int { amu.Lock(); defer amu.Unlock(); return len(acked) }
	var refused, inAppend atomic.Int64
	pctx, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	var wg sync.WaitGroup
	for p := range 4 {
		refuse := p >= 2
		s := stream(fmt.Sprintf("producer%d", p), refuse)
		wg.Go(func() {
			for i := 0; pctx.Err() == nil; i++ {
				rec := fmt.Sprintf("p%d-%07d-%s", p, i, strings.Repeat("x", 80))
				inAppend.Add(1)
				err := s.Append(pctx, [][]byte{[]byte(rec)})
				inAppend.Add(-1)
				switch {
				case err == nil:
					amu.Lock()
					acked = append(acked, rec)
					amu.Unlock()
				case errors.Is(err, spool.ErrFull):
					if !refuse {
						t.Errorf("a waiting producer's Append returned %v", err)
						return
					}
					refused.Add(1)
					i--
					time.Sleep(5 * time.Millisecond)
				case pctx.Err() != nil: // stopped; the record may have been stored
				default:
					t.Errorf("Append = %v", err)
					return
				}
			}
		})
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	stopConsumer := runConsumer()
	waitFor("200 records processed", func() bool { return countProcessed() >= 200 })
	stopConsumer()

	stop := boundStop()
	t.Logf("the consumer stopped; watched for %v once the stream is full", stop)
	redisMem := func() int64 {
		info, err := rdb.Info(t.Context(), "memory").Result()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		t.Fatal("no used_memory in INFO memory")
		return 0
	}
	var peakLen int64
	xlen := func() int64 {
		n, err := rdb.XLen(t.Context(), name).Result()
		if err != nil {
			t.Fatal(err)
		}
		peakLen = max(peakLen, n)
		return n
	}
	// The producers fill the stream first (however slow the machine),
	// then the stop is watched: nothing more gets in.
	waitFor("the stream to fill", func() bool { return xlen() >= maxLen })
	var heapLo, heapHi uint64
	var memLo, memHi int64
	refusedAtStart, ackedAtStart := refused.Load(), countAcked()
	start := time.Now()
	for time.Since(start) < stop {
		time.Sleep(50 * time.Millisecond)
		xlen()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if heapLo == 0 || ms.HeapInuse < heapLo {
			heapLo = ms.HeapInuse
		}
		heapHi = max(heapHi, ms.HeapInuse)
		m := redisMem()
		if memLo == 0 || m < memLo {
			memLo = m
		}
		memHi = max(memHi, m)
	}
	blocked := inAppend.Load()
	n := xlen()
	ackedAtEnd, refusedAtEnd := countAcked(), refused.Load()
	t.Logf("over the stop, once the stream was full: XLEN at most %d (MaxLen %d), %d at the end; Redis used_memory %.2f to %.2f MiB; heap in use %.1f to %.1f MiB; %d Appends refused, %d acknowledged; %d Appends in progress at the end",
		peakLen, maxLen, n, float64(memLo)/(1<<20), float64(memHi)/(1<<20), float64(heapLo)/(1<<20), float64(heapHi)/(1<<20),
		refusedAtEnd-refusedAtStart, ackedAtEnd-ackedAtStart, blocked)
	if peakLen > maxLen {
		t.Errorf("the stream held %d records while the consumer was stopped, over MaxLen %d", peakLen, maxLen)
	}
	if n != maxLen {
		t.Errorf("the stream holds %d records at the end of the stop, want it full (%d)", n, maxLen)
	}
	if ackedAtEnd != ackedAtStart {
		t.Errorf("%d Appends returned nil over the stop, with the stream full", ackedAtEnd-ackedAtStart)
	}
	if refusedAtEnd == refusedAtStart {
		t.Errorf("no Append was refused with ErrFull over the stop")
	}
	if blocked < 2 {
		t.Errorf("%d Appends in progress at the end of the stop, want the two waiting producers' (and maybe a refusing one's)", blocked)
	}
	if heapHi > heapLo+8<<20 {
		t.Errorf("the heap grew from %d to %d bytes while the consumer was stopped", heapLo, heapHi)
	}
	if memHi > memLo+4<<20 {
		t.Errorf("Redis's used_memory grew from %d to %d bytes while the consumer was stopped", memLo, memHi)
	}

	// The consumer returns: the producers go on, and every record whose
	// Append returned nil is processed.
	stopConsumer = runConsumer()
	waitFor("the producers to go on", func() bool { return countAcked() >= ackedAtEnd+2*maxLen })
	pcancel()
	wg.Wait()
	amu.Lock()
	all := append([]string(nil), acked...)
	amu.Unlock()
	missing := func() int {
		pmu.Lock()
		defer pmu.Unlock()
		m := 0
		for _, r := range all {
			if processed[r] == 0 {
				m++
			}
		}
		return m
	}
	waitFor("every acknowledged record processed", func() bool { return missing() == 0 })
	stopConsumer()
	t.Logf("%d records acknowledged to producers, all processed", len(all))
}
