package main

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
)

// A small run of every figure, to keep the program working; the figures
// themselves come from a full run (docs/spool.md).
func TestSmallRun(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"-json", "-records", "3000", "-rounds", "1", "-memrecords", "2000", "-dir", t.TempDir()}, &out, io.Discard); code != 0 {
		t.Fatalf("run = %d", code)
	}
	var f Figures
	if err := json.Unmarshal(out.Bytes(), &f); err != nil {
		t.Fatalf("%v in %s", err, out.String())
	}
	if len(f.Ratios) != 1 || f.Ratios[0] <= 0 || f.AppendP99Ms <= 0 || len(f.RecordsPerFsync) != 1 || f.RecordsPerFsync[0] < 1 || len(f.HeapInUseMiB) != 10 || f.DiskFsyncsPerSec <= 0 {
		t.Fatalf("figures %+v: want one of each, all more than 0", f)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-records", "0"}, {"-rounds", "-1"}, {"-memrecords", "-1"}, {"-nope"}} {
		if code := run(args, io.Discard, io.Discard); code != 2 {
			t.Errorf("run(%v) = %d, want 2", args, code)
		}
	}
}
