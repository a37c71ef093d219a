package spool_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

type event struct {
	N    int
	Name string
}

func openLog(t *testing.T, dir string) *filelog.Log {
	t.Helper()
	l := filelog.New(dir).WithMaxBytes(1 << 20).WithSegmentSize(4096).WithMaxRecordSize(1000)
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	return l
}

func startBatcher(t *testing.T) *batcher.Batcher {
	t.Helper()
	b := batcher.NewBatcher().WithFlushInterval(5 * time.Millisecond)
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return b
}

// seen records the values ProcessBatch saw.
type seen struct {
	mu sync.Mutex
	n  map[int]int
}

func (s *seen) add(v int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[int]int{}
	}
	s.n[v]++
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.n)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAppendConsumeRemove(t *testing.T) {
	dir := t.TempDir()
	sp := spool.New(openLog(t, dir), spool.JSON[event]())
	b := startBatcher(t)
	defer b.Shutdown(context.Background())
	var s seen
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[event]) error {
		for _, r := range batch {
			s.add(r.Value.N)
		}
		return nil
	}).WithMaxBatchSize(50)
	c := sp.Consumer(b, w).WithCost(func(e event) int { return len(e.Name) })
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			for i := range 250 {
				if err := sp.Append(ctx, event{N: p*1000 + i, Name: "x"}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "1000 records processed and acknowledged", func() bool { return c.Stats().Acked == 1000 })
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("Run = %v, want nil after its ctx was cancelled", err)
	}
	if s.distinct() != 1000 {
		t.Fatalf("processed %d distinct records, want 1000", s.distinct())
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, dir)
	defer l.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer rcancel()
	if es, err := l.Read(rctx, 10); err == nil {
		t.Fatalf("after every record was acknowledged, a reopened log delivered %d records", len(es))
	}
}

