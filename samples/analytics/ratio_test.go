package analytics_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/servicetest"
)

// TestRatioRedisStreams measures the figure for Redis Streams: the
// pipeline's events/s (4 producer and 2 consumer processes, no kills) over
// the events/s of clickhouse-go inserting the same rows straight into a
// table, in the same batches and chunks, alternated in one run:
// ANALYTICS_RATIO_ROUNDS=k runs k rounds of each (the pipeline first in
// odd rounds, the direct insert first in even ones), each of
// ANALYTICS_KILL_EVENTS events (default 200,000), each round on a fresh
// Redis server and fresh tables. It logs each round, and the medians and
// ranges. It is a measurement, not a check: it fails only if a round loses
// events, and is skipped unless ANALYTICS_RATIO_ROUNDS is set.
func TestRatioRedisStreams(t *testing.T) {
	rounds := envInt("RATIO_ROUNDS")
	if rounds <= 0 {
		t.Skip("a measurement: set ANALYTICS_RATIO_ROUNDS to the number of rounds to run it")
	}
	n := 200_000
	if envInt("KILL_EVENTS") > 0 {
		n = killEvents()
	}
	conn, chAddr, db := openCH(t)
	var pipe, dir, ratio []float64
	for round := range rounds {
		var p, d float64
		runPipeline := func() {
			var extra []string
			if f := env("REDIS_FSYNC"); f != "" { // a diagnostic: what the fsyncs cost
				extra = []string{"--appendfsync", f}
			}
			rsrv := servicetest.StartRedis(t, extra...)
			table := createTable(t, conn, db, fmt.Sprintf("events_%d", round))
			chCPU := clickHouseCPU()
			el, r, acked := runRedisStreams(t, rsrv.Addr(), chAddr, conn, table, n, 0)
			t.Logf("pipeline: ClickHouse CPU seconds %.1f", (clickHouseCPU() - chCPU).Seconds())
			check(t, conn, table, n, acked, r, el)
			rdb := redis.NewClient(&redis.Options{Addr: rsrv.Addr()})
			info, _ := rdb.Info(t.Context(), "cpu").Result()
			stats, _ := rdb.Info(t.Context(), "commandstats").Result()
			rdb.Close()
			t.Logf("Redis's time by command: %s", commandTimes(stats))
			var redisCPU float64
			for line := range strings.SplitSeq(info, "\r\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
					f, _ := strconv.ParseFloat(v, 64)
					redisCPU += f
				}
			}
			rsrv.Stop()
			t.Logf("CPU seconds: Redis %.1f, producers %.1f, consumers %.1f (over %.1f s)", redisCPU,
				r.cpu["producer"].Seconds(), r.cpu["consumer"].Seconds(), el.Seconds())
			p = float64(n) / el.Seconds()
		}
		runDirect := func() {
			table := createTable(t, conn, db, fmt.Sprintf("direct_%d", round))
			self, chCPU := selfCPU(), clickHouseCPU()
			d = direct(t, conn, table, n)
			t.Logf("direct: CPU seconds: this process %.1f, ClickHouse %.1f (over %.1f s)", (selfCPU() - self).Seconds(), (clickHouseCPU() - chCPU).Seconds(), float64(n)/d)
		}
		if round%2 == 0 {
			runPipeline()
			runDirect()
		} else {
			runDirect()
			runPipeline()
		}
		load, _ := os.ReadFile("/proc/loadavg")
		t.Logf("round %d: pipeline %.0f events/s, direct %.0f events/s, ratio %.2f; load average %s",
			round+1, p, d, p/d, strings.Join(strings.Fields(string(load))[:3], " "))
		pipe, dir, ratio = append(pipe, p), append(dir, d), append(ratio, p/d)
	}
	t.Logf("%d rounds of %d events: pipeline median %.0f events/s (%.0f-%.0f), direct median %.0f (%.0f-%.0f), ratio median %.2f (%.2f-%.2f)",
		rounds, n, median(pipe), slices.Min(pipe), slices.Max(pipe), median(dir), slices.Min(dir), slices.Max(dir),
		median(ratio), slices.Min(ratio), slices.Max(ratio))
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// commandTimes lists Redis's commands by the time it spent in them, from
// INFO commandstats.
func commandTimes(stats string) string {
	type cmd struct {
		name string
		usec int64
		n    int64
	}
	var cs []cmd
	for line := range strings.SplitSeq(stats, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		if !ok || !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		c := cmd{name: name}
		for kv := range strings.SplitSeq(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				c.n, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				c.usec, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b cmd) int { return int(b.usec - a.usec) })
	var out []string
	for _, c := range cs[:min(8, len(cs))] {
		out = append(out, fmt.Sprintf("%s %.2f s (%d calls)", c.name, float64(c.usec)/1e6, c.n))
	}
	return strings.Join(out, ", ")
}

// selfCPU is this process's CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clickHouseCPU is the CPU time of the oldest clickhouse-server process
// (the shared one that services.sh started; tests start private ones
// later), from /proc; 0 if there is none.
func clickHouseCPU() time.Duration {
	ents, _ := os.ReadDir("/proc")
	var best struct {
		start int64
		cpu   time.Duration
	}
	best.start = -1
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || !strings.Contains(string(b[:i]), "clickhouse") {
			continue
		}
		f := strings.Fields(string(b[i+2:]))
		if len(f) < 20 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		start, _ := strconv.ParseInt(f[19], 10, 64)
		if best.start < 0 || start < best.start {
			best.start, best.cpu = start, time.Duration(ut+st)*10*time.Millisecond
		}
	}
	return best.cpu
}
