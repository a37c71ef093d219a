package batcher_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
)

// recorder is a slog.Handler that keeps the records it is given, at or
// above its level.
type recorder struct {
	level slog.Level
	mu    sync.Mutex
	recs  []slog.Record
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= r.level }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) records() []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]slog.Record(nil), r.recs...)
}

// attrs returns a record's attributes as text, keyed by name.
func attrs(rec slog.Record) map[string]string {
	m := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	return m
}

// Each kind is logged at its level, with its figure under its name.
func TestLogListenerLevels(t *testing.T) {
	ops := []*batcher.Operation{batcher.NewOperation(batcher.NewWatcher(nil), 1, "secret payload", true)}
	cases := []struct {
		e     batcher.Event
		level slog.Level
		attrs map[string]string
	}{
		{batcher.Event{Kind: batcher.Failed, Batch: ops, Err: errors.New("boom")}, slog.LevelError,
			map[string]string{"kind": "failed", "ops": "1", "err": "boom"}},
		{batcher.Event{Kind: batcher.ListenerPanicked, Val: 2, Msg: "failed", Err: errors.New("listener: boom")}, slog.LevelError,
			map[string]string{"kind": "listener-panic", "err": "listener: boom"}},
		{batcher.Event{Kind: batcher.TimedOut, Batch: ops, Duration: time.Second}, slog.LevelWarn,
			map[string]string{"kind": "timeout", "ops": "1", "duration": "1s"}},
		{batcher.Event{Kind: batcher.AuditFailed, Msg: "target was 3, not 0"}, slog.LevelWarn,
			map[string]string{"kind": "audit-fail", "detail": "target was 3, not 0"}},
		{batcher.Event{Kind: batcher.LimiterError, Err: errors.New("store down")}, slog.LevelWarn,
			map[string]string{"kind": "error", "err": "store down"}},
		{batcher.Event{Kind: batcher.PartitionReleased, Val: 0, Msg: "lease lost"}, slog.LevelWarn,
			map[string]string{"kind": "released", "partition": "0", "detail": "lease lost"}},
		{batcher.Event{Kind: batcher.PartitionReleased, Val: 4, Msg: "expired"}, slog.LevelWarn,
			map[string]string{"partition": "4"}},
		{batcher.Event{Kind: batcher.PartitionReleased, Val: 4, Msg: "not needed"}, slog.LevelDebug,
			map[string]string{"partition": "4", "detail": "not needed"}},
		{batcher.Event{Kind: batcher.PartitionAcquired, Val: 2}, slog.LevelDebug,
			map[string]string{"kind": "allocated", "partition": "2"}},
		{batcher.Event{Kind: batcher.ShutdownDone, Err: context.DeadlineExceeded}, slog.LevelWarn,
			map[string]string{"kind": "shutdown", "err": "context deadline exceeded"}},
		{batcher.Event{Kind: batcher.ShutdownDone}, slog.LevelDebug, map[string]string{"kind": "shutdown"}},
		{batcher.Event{Kind: batcher.Throttled, Batch: ops, Duration: time.Second, Err: errors.New("429")}, slog.LevelInfo,
			map[string]string{"kind": "throttled", "ops": "1", "duration": "1s", "err": "429"}},
		{batcher.Event{Kind: batcher.Paused, Duration: 500 * time.Millisecond}, slog.LevelInfo,
			map[string]string{"kind": "pause", "duration": "500ms"}},
		{batcher.Event{Kind: batcher.Resumed}, slog.LevelInfo, map[string]string{"kind": "resume"}},
		{batcher.Event{Kind: batcher.TargetChanged, Val: 0}, slog.LevelDebug, map[string]string{"kind": "target", "target": "0"}},
		{batcher.Event{Kind: batcher.AuditPassed}, slog.LevelDebug, map[string]string{"kind": "audit-pass"}},
		{batcher.Event{Kind: batcher.AuditSkipped}, slog.LevelDebug, map[string]string{"kind": "audit-skip"}},
		{batcher.Event{Kind: batcher.CapacityChanged, Val: 2000}, slog.LevelDebug, map[string]string{"capacity": "2000"}},
		{batcher.Event{Kind: batcher.BatchReleased, Val: 30, Batch: ops}, slog.LevelDebug, map[string]string{"cost": "30", "ops": "1"}},
		{batcher.Event{Kind: batcher.Retrying, Batch: ops, Duration: time.Millisecond}, slog.LevelDebug, map[string]string{"kind": "retry"}},
		{batcher.Event{Kind: batcher.ProvisionDone, Val: 10}, slog.LevelDebug, map[string]string{"partitions": "10"}},
		{batcher.Event{Kind: batcher.FlushDone, Val: 7}, slog.LevelDebug, map[string]string{"released": "7"}},
		{batcher.Event{Kind: batcher.CapacityRequested, Val: 70}, slog.LevelDebug, map[string]string{"demand": "70"}},
	}
	for _, c := range cases {
		h := &recorder{level: slog.LevelDebug}
		l := batcher.NewLogListener(slog.New(h))
		if got := l.Level(c.e); got != c.level {
			t.Errorf("%v: Level = %v, want %v", c.e, got, c.level)
		}
		l.Listen(c.e)
		recs := h.records()
		if len(recs) != 1 {
			t.Fatalf("%v: %d records, want 1", c.e, len(recs))
		}
		rec := recs[0]
		if rec.Level != c.level || rec.Message != "batcher "+c.e.Kind.String() {
			t.Errorf("%v: record at %v, %q; want %v, %q", c.e, rec.Level, rec.Message, c.level, "batcher "+c.e.Kind.String())
		}
		got := attrs(rec)
		for k, v := range c.attrs {
			if got[k] != v {
				t.Errorf("%v: attribute %s = %q, want %q (all: %v)", c.e, k, got[k], v, got)
			}
		}
		if _, ok := got["payloads"]; ok {
			t.Errorf("%v: payloads printed without WithPayloads: %v", c.e, got)
		}
		for k, v := range got {
			if strings.Contains(v, "secret payload") {
				t.Errorf("%v: attribute %s prints the payload: %q", c.e, k, v)
			}
		}
	}
}

