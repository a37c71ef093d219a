package analytics_test

// The processes of the kill tests: this test binary, started again with
// ANALYTICS_ROLE set, runs one role and exits.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/samples/analytics"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
	"github.com/ratebatch/batcher/spool/redisstream"
)

func TestMain(m *testing.M) {
	if role := os.Getenv("ANALYTICS_ROLE"); role != "" {
		if err := runRole(role); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The events of a run: session s has eventsPerSession events, seq 1 to 5:
// screen_view, click, screen_view, screen_view, session_end, 100 ms
// apart but for the first screen_view's 200 ms.
const eventsPerSession = 5

var sessionNames = []string{analytics.ScreenView, "click", analytics.ScreenView, analytics.ScreenView, analytics.SessionEnd}
var sessionOffsets = []int64{0, 150, 200, 300, 400}

var origin = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

func eventOf(s int, seq int) analytics.Event {
	return analytics.Event{
		ID:      uint64(s*eventsPerSession + seq),
		Session: uint64(s),
		Seq:     uint32(seq),
		Name:    sessionNames[seq-1],
		TimeMs:  origin + int64(s)*1000 + sessionOffsets[seq-1],
		UserID:  uint64(s % 1000),
	}
}

// wantDuration is a screen_view's duration: to the session's next
// screen_view or its session_end.
func wantDuration(seq uint32) int64 {
	switch seq {
	case 1:
		return 200
	case 3, 4:
		return 100
	}
	return 0
}

func env(name string) string { return os.Getenv("ANALYTICS_" + name) }

func envInt(name string) int {
	n, _ := strconv.Atoi(env(name))
	return n
}

func runRole(role string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	switch role {
	case "node": // the local log: producer and consumer in one process
		l := filelog.New(env("DIR")).WithSync(filelog.SyncEvery(10 * time.Millisecond))
		if err := l.Open(); err != nil {
			return err
		}
		sp := spool.New(l, spool.JSON[analytics.Event]())
		defer sp.Close()
		cctx, ccancel := context.WithCancel(ctx)
		c, done, err := consume(cctx, sp)
		if err != nil {
			ccancel()
			return err
		}
		if err := produce(ctx, sp); err != nil {
			ccancel()
			<-done
			return err
		}
		// Produced all: wait until every record was read and ended.
		if env("IDLE_EXIT") != "" { // the first version's condition, kept to show why it was wrong
			last, since := int64(-1), time.Now()
			for time.Since(since) < time.Second {
				s := c.Stats()
				if n := s.Read; n != last || s.Acked+s.Dead+s.Left < n {
					last, since = n, time.Now()
				}
				time.Sleep(50 * time.Millisecond)
			}
			st := l.Stats()
			fmt.Fprintf(os.Stderr, "node: idle exit with %d bytes unread and %d records unended; consumer %+v\n", st.Unread, st.Unended, c.Stats())
			ccancel()
			return <-done
		}
		for {
			if st := l.Stats(); st.Unread == 0 && st.Unended == 0 {
				break
			}
			select {
			case err := <-done:
				ccancel()
				return fmt.Errorf("the consumer stopped before the spool was empty: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		ccancel()
		fmt.Fprintf(os.Stderr, "node: consumer %+v\n", c.Stats())
		return <-done
	case "producer", "consumer":
		rdb := redis.NewClient(&redis.Options{Addr: env("REDIS"), MaxRetries: -1})
		defer rdb.Close()
		st := redisstream.New(rdb, "events").WithClaimIdle(10 * time.Second).WithMaxLen(200_000)
		if err := st.Open(ctx); err != nil {
			return err
		}
		backend, report := profiled(role, st)
		defer report()
		sp := spool.New(backend, spool.JSON[analytics.Event]())
		defer sp.Close()
		if role == "producer" {
			return produce(ctx, sp)
		}
		_, done, err := consume(ctx, sp)
		if err != nil {
			return err
		}
		return <-done
	}
	return fmt.Errorf("unknown role %q", role)
}

// produce tracks the sessions from FROM to TO (not included) from 256
// goroutines, skipping the events the ACKED file lists, and appends to it
// each event whose Track returned nil.
func produce(ctx context.Context, sp *spool.Spool[analytics.Event]) error {
	acked := map[uint64]bool{}
	if f, err := os.Open(env("ACKED")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if id, err := strconv.ParseUint(sc.Text(), 10, 64); err == nil {
				acked[id] = true
			}
		}
		f.Close()
	}
	out, err := os.OpenFile(env("ACKED"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	var outMu sync.Mutex
	tr := analytics.NewTracker(sp)
	defer tr.Close()
	from, to := envInt("FROM"), envInt("TO")
	const goroutines = 256 // sessions tracked at once; each Track waits for its micro-batch
	var wg sync.WaitGroup
	var failed atomic.Value
	for g := range goroutines {
		wg.Go(func() {
			var line []byte
			for s := from + g; s < to; s += goroutines {
				// The session's acknowledged events are listed in one
				// write after its last Track (a write per event cost the
				// producer a third of its CPU): a kill before it leaves
				// them out of the list, which the check then does not
				// ask for, and cuts no line in two.
				line = line[:0]
				for seq := 1; seq <= eventsPerSession; seq++ {
					e := eventOf(s, seq)
					if acked[e.ID] {
						continue
					}
					for {
						err := tr.Track(ctx, e)
						if err == nil {
							break
						}
						if ctx.Err() != nil {
							failed.Store(ctx.Err())
							return
						}
						time.Sleep(100 * time.Millisecond) // Redis down: try again
					}
					line = append(strconv.AppendUint(line, e.ID, 10), '\n')
				}
				if len(line) == 0 {
					continue
				}
				outMu.Lock()
				_, err := out.Write(line)
				outMu.Unlock()
				if err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return err
	}
	return nil
}

// consume runs the pipeline's consumer into ClickHouse until ctx ends.
func consume(ctx context.Context, sp *spool.Spool[analytics.Event]) (*spool.Consumer[analytics.Event], <-chan error, error) {
	conn, err := ch.Open(&ch.Options{Addr: []string{env("CLICKHOUSE")}, DialTimeout: 2 * time.Second})
	if err != nil {
		return nil, nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: env("REDIS")})
	sessions := analytics.NewSessions(rdb, "session:", time.Hour)
	b := batcher.NewBatcher().WithFlushInterval(20 * time.Millisecond).WithBufferSize(20_000)
	if err := b.Start(context.Background()); err != nil {
		return nil, nil, err
	}
	w := analytics.NewWatcher(conn, sessions, env("TABLE"))
	if n := envInt("SLOTS"); n > 0 { // batches processed at once (the sample's 2), to measure
		w = w.WithMaxConcurrentBatches(n)
	}
	c := sp.Consumer(b, w).WithMaxInFlight(8_000).WithDrainTimeout(10 * time.Second)
	done := make(chan error, 1)
	go func() {
		err := c.Run(ctx)
		b.Shutdown(context.Background())
		rdb.Close()
		conn.Close()
		done <- err
	}()
	return c, done, nil
}