func TestFailedForGoodIsDeadLettered(t *testing.T) {
	dir := t.TempDir()
	sp := spool.New(openLog(t, dir), spool.JSON[event]())
	defer sp.Close()
	b := startBatcher(t)
	defer b.Shutdown(context.Background())
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[event]) error {
		for _, r := range batch {
			if r.Value.N%10 == 0 {
				r.Op.Fail(fmt.Errorf("refused %d", r.Value.N))
			}
		}
		return nil
	})
	var mu sync.Mutex
	var reported []spool.DeadLetter[event]
	c := sp.Consumer(b, w).OnDeadLetter(func(d spool.DeadLetter[event]) {
		mu.Lock()
		reported = append(reported, d)
		mu.Unlock()
	})
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	for i := range 100 {
		if err := sp.Append(ctx, event{N: i}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every record ended", func() bool { s := c.Stats(); return s.Acked+s.Dead == 100 })
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Dead != 10 || s.Acked != 90 {
		t.Fatalf("stats %+v, want 10 dead and 90 acknowledged", s)
	}
	mu.Lock()
	if len(reported) != 10 {
		t.Errorf("OnDeadLetter called %d times, want 10", len(reported))
	}
	mu.Unlock()
	var dead []spool.DeadLetter[event]
	if err := sp.DeadLetters(t.Context(), func(d spool.DeadLetter[event]) error { dead = append(dead, d); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(dead) != 10 {
		t.Fatalf("%d dead letters, want 10", len(dead))
	}
	for _, d := range dead {
		if d.Value.N%10 != 0 || !strings.Contains(d.Reason, fmt.Sprintf("refused %d", d.Value.N)) {
			t.Errorf("dead letter %+v: want a multiple of 10 with its reason", d)
		}
	}
}

// A record whose operation did not end because the Batcher was closed is
// neither removed nor dead-lettered: it is delivered again after a reopen.
func TestBatcherClosedLeavesRecords(t *testing.T) {
	dir := t.TempDir()
	sp := spool.New(openLog(t, dir), spool.JSON[event]())
	b := startBatcher(t)
	block := make(chan struct{})
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[event]) error {
		<-block
		return ctx.Err()
	})
	c := sp.Consumer(b, w)
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(context.Background()) }()
	for i := range 20 {
		if err := sp.Append(t.Context(), event{N: i}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "20 records enqueued", func() bool { return c.Stats().Enqueued == 20 })
	b.Close()
	close(block)
	if err := <-runErr; !errors.Is(err, batcher.ErrClosed) {
		t.Fatalf("Run = %v after the Batcher closed, want an error wrapping batcher.ErrClosed", err)
	}
	if s := c.Stats(); s.Acked != 0 || s.Dead != 0 || s.Left != 20 {
		t.Fatalf("stats %+v, want 20 left, none acknowledged or dead", s)
	}
	sp.Close()
	l := openLog(t, dir)
	defer l.Close()
	var n int
	for n < 20 {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		es, err := l.Read(ctx, 100)
		cancel()
		if err != nil {
			t.Fatalf("after a reopen, read %d records, then %v; want 20", n, err)
		}
		n += len(es)
	}
}

type failing struct{}

func (failing) Encode(dst []byte, v event) ([]byte, error) {
	if v.N < 0 {
		return dst, errors.New("negative")
	}
	return fmt.Appendf(dst, "%d", v.N), nil
}

func (failing) Decode(data []byte) (event, error) {
	var v event
	_, err := fmt.Sscanf(string(data), "%d", &v.N)
	if v.N == 13 {
		return v, errors.New("unlucky")
	}
	return v, err
}

// A codec that fails: encoding refuses the Append (nothing stored); decoding
// dead-letters the record; the others go through.
func TestCodecFails(t *testing.T) {
	sp := spool.New(openLog(t, t.TempDir()), spool.Codec[event](failing{}))
	defer sp.Close()
	if err := sp.Append(t.Context(), event{N: -1}); !errors.Is(err, spool.ErrCodec) {
		t.Fatalf("Append of a record the codec refuses = %v, want ErrCodec", err)
	}
	if err := sp.AppendBatch(t.Context(), []event{{N: 1}, {N: -1}}); !errors.Is(err, spool.ErrCodec) {
		t.Fatalf("AppendBatch with a record the codec refuses = %v, want ErrCodec", err)
	}
	b := startBatcher(t)
	defer b.Shutdown(context.Background())
	var s seen
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[event]) error {
		for _, r := range batch {
			s.add(r.Value.N)
		}
		return nil
	})
	c := sp.Consumer(b, w)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	if err := sp.AppendBatch(ctx, []event{{N: 12}, {N: 13}, {N: 14}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "3 records ended", func() bool { s := c.Stats(); return s.Acked+s.Dead == 3 })
	cancel()
	<-runErr
	if s.distinct() != 2 {
		t.Errorf("processed %d records, want 2 (12 and 14; the appends the codec refused stored nothing)", s.distinct())
	}
	var dead []spool.DeadLetter[event]
	sp.DeadLetters(t.Context(), func(d spool.DeadLetter[event]) error { dead = append(dead, d); return nil })
	if len(dead) != 1 || string(dead[0].Data) != "13" || !errors.Is(dead[0].DecodeErr, spool.ErrCodec) || !strings.Contains(dead[0].Reason, "unlucky") {
		t.Fatalf("dead letters %+v, want record 13 with the codec's error", dead)
	}
}

func TestBadSettings(t *testing.T) {
	sp := spool.New(openLog(t, t.TempDir()), spool.JSON[event]())
	defer sp.Close()
	err := sp.Consumer(nil, nil).WithMaxInFlight(0).WithReadBatch(-1).WithDrainTimeout(-1).Run(t.Context())
	for _, name := range []string{"Batcher", "Watcher", "MaxInFlight", "ReadBatch", "DrainTimeout"} {
		if !strings.Contains(fmt.Sprint(err), name) {
			t.Errorf("Run's error %q does not name %s", err, name)
		}
	}
	if !errors.Is(err, spool.ErrInvalidSetting) {
		t.Errorf("Run's error %v does not wrap ErrInvalidSetting", err)
	}
}