// At Info, the handler's default level, the Debug noise (targets, audits,
// flushes) is not logged, and failures, throttles and
// pauses are.
func TestLogListenerFiltersByLevel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &recorder{level: slog.LevelInfo}
		b := batcher.NewBatcher().WithAuditInterval(time.Second).WithEmitFlush().WithEmitBatch().
			WithPauseTime(100 * time.Millisecond)
		b.AddListener(batcher.NewLogListener(slog.New(h)).Listen)
		n := 0
		w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
			n++
			switch n {
			case 1:
				return batcher.Throttle(0, errors.New("429"))
			case 2:
				return nil
			}
			return errors.New("gone")
		})
		if err := b.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := b.Enqueue(batcher.NewOperation(w, 1, "card 4111", true)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // audits run, the throttle's pause ends, the retry succeeds
		if err := b.Enqueue(batcher.NewOperation(w, 1, "card 4222", true)); err != nil {
			t.Fatal(err)
		}
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, rec := range h.records() {
			kinds = append(kinds, attrs(rec)["kind"])
			if strings.Contains(fmt.Sprint(attrs(rec)), "card") {
				t.Errorf("a payload was logged: %v", attrs(rec))
			}
		}
		want := []string{"throttled", "pause", "resume", "failed"}
		if strings.Join(kinds, " ") != strings.Join(want, " ") {
			t.Errorf("logged kinds %v, want %v", kinds, want)
		}
	})
}

// WithPayloads prints payloads, at most n per event, a typed operation's as
// its T; WithLevel moves a kind.
func TestLogListenerPayloadsAndLevel(t *testing.T) {
	tw := batcher.NewTypedWatcher(func(context.Context, []*batcher.TypedOperation[int]) error { return nil })
	var ops []*batcher.Operation
	for i := range 5 {
		ops = append(ops, &batcher.NewTypedOperation(tw, 1, 10+i, true).Operation)
	}
	ops = append(ops, batcher.NewOperation(batcher.NewWatcher(nil), 1, "plain", true))

	h := &recorder{level: slog.LevelDebug}
	l := batcher.NewLogListener(slog.New(h)).WithPayloads(3).WithLevel(batcher.Failed, slog.LevelWarn)
	l.Listen(batcher.Event{Kind: batcher.Failed, Batch: ops})
	rec := h.records()[0]
	if rec.Level != slog.LevelWarn {
		t.Errorf("Failed logged at %v after WithLevel(Failed, Warn)", rec.Level)
	}
	if got := attrs(rec)["payloads"]; got != "[10 11 12]" {
		t.Errorf("payloads = %q, want [10 11 12]", got)
	}

	h = &recorder{level: slog.LevelDebug}
	batcher.NewLogListener(slog.New(h)).WithPayloads(-1).Listen(batcher.Event{Kind: batcher.Retrying, Batch: ops})
	if got := attrs(h.records()[0])["payloads"]; got != "[10 11 12 13 14 plain]" {
		t.Errorf("payloads = %q, want all six", got)
	}

	h = &recorder{level: slog.LevelDebug}
	batcher.NewLogListener(slog.New(h)).WithPayloads(0).Listen(batcher.Event{Kind: batcher.Retrying, Batch: slices12(ops)})
	if got := attrs(h.records()[0])["payloads"]; strings.Count(got, " ")+1 != batcher.DefaultLogPayloads {
		t.Errorf("payloads = %q, want %d of them", got, batcher.DefaultLogPayloads)
	}

	defer func() {
		if recover() == nil {
			t.Error("WithPayloads after Listen did not panic")
		}
	}()
	l.WithPayloads(1)
}

// slices12 returns 12 operations, repeating ops.
func slices12(ops []*batcher.Operation) []*batcher.Operation {
	var out []*batcher.Operation
	for len(out) < 12 {
		out = append(out, ops...)
	}
	return out[:12]
}

// Secrets in an error are masked; a nil logger means slog.Default().
func TestLogListenerRedactsAndDefaults(t *testing.T) {
	h := &recorder{level: slog.LevelDebug}
	old := slog.Default()
	slog.SetDefault(slog.New(h))
	defer slog.SetDefault(old)
	batcher.NewLogListener(nil).Listen(batcher.Event{Kind: batcher.LimiterError,
		Err: errors.New(`GET https://acct.blob.core.windows.net/c?sig=SECRETSIG&se=2030: 403`)})
	recs := h.records()
	if len(recs) != 1 {
		t.Fatalf("%d records through slog.Default, want 1", len(recs))
	}
	if got := attrs(recs[0])["err"]; strings.Contains(got, "SECRETSIG") || !strings.Contains(got, "acct.blob.core.windows.net") {
		t.Errorf("err = %q: want the address with its signature masked", got)
	}
}
