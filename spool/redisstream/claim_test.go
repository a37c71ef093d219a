package redisstream_test

import (
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/redisstream"
)

// The takeover of a dead consumer's records, timed. Two clocks decide it:
//
//   - Redis's: XAUTOCLAIM takes a record only once it has been idle
//     (unacknowledged since its last delivery) for ClaimIdle, by the
//     server's clock. The test does not wait for that clock: it sets each
//     record's idle time itself (XCLAIM ... IDLE ms, to the same owner),
//     a minute under or over ClaimIdle, an hour. The test's real run time
//     (seconds, on a loaded machine) adds to those idle times, far short
//     of the minute's margin, so what Redis answers is fixed.
//   - Ours: a consumer scans for idle records at its first read and then
//     every ClaimIdle/2. That clock is the bubble's (testing/synctest), so
//     the test steps it exactly.
func TestClaimTiming(t *testing.T) {
	srv := servicetest.StartRedis(t)
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Hour
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		defer rdb.Close()
		ctx := t.Context()
		mk := func(consumer string) *redisstream.Stream {
			s := redisstream.New(rdb, "timed").WithConsumer(consumer).WithClaimIdle(idle).WithBlock(time.Millisecond)
			if err := s.Open(ctx); err != nil {
				t.Fatal(err)
			}
			return s
		}
		dead := mk("dead")
		if err := dead.Append(ctx, [][]byte{[]byte("one"), []byte("two")}); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for len(ids) < 2 {
			es, err := dead.ReadOnce(ctx, 10)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				ids = append(ids, e.ID.String())
			}
		}
		dead.Close() // dies holding both records
		// setIdle makes both records idle for d by Redis's clock, still
		// owned by the dead consumer.
		setIdle := func(d time.Duration) {
			t.Helper()
			args := []any{"XCLAIM", "timed", redisstream.DefaultGroup, "dead", 0}
			for _, id := range ids {
				args = append(args, id)
			}
			args = append(args, "IDLE", d.Milliseconds(), "JUSTID")
			if err := rdb.Do(ctx, args...).Err(); err != nil {
				t.Fatal(err)
			}
		}
		owners := func() []string {
			t.Helper()
			ps, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: "timed", Group: redisstream.DefaultGroup, Start: "-", End: "+", Count: 10}).Result()
			if err != nil {
				t.Fatal(err)
			}
			var o []string
			for _, p := range ps {
				o = append(o, p.Consumer)
			}
			return o
		}
		live := mk("live")
		defer live.Close()
		read := func(when string, want ...string) {
			t.Helper()
			es, err := live.ReadOnce(ctx, 10)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range es {
				got = append(got, string(e.Data))
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s: the live consumer read %q, want %q (pending: %v)", when, got, want, owners())
			}
		}
		start := time.Now()
		// Idle a minute short of ClaimIdle. The first read takes the
		// consumer's own pending records (none); the second scans (the
		// first scan is due at once) and takes nothing.
		setIdle(idle - time.Minute)
		read("the first read, its own pending records")
		read("the first scan, the records idle ClaimIdle-1m")
		// Idle a minute past ClaimIdle, but the next scan is not due
		// until ClaimIdle/2 after the first, by our clock.
		setIdle(idle + time.Minute)
		read("at once after the first scan")
		time.Sleep(idle/2 - time.Nanosecond)
		read("ClaimIdle/2 - 1ns after the first scan")
		if o := owners(); !slices.Equal(o, []string{"dead", "dead"}) {
			t.Fatalf("before the scan was due, the pending records belong to %v, want the dead consumer's", o)
		}
		time.Sleep(time.Nanosecond)
		read("ClaimIdle/2 after the first scan", "one", "two")
		if o := owners(); !slices.Equal(o, []string{"live", "live"}) {
			t.Fatalf("after the takeover, the pending records belong to %v, want the live consumer's", o)
		}
		if el := time.Since(start); el != idle/2 {
			t.Fatalf("taken over %v after the first scan by the bubble's clock, want exactly %v", el, idle/2)
		}
		// Acknowledged by the live consumer, they end.
		var sids []spool.ID
		for _, id := range ids {
			var e spool.ID
			if _, err := fmt.Sscanf(id, "%d-%d", &e.Hi, &e.Lo); err != nil {
				t.Fatal(err)
			}
			sids = append(sids, e)
		}
		if err := live.Ack(ctx, sids); err != nil {
			t.Fatal(err)
		}
		if o := owners(); len(o) != 0 {
			t.Fatalf("after the acknowledgement, records pending for %v", o)
		}
	})
}
