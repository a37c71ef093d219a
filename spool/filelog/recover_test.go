package filelog_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv("FILELOG_TEST_HOLD"); dir != "" {
		hold(dir)
		return
	}
	os.Exit(m.Run())
}

// hold is the child process of TestLockAcrossProcesses: it opens the log,
// says so, and keeps it until its stdin closes.
func hold(dir string) {
	l := filelog.New(dir)
	if err := l.Open(); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("open")
	io.Copy(io.Discard, os.Stdin)
	l.Close()
}

func rec(i int) []byte { return fmt.Appendf(nil, "record %04d %s", i, strings.Repeat("x", i%7)) }

// writeLog appends n records, one Append each, and closes the log.
func writeLog(t *testing.T, dir string, n int, segment int64) {
	t.Helper()
	l := filelog.New(dir).WithSync(filelog.SyncNever).WithSegmentSize(segment).WithMaxBytes(1 << 20).WithMaxRecordSize(100)
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := l.Append(t.Context(), [][]byte{rec(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// readAll opens dir and reads every record it delivers.
func readAll(t *testing.T, dir string, segment int64) ([]string, []filelog.Cut) {
	t.Helper()
	l := filelog.New(dir).WithSegmentSize(segment).WithMaxBytes(1 << 20).WithMaxRecordSize(100)
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var got []string
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		es, err := l.Read(ctx, 1000)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return got, l.Cuts()
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			got = append(got, string(e.Data))
		}
	}
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

func want(n int) []string {
	var s []string
	for i := range n {
		s = append(s, string(rec(i)))
	}
	return s
}

func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
	return to
}

// A torn write: the last record of the newest segment cut at every byte
// offset. Open keeps every earlier record and reports the cut.
func TestTornTailAtEveryOffset(t *testing.T) {
	base := t.TempDir()
	const n = 6
	writeLog(t, base, n, 1<<16)
	segs := segments(t, base)
	if len(segs) != 1 {
		t.Fatalf("segments %v, want one", segs)
	}
	last := segs[0]
	info, _ := os.Stat(last)
	size := info.Size()
	lastLen := int64(len(rec(n-1)) + 8)
	start := size - lastLen
	for cut := start; cut < size; cut++ {
		dir := copyDir(t, base)
		if err := os.Truncate(filepath.Join(dir, filepath.Base(last)), cut); err != nil {
			t.Fatal(err)
		}
		got, cuts := readAll(t, dir, 1<<16)
		if !slices.Equal(got, want(n-1)) {
			t.Fatalf("cut at %d: read %d records, want the %d before the torn one", cut, len(got), n-1)
		}
		if cut == start {
			if len(cuts) != 0 {
				t.Fatalf("cut at a record boundary %d: reported %v, want nothing", cut, cuts)
			}
			continue
		}
		if len(cuts) != 1 || !cuts[0].Tail || cuts[0].Offset != start || cuts[0].Bytes != cut-start {
			t.Fatalf("cut at %d: reported %+v, want one torn tail at %d of %d bytes", cut, cuts, start, cut-start)
		}
		// The log goes on: a record appended now is read after the kept ones.
		l := filelog.New(dir).WithMaxRecordSize(100).WithMaxBytes(1 << 20).WithSegmentSize(1 << 16)
		if err := l.Open(); err != nil {
			t.Fatal(err)
		}
		if err := l.Append(t.Context(), [][]byte{[]byte("after")}); err != nil {
			t.Fatal(err)
		}
		l.Close()
		if got, cuts := readAll(t, dir, 1<<16); !slices.Equal(got, append(want(n-1), "after")) || len(cuts) != 0 {
			t.Fatalf("cut at %d, then one append: read %v, cuts %+v; want the kept records, the new one, and no cut (it was made)", cut, got, cuts)
		}
	}
	// A torn tail can also be whole bytes that are wrong (a sector not
	// written): flip each byte of the last record.
	for at := start; at < size; at++ {
		dir := copyDir(t, base)
		p := filepath.Join(dir, filepath.Base(last))
		b, _ := os.ReadFile(p)
		b[at] ^= 0x5a
		os.WriteFile(p, b, 0o644)
		got, cuts := readAll(t, dir, 1<<16)
		if !slices.Equal(got, want(n-1)) || len(cuts) != 1 || cuts[0].Offset != start {
			t.Fatalf("byte %d flipped: read %d records, cuts %+v; want %d and a cut at %d", at, len(got), cuts, n-1, start)
		}
	}
}

// A segment corrupt in the middle of the log: its rest is set aside and
// reported, every other record is delivered.
func TestCorruptSegmentInTheMiddle(t *testing.T) {
	dir := t.TempDir()
	const n = 60
	writeLog(t, dir, n, 200)
	segs := segments(t, dir)
	if len(segs) < 4 {
		t.Fatalf("only %d segments", len(segs))
	}
	victim := segs[1]
	b, _ := os.ReadFile(victim)
	// Corrupt the checksum of the second record of the segment.
	first := int(b[0]) | int(b[1])<<8
	at := 8 + first + 4
	b[at] ^= 0xff
	os.WriteFile(victim, b, 0o644)
	var reported []filelog.Cut
	l := filelog.New(dir).WithSegmentSize(200).WithMaxBytes(1 << 20).WithMaxRecordSize(100).OnCut(func(c filelog.Cut) { reported = append(reported, c) })
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if len(reported) != 1 || reported[0].Tail || reported[0].File != victim || reported[0].Offset != int64(8+first) {
		t.Fatalf("reported %+v, want one corrupt (not tail) cut of %s at %d", reported, victim, 8+first)
	}
	if !strings.Contains(reported[0].String(), "corrupt") {
		t.Errorf("the cut says %q; want it to say the segment is corrupt", reported[0])
	}
	saved, err := os.ReadFile(reported[0].SavedAs)
	if err != nil || !slices.Equal(saved, b[8+first:]) {
		t.Errorf("the set-aside file %s holds %d bytes (%v), want the %d cut", reported[0].SavedAs, len(saved), err, len(b)-8-first)
	}
	got, _ := readAll(t, dir, 200)
	lost := map[string]bool{}
	for _, w := range want(n) {
		if !slices.Contains(got, w) {
			lost[w] = true
		}
	}
	// Only the records after the corruption in the victim are missing.
	inVictim := strings.Count(string(b[8+first:]), "record ")
	if len(lost) != inVictim {
		t.Fatalf("lost %d records %v, want only the %d of the corrupt segment's rest", len(lost), lost, inVictim)
	}
	for r := range lost {
		if !strings.Contains(string(saved), r) {
			t.Errorf("lost %q, which is not in the corrupt part", r)
		}
	}
}

// Two real processes: the second cannot open a spool the first holds, and
// can once the first is killed.
func TestLockAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "FILELOG_TEST_HOLD="+dir)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "open\n" {
		cmd.Process.Kill()
		t.Fatalf("the child said %q, %v", line, err)
	}
	l := filelog.New(dir)
	if err := l.Open(); !errors.Is(err, spool.ErrLocked) || !strings.Contains(err.Error(), dir) {
		l.Close()
		t.Fatalf("Open of a directory another process holds = %v, want ErrLocked naming the directory", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	l = filelog.New(dir)
	if err := l.Open(); err != nil {
		t.Fatalf("Open after the holder was killed = %v", err)
	}
	// And within one process, a second Log on the same directory.
	if err := filelog.New(dir).Open(); !errors.Is(err, spool.ErrLocked) {
		t.Fatalf("a second Open in the same process = %v, want ErrLocked", err)
	}
	l.Close()
}
