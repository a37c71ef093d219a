package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/internal/spooltest"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/redisstream"
)

var streamN atomic.Int64

func client(t *testing.T, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func open(t *testing.T, rdb *redis.Client, name string, with func(*redisstream.Stream) *redisstream.Stream) *redisstream.Stream {
	t.Helper()
	s := redisstream.New(rdb, name).WithConsumer("c1")
	if with != nil {
		s = with(s)
	}
	if err := s.Open(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBackend(t *testing.T) {
	srv := servicetest.StartRedis(t)
	rdb := client(t, srv.Addr())
	spooltest.Run(t, func(t *testing.T) func() spool.Backend {
		name := fmt.Sprintf("spooltest-%d", streamN.Add(1))
		return func() spool.Backend { return open(t, rdb, name, nil) }
	})
}

// A consumer that died leaves its records; another takes them over after
// ClaimIdle.
func TestDeadConsumersRecordsClaimed(t *testing.T) {
	srv := servicetest.StartRedis(t)
	rdb := client(t, srv.Addr())
	a := open(t, rdb, "claim", nil)
	if err := a.Append(t.Context(), [][]byte{[]byte("one"), []byte("two")}); err != nil {
		t.Fatal(err)
	}
	got := spooltest.ReadAll(t, a, 2, 2*time.Second)
	if len(got) != 2 {
		t.Fatalf("read %d", len(got))
	}
	a.Close() // dies without acknowledging
	b := open(t, rdb, "claim", func(s *redisstream.Stream) *redisstream.Stream {
		return s.WithConsumer("c2").WithClaimIdle(time.Second)
	})
	defer b.Close()
	start := time.Now()
	again := spooltest.ReadAll(t, b, 2, 5*time.Second)
	if len(again) != 2 || string(again[0].Data) != "one" || string(again[1].Data) != "two" {
		t.Fatalf("the second consumer read %d records, want the dead one's 2", len(again))
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Errorf("claimed after %v, before ClaimIdle (1s)", el)
	}
}

func TestBound(t *testing.T) {
	srv := servicetest.StartRedis(t)
	rdb := client(t, srv.Addr())
	s := open(t, rdb, "bound", func(s *redisstream.Stream) *redisstream.Stream { return s.WithMaxLen(10).WithErrorWhenFull() })
	defer s.Close()
	ctx := t.Context()
	for i := range 10 {
		if err := s.Append(ctx, [][]byte{fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Append(ctx, [][]byte{[]byte("x")}); !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Append to a full stream = %v, want ErrFull", err)
	}
	if n := rdb.XLen(ctx, "bound").Val(); n != 10 {
		t.Fatalf("XLEN %d, want 10", n)
	}
	// Waiting instead: the Append returns once a record is removed.
	w := open(t, rdb, "bound", func(s *redisstream.Stream) *redisstream.Stream { return s.WithMaxLen(10).WithConsumer("c2") })
	defer w.Close()
	done := make(chan error, 1)
	go func() { done <- w.Append(ctx, [][]byte{[]byte("waited")}) }()
	select {
	case err := <-done:
		t.Fatalf("Append to a full stream returned %v at once, want it to wait", err)
	case <-time.After(200 * time.Millisecond):
	}
	es := spooltest.ReadAll(t, s, 1, 2*time.Second)
	if err := s.Ack(ctx, []spool.ID{es[0].ID}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting Append did not return after a record was removed")
	}
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := w.Append(tctx, [][]byte{[]byte("late")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append to a full stream with a deadline = %v, want DeadlineExceeded", err)
	}
	if err := s.Append(ctx, [][]byte{make([]byte, redisstream.DefaultMaxRecordSize+1)}); !errors.Is(err, spool.ErrTooLarge) {
		t.Fatalf("Append of a record over the size limit = %v, want ErrTooLarge", err)
	}
}

func TestBadSettings(t *testing.T) {
	err := redisstream.New(nil, "").WithMaxLen(0).WithClaimIdle(0).WithMaxRecordSize(-1).Open(t.Context())
	for _, name := range []string{"Redis client", "stream's name", "MaxLen", "ClaimIdle", "MaxRecordSize"} {
		if !strings.Contains(fmt.Sprint(err), name) {
			t.Errorf("Open's error %q does not name %s", err, name)
		}
	}
}
