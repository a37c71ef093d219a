// Package spooltest holds the tests that every spool backend must pass,
// run by each backend's own tests against the real thing.
package spooltest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ratebatch/batcher/spool"
)

// A Backend opens the backend under test. open returns the same store each
// time it is called within one test (a reopen after Close), as a restarted
// process would see it; every test gets a fresh store.
type Backend func(t *testing.T) (open func() spool.Backend)

// Run runs the suite.
func Run(t *testing.T, fresh Backend) {
	t.Run("OrderAckReopen", func(t *testing.T) { orderAckReopen(t, fresh(t)) })
	t.Run("UnackedDeliveredAgain", func(t *testing.T) { unackedAgain(t, fresh(t)) })
	t.Run("DeadLetters", func(t *testing.T) { deadLetters(t, fresh(t)) })
	t.Run("Closed", func(t *testing.T) { closed(t, fresh(t)) })
}

func recs(from, to int) [][]byte {
	var r [][]byte
	for i := from; i < to; i++ {
		r = append(r, fmt.Appendf(nil, "record-%06d", i))
	}
	return r
}

// ReadAll reads until n records came or wait passes without one.
func ReadAll(t testing.TB, b spool.Backend, n int, wait time.Duration) []spool.Entry {
	t.Helper()
	var got []spool.Entry
	for len(got) < n {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		es, err := b.Read(ctx, n-len(got))
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		got = append(got, es...)
	}
	return got
}

func datas(es []spool.Entry) []string {
	var s []string
	for _, e := range es {
		s = append(s, string(e.Data))
	}
	return s
}

func ids(es []spool.Entry) []spool.ID {
	var s []spool.ID
	for _, e := range es {
		s = append(s, e.ID)
	}
	return s
}

func orderAckReopen(t *testing.T, open func() spool.Backend) {
	ctx := t.Context()
	b := open()
	for i := 0; i < 100; i += 10 {
		if err := b.Append(ctx, recs(i, i+10)); err != nil {
			t.Fatal(err)
		}
	}
	got := ReadAll(t, b, 100, 2*time.Second)
	want := datas(slices.Collect(func(yield func(spool.Entry) bool) {
		for _, r := range recs(0, 100) {
			yield(spool.Entry{Data: r})
		}
	}))
	if !slices.Equal(datas(got), want) {
		t.Fatalf("read %d records %v..., want the 100 appended in order", len(got), datas(got)[:min(3, len(got))])
	}
	for i := 1; i < len(got); i++ {
		if a, c := got[i-1].ID, got[i].ID; !(a.Hi < c.Hi || a.Hi == c.Hi && a.Lo < c.Lo) {
			t.Fatalf("IDs not growing: %v then %v", a, c)
		}
	}
	if err := b.Ack(ctx, ids(got)); err != nil {
		t.Fatal(err)
	}
	if more := ReadAll(t, b, 1, 200*time.Millisecond); len(more) != 0 {
		t.Fatalf("read %v after all was read", datas(more))
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = open()
	defer b.Close()
	if more := ReadAll(t, b, 1, 300*time.Millisecond); len(more) != 0 {
		t.Fatalf("after a reopen, read %v, all of which was acknowledged", datas(more))
	}
	if err := b.Append(ctx, recs(100, 101)); err != nil {
		t.Fatal(err)
	}
	if got := datas(ReadAll(t, b, 1, 2*time.Second)); !slices.Equal(got, []string{"record-000100"}) {
		t.Fatalf("after a reopen, read %v, want the new record", got)
	}
}

func unackedAgain(t *testing.T, open func() spool.Backend) {
	ctx := t.Context()
	b := open()
	if err := b.Append(ctx, recs(0, 50)); err != nil {
		t.Fatal(err)
	}
	got := ReadAll(t, b, 50, 2*time.Second)
	if len(got) != 50 {
		t.Fatalf("read %d, want 50", len(got))
	}
	// Ack every record but 10, 11 and 40..49 (out of order).
	var ack []spool.ID
	for i := 39; i >= 0; i-- {
		if i != 10 && i != 11 {
			ack = append(ack, got[i].ID)
		}
	}
	if err := b.Ack(ctx, ack); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = open()
	defer b.Close()
	again := datas(ReadAll(t, b, 50, 500*time.Millisecond))
	for _, i := range []int{10, 11, 40, 41, 45, 49} {
		if want := fmt.Sprintf("record-%06d", i); !slices.Contains(again, want) {
			t.Errorf("after a reopen, %s (never acknowledged) was not delivered again; got %v", want, again)
		}
	}
	for _, i := range []int{0, 9} {
		if rec := fmt.Sprintf("record-%06d", i); slices.Contains(again, rec) {
			t.Errorf("after a reopen, %s (acknowledged, before every unacknowledged one) was delivered again", rec)
		}
	}
}

func deadLetters(t *testing.T, open func() spool.Backend) {
	ctx := t.Context()
	b := open()
	if err := b.Append(ctx, recs(0, 5)); err != nil {
		t.Fatal(err)
	}
	got := ReadAll(t, b, 5, 2*time.Second)
	if len(got) != 5 {
		t.Fatalf("read %d, want 5", len(got))
	}
	if err := b.Dead(ctx, []spool.Entry{got[1], got[3]}, []string{"bad one", "bad three"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, []spool.ID{got[0].ID, got[2].ID, got[4].ID}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = open()
	defer b.Close()
	if more := ReadAll(t, b, 1, 300*time.Millisecond); len(more) != 0 {
		t.Fatalf("after a reopen, read %v; every record had ended", datas(more))
	}
	var dead []spool.DeadEntry
	if err := b.DeadLetters(ctx, func(e spool.DeadEntry) error { dead = append(dead, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(dead) != 2 || string(dead[0].Data) != "record-000001" || dead[0].Reason != "bad one" || dead[0].From != got[1].ID ||
		string(dead[1].Data) != "record-000003" || dead[1].Reason != "bad three" {
		t.Fatalf("dead letters %+v, want records 1 and 3 with their reasons", dead)
	}
	n, err := b.Replay(ctx)
	if err != nil || n != 2 {
		t.Fatalf("Replay = %d, %v; want 2, nil", n, err)
	}
	if again := datas(ReadAll(t, b, 2, 2*time.Second)); !slices.Equal(again, []string{"record-000001", "record-000003"}) {
		t.Fatalf("after Replay, read %v, want records 1 and 3", again)
	}
	dead = nil
	if err := b.DeadLetters(ctx, func(e spool.DeadEntry) error { dead = append(dead, e); return nil }); err != nil || len(dead) != 0 {
		t.Fatalf("after Replay, dead letters %v (%v), want none", dead, err)
	}
}

func closed(t *testing.T, open func() spool.Backend) {
	b := open()
	errc := make(chan error, 1)
	go func() {
		_, err := b.Read(context.Background(), 10)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, spool.ErrClosed) {
			t.Errorf("a Read blocked during Close returned %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a Read blocked during Close did not return")
	}
	if err := b.Append(context.Background(), recs(0, 1)); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("a second Close = %v", err)
	}
}
