package filelog_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ratebatch/batcher/spool/filelog"
)

// Reads give back every record, in order and intact, whatever their sizes
// (from one byte to more than the reader's 256 KiB chunk) and however many
// each Read asks for, while the reader keeps what it read ahead between
// calls.
func TestReadAcrossChunks(t *testing.T) {
	for _, c := range []struct {
		name           string
		maxRecord, big int
		segment        int64
	}{
		{"records over a chunk", 600 << 10, 300 << 10, 4 << 20},
		{"segments under a chunk", 1000, 900, 4096},
	} {
		t.Run(c.name, func(t *testing.T) { readAcrossChunks(t, c.maxRecord, c.big, c.segment) })
	}
}

func readAcrossChunks(t *testing.T, maxRecord, big int, segment int64) {
	ctx := context.Background()
	l := filelog.New(t.TempDir()).WithSync(filelog.SyncNever).WithMaxRecordSize(maxRecord).WithSegmentSize(segment).WithMaxBytes(64 << 20)
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	var want [][]byte
	for i := range 600 {
		n := 1 + rng.IntN(300)
		if i%50 == 7 {
			n = big + rng.IntN(maxRecord-big) // over a chunk, or most of a segment
		}
		rec := make([]byte, n)
		for j := range rec {
			rec[j] = byte(rng.Uint32())
		}
		want = append(want, rec)
		if err := l.Append(ctx, [][]byte{rec}); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	for len(got) < len(want) {
		es, err := l.Read(ctx, 1+rng.IntN(40))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			got = append(got, e.Data)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("read %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d: read %d bytes that differ from the %d appended", i, len(got[i]), len(want[i]))
		}
	}
}

// A record that changed on disk after Open is reported by Read, naming the
// segment and the offset, not returned.
func TestReadFindsCorruption(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := filelog.New(dir).WithSync(filelog.SyncNever)
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 3 {
		if err := l.Append(ctx, [][]byte{bytes.Repeat([]byte("r"), 100)}); err != nil {
			t.Fatal(err)
		}
	}
	seg := filepath.Join(dir, "00000000000000000001.seg")
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The second record's data.
	if _, err := f.WriteAt([]byte("x"), 108+8+50); err != nil {
		t.Fatal(err)
	}
	f.Close()
	es, err := l.Read(ctx, 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("first Read: %d records, %v; want the one before the corruption", len(es), err)
	}
	_, err = l.Read(ctx, 10)
	var ce *filelog.CorruptError
	if !errors.As(err, &ce) || ce.File != seg || ce.Offset != 108 {
		t.Fatalf("second Read: %v; want a CorruptError for %s at offset 108", err, seg)
	}
}
