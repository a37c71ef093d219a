package analytics_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/samples/analytics"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

// killEvents is the number of events of a kill test: 20,000 in `make
// test` (which runs each test three times, under -race, beside the other
// packages' tests, on two cores); ANALYTICS_KILL_EVENTS=1000000 runs the
// issue's million.
func killEvents() int {
	if n := envInt("KILL_EVENTS"); n > 0 {
		return n - n%eventsPerSession
	}
	return 20_000
}

// killCount is how many processes a kill test kills: def, or
// ANALYTICS_KILLS (0 for a run without kills, for the throughput figure).
func killCount(def int) int {
	if env("KILLS") == "" {
		return def
	}
	return envInt("KILLS")
}

// direct inserts the n events of a run straight into table with
// clickhouse-go, in batches of 4,000 and chunks of 1,000 as the pipeline
// does, and returns the events per second.
func direct(t *testing.T, conn driver.Conn, table string, n int) float64 {
	events := make([]analytics.Event, 0, n)
	for s := range n / eventsPerSession {
		for seq := 1; seq <= eventsPerSession; seq++ {
			e := eventOf(s, seq)
			e.DurationMs = wantDuration(uint32(seq)) // the rows as the pipeline inserts them
			events = append(events, e)
		}
	}
	start := time.Now()
	for i := 0; i < len(events); i += 4000 {
		if err := analytics.Insert(t.Context(), conn, table, events[i:min(i+4000, len(events))], 1000); err != nil {
			t.Fatal(err)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

type run struct {
	t      *testing.T
	bin    string
	env    []string
	dir    string
	mu     sync.Mutex
	kills  int
	starts int
	cpu    map[string]time.Duration // CPU time of the exited processes, by role
}

// exited adds the CPU time of an exited process of role.
func (r *run) exited(role string, cmd *exec.Cmd) {
	if cmd.ProcessState == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cpu == nil {
		r.cpu = map[string]time.Duration{}
	}
	r.cpu[role] += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

func (r *run) start(role string, extra ...string) *exec.Cmd {
	cmd := exec.Command(r.bin, "-test.run=^$")
	cmd.Env = append(append(append(os.Environ(), r.env...), "ANALYTICS_ROLE="+role), extra...)
	var stderr strings.Builder
	cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	cmd.Stdout = os.Stdout
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.starts++
	r.mu.Unlock()
	return cmd
}

func openCH(t *testing.T) (driver.Conn, string, string) {
	addr := servicetest.Need(t, servicetest.ClickHouse)
	conn, err := ch.Open(&ch.Options{Addr: []string{addr}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	db := fmt.Sprintf("spool_kill_%016x", rand.Uint64())
	if err := conn.Exec(t.Context(), "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db) })
	return conn, addr, db
}

// TestKillLocalLog runs the pipeline through the local log in one process
// (the log admits one), killed with SIGKILL at random moments and started
// again, into ClickHouse.
func TestKillLocalLog(t *testing.T) {
	conn, chAddr, db := openCH(t)
	rsrv := servicetest.StartRedis(t)
	n := killEvents()
	table := createTable(t, conn, db, "events")
	bin, _ := os.Executable()
	dir := t.TempDir()
	r := &run{t: t, bin: bin, dir: dir, env: []string{
		"ANALYTICS_DIR=" + filepath.Join(dir, "spool"), "ANALYTICS_REDIS=" + rsrv.Addr(), "ANALYTICS_CLICKHOUSE=" + chAddr,
		"ANALYTICS_TABLE=" + table, "ANALYTICS_FROM=0", "ANALYTICS_TO=" + strconv.Itoa(n/eventsPerSession),
		"ANALYTICS_ACKED=" + filepath.Join(dir, "acked"),
	}}
	start := time.Now()
	for range killCount(6) {
		cmd := r.start("node")
		time.Sleep(time.Duration(300+rand.IntN(1500)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		r.kills++
	}
	cmd := r.start("node")
	waitExit(t, cmd, 10*time.Minute)
	// The spool is empty: whatever was appended was consumed.
	l := filelog.New(filepath.Join(dir, "spool"))
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	if es, err := l.Read(rctx, 1000); err == nil {
		t.Errorf("the spool still delivers %d records after the last node finished", len(es))
	}
	rcancel()
	if cuts := l.Cuts(); len(cuts) > 0 {
		t.Logf("cuts at the final open: %v", cuts)
	}
	dead := 0
	l.DeadLetters(t.Context(), func(e spool.DeadEntry) error {
		if dead < 5 {
			t.Logf("dead letter %v: %s", e.From, e.Reason)
		}
		dead++
		return nil
	})
	if dead > 0 {
		t.Errorf("%d dead letters in the spool", dead)
	}
	l.Close()
	check(t, conn, table, n, []string{filepath.Join(dir, "acked")}, r, time.Since(start))
}

// TestKillRedisStreams runs 4 producer and 2 consumer processes through
// Redis Streams, killing one of them with SIGKILL at random moments and
// starting it again, into ClickHouse.
func TestKillRedisStreams(t *testing.T) {
	conn, chAddr, db := openCH(t)
	rsrv := servicetest.StartRedis(t)
	n := killEvents()
	table := createTable(t, conn, db, "events")
	el, r, acked := runRedisStreams(t, rsrv.Addr(), chAddr, conn, table, n, killCount(8))
	check(t, conn, table, n, acked, r, el)
}

// runRedisStreams runs 4 producer and 2 consumer processes through Redis
// Streams at redisAddr into table, killing one of them with SIGKILL at
// random moments kills times and starting it again. It returns the time
// from the first start until the table held n distinct events, the run, and
// the files in which the producers listed the events acknowledged to them.
func runRedisStreams(t *testing.T, redisAddr, chAddr string, conn driver.Conn, table string, n, kills int) (time.Duration, *run, []string) {
	bin, _ := os.Executable()
	dir := t.TempDir()
	r := &run{t: t, bin: bin, dir: dir, env: []string{
		"ANALYTICS_REDIS=" + redisAddr, "ANALYTICS_CLICKHOUSE=" + chAddr, "ANALYTICS_TABLE=" + table,
	}}
	sessions := n / eventsPerSession
	var acked []string
	type proc struct {
		cmd   *exec.Cmd
		role  string
		extra []string
		done  chan error
	}
	var procs []*proc
	launch := func(p *proc) {
		p.cmd = r.start(p.role, p.extra...)
		p.done = make(chan error, 1)
		go func(c *exec.Cmd, d chan error, role string) {
			err := c.Wait()
			r.exited(role, c)
			d <- err
		}(p.cmd, p.done, p.role)
	}
	start := time.Now()
	for i := range 4 {
		f := filepath.Join(dir, fmt.Sprintf("acked%d", i))
		acked = append(acked, f)
		p := &proc{role: "producer", extra: []string{
			"ANALYTICS_FROM=" + strconv.Itoa(sessions*i/4), "ANALYTICS_TO=" + strconv.Itoa(sessions*(i+1)/4), "ANALYTICS_ACKED=" + f,
		}}
		launch(p)
		procs = append(procs, p)
	}
	for range 2 {
		p := &proc{role: "consumer"}
		launch(p)
		procs = append(procs, p)
	}
	finished := make([]bool, len(procs))
	for range kills {
		time.Sleep(time.Duration(300+rand.IntN(1500)) * time.Millisecond)
		i := rand.IntN(len(procs))
		if finished[i] {
			continue
		}
		p := procs[i]
		select {
		case err := <-p.done: // a producer that finished
			if err != nil {
				t.Fatalf("%s exited: %v", p.role, err)
			}
			finished[i] = true
			continue
		default:
		}
		p.cmd.Process.Kill()
		<-p.done
		r.kills++
		launch(p)
	}
	// Let the producers finish, then the consumers drain.
	for i, p := range procs[:4] {
		if finished[i] {
			continue
		}
		select {
		case err := <-p.done:
			if err != nil {
				t.Fatalf("producer exited: %v", err)
			}
		case <-time.After(10 * time.Minute):
			t.Fatal("a producer did not finish")
		}
	}
	deadline := time.Now().Add(10 * time.Minute)
	for distinct(t, conn, table) < uint64(n) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	el := time.Since(start)
	for _, p := range procs[4:] {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(time.Minute):
			p.cmd.Process.Kill()
		}
	}
	return el, r, acked
}

func createTable(t *testing.T, conn driver.Conn, db, name string) string {
	table := db + "." + name
	if err := createTableIn(t, conn, table); err != nil {
		t.Fatal(err)
	}
	return table
}

func waitExit(t *testing.T, cmd *exec.Cmd, d time.Duration) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the last node exited: %v", err)
		}
	case <-time.After(d):
		cmd.Process.Kill()
		t.Fatalf("the last node did not finish within %v", d)
	}
}

func distinct(t *testing.T, conn driver.Conn, table string) uint64 {
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT uniqExact(id) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// check verifies the table: exactly n distinct events, each id one of the
// run's, every event acknowledged to a producer there, every screen_view
// with its duration; and reports the events delivered twice.
func check(t *testing.T, conn driver.Conn, table string, n int, ackedFiles []string, r *run, el time.Duration) {
	t.Helper()
	var rows, uniq, lo, hi, badDur uint64
	if err := conn.QueryRow(t.Context(), "SELECT count(), uniqExact(id), min(id), max(id) FROM "+table).Scan(&rows, &uniq, &lo, &hi); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(t.Context(), "SELECT count() FROM "+table+` WHERE name = 'screen_view' AND duration_ms != multiIf(seq = 1, 200, 100)`).Scan(&badDur); err != nil {
		t.Fatal(err)
	}
	if uniq != uint64(n) || lo != 1 || hi != uint64(n) {
		t.Errorf("%d distinct events, ids %d to %d; want exactly %d, ids 1 to %d", uniq, lo, hi, n, n)
	}
	ids := map[uint64]bool{}
	q, err := conn.Query(t.Context(), "SELECT DISTINCT id FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	for q.Next() {
		var id uint64
		if err := q.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	// A stream cut short (an error, a limit) would count events that are
	// in the table as missing: check that it ended well and was whole.
	if err := q.Err(); err != nil {
		t.Fatalf("reading the table's ids: %v", err)
	}
	q.Close()
	if uint64(len(ids)) != uniq {
		t.Fatalf("read %d distinct ids from the table, which counts %d", len(ids), uniq)
	}
	acked, missing := 0, 0
	for _, f := range ackedFiles {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			id, err := strconv.ParseUint(sc.Text(), 10, 64)
			if err != nil {
				continue // a line cut by a kill
			}
			acked++
			if !ids[id] {
				missing++
			}
		}
		fh.Close()
	}
	if missing > 0 {
		t.Errorf("%d events acknowledged to a producer are not in the table", missing)
	}
	if badDur > 0 {
		t.Errorf("%d screen_view rows have a wrong duration", badDur)
	}
	t.Logf("%d events (%d acknowledged to producers, counting re-tracks), %d rows: %d delivered twice or more; %d kills, %d process starts; %v from the first start to all in the table (%.0f events/s)",
		n, acked, rows, rows-uniq, r.kills, r.starts, el.Round(time.Millisecond), float64(n)/el.Seconds())
}
