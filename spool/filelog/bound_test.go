package filelog_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

func dirBytes(t *testing.T, dir string) int64 {
	var n int64
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, p := range m {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// boundLongDone is set once TestBound has run its long form in this
// process: `go test -count=3` runs the minute once, not three times.
var boundLongDone atomic.Bool

// boundStop returns how long TestBound stops its consumer: the issue's
// minute the first time in a process, 500 ms after that, or what
// FILELOG_BOUND_STOP says (every time).
func boundStop() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("FILELOG_BOUND_STOP")); err == nil {
		return d
	}
	if boundLongDone.CompareAndSwap(false, true) {
		return time.Minute
	}
	return 500 * time.Millisecond
}

// The bound: producers go on while the consumer is stopped (for a minute,
// once per test process); the segments stay within MaxBytes, Append waits
// (or refuses, as configured), the heap stays flat, and once the consumer
// returns every appended record is delivered. Both forms (waiting and
// refusing) run at once, so the minute is spent once.
func TestBound(t *testing.T) {
	stop := boundStop()
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("refuse=%v", refuse), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			const maxBytes, segment = 8192, 2048
			l := filelog.New(dir).WithMaxBytes(maxBytes).WithSegmentSize(segment).WithMaxRecordSize(200)
			if refuse {
				l = l.WithErrorWhenFull()
			}
			if err := l.Open(); err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ctx, cancel := context.WithCancel(t.Context())
			var appended sync.Map
			var full, waiting atomic.Int64
			var wg sync.WaitGroup
			for p := range 4 {
				wg.Go(func() {
					for i := 0; ctx.Err() == nil; i++ {
						r := fmt.Sprintf("p%d-%06d-%s", p, i, strings.Repeat("x", 80))
						actx, acancel := context.WithTimeout(ctx, 20*time.Millisecond)
						err := l.Append(actx, [][]byte{[]byte(r)})
						acancel()
						switch {
						case err == nil:
							appended.Store(r, true)
						case errors.Is(err, spool.ErrFull):
							full.Add(1)
							i--
							time.Sleep(time.Millisecond)
						case errors.Is(err, context.DeadlineExceeded):
							// A record whose Append gave up may still
							// have been stored: not counted as acknowledged.
							waiting.Add(1)
						case ctx.Err() != nil:
						default:
							t.Error(err)
							return
						}
					}
				})
			}
			// The consumer is stopped: watch the disk, and (in the long
			// form) the live heap once a second over the stop's second
			// half. The heap is the process's: both forms run at once.
			var peak int64
			var heapLo, heapHi uint64
			var heapAt time.Time
			start := time.Now()
			for end := start.Add(stop); time.Now().Before(end); {
				time.Sleep(10 * time.Millisecond)
				peak = max(peak, dirBytes(t, dir))
				if stop >= 10*time.Second && time.Since(start) > stop/2 && time.Since(heapAt) >= time.Second {
					heapAt = time.Now()
					runtime.GC()
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					if heapLo == 0 || ms.HeapAlloc < heapLo {
						heapLo = ms.HeapAlloc
					}
					heapHi = max(heapHi, ms.HeapAlloc)
				}
			}
			if heapHi > 0 {
				t.Logf("live heap over the stop's second half (%v): %.1f to %.1f MiB", stop/2, float64(heapLo)/(1<<20), float64(heapHi)/(1<<20))
				// Records held on disk must cost no memory; the slack is
				// for the runtime and the other tests' leftovers.
				if heapHi > heapLo+8<<20 {
					t.Errorf("the live heap grew from %d to %d bytes while the consumer was stopped", heapLo, heapHi)
				}
			}
			if peak > maxBytes {
				t.Errorf("the segments held %d bytes while the consumer was stopped, over MaxBytes %d", peak, maxBytes)
			}
			if refuse && full.Load() == 0 {
				t.Errorf("no Append was refused with ErrFull")
			}
			if !refuse && (waiting.Load() == 0 || full.Load() != 0) {
				t.Errorf("%d Appends waited until their deadline and %d were refused; want some waiting and none refused", waiting.Load(), full.Load())
			}
			// The consumer returns: everything is delivered, the producers
			// go on, the disk stays bounded.
			got := map[string]bool{}
			deadline := time.Now().Add(500 * time.Millisecond)
			for time.Now().Before(deadline) {
				rctx, rcancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
				es, err := l.Read(rctx, 100)
				rcancel()
				if err != nil && !errors.Is(err, context.DeadlineExceeded) {
					t.Fatal(err)
				}
				var ids []spool.ID
				for _, e := range es {
					got[string(e.Data)] = true
					ids = append(ids, e.ID)
				}
				if err := l.Ack(t.Context(), ids); err != nil {
					t.Fatal(err)
				}
				peak = max(peak, dirBytes(t, dir))
			}
			cancel()
			wg.Wait()
			for {
				rctx, rcancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
				es, err := l.Read(rctx, 100)
				rcancel()
				if err != nil {
					break
				}
				for _, e := range es {
					got[string(e.Data)] = true
				}
			}
			missing := 0
			appended.Range(func(k, _ any) bool {
				if !got[k.(string)] {
					missing++
				}
				return true
			})
			n := 0
			appended.Range(func(k, _ any) bool { n++; return true })
			if missing > 0 {
				t.Errorf("%d of %d acknowledged records were not delivered", missing, n)
			}
			if n < 200 {
				t.Errorf("only %d records appended: the producers did not go on once the consumer returned", n)
			}
			if peak > maxBytes {
				t.Errorf("the segments held %d bytes, over MaxBytes %d", peak, maxBytes)
			}
			t.Logf("consumer stopped for %v: %d records appended, peak %d bytes on disk (MaxBytes %d), %d refused, %d appends gave up waiting", stop, n, peak, maxBytes, full.Load(), waiting.Load())
		})
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	l := filelog.New(dir).WithMaxRecordSize(100).WithSegmentSize(1000).WithMaxBytes(10_000)
	if err := l.Open(); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := t.Context()
	if err := l.Append(ctx, [][]byte{[]byte("before")}); err != nil {
		t.Fatal(err)
	}
	err := l.Append(ctx, [][]byte{[]byte("ok"), make([]byte, 101)})
	if !errors.Is(err, spool.ErrTooLarge) || !strings.Contains(err.Error(), "101") || !strings.Contains(err.Error(), "MaxRecordSize") {
		t.Fatalf("Append of a 101-byte record over a limit of 100 = %v, want ErrTooLarge naming the size and the setting", err)
	}
	if err := l.Append(ctx, [][]byte{[]byte("after"), make([]byte, 100)}); err != nil {
		t.Fatalf("Append of a record at the limit = %v", err)
	}
	es, err := l.Read(ctx, 10)
	if err != nil || len(es) != 3 || string(es[0].Data) != "before" || string(es[1].Data) != "after" {
		t.Fatalf("read %d records (%v); want before, after and the 100-byte one, and nothing of the refused Append", len(es), err)
	}
}

func TestBadSettings(t *testing.T) {
	err := filelog.New("").WithMaxRecordSize(0).WithSegmentSize(4).WithMaxBytes(5).Open()
	for _, name := range []string{"directory", "MaxRecordSize", "SegmentSize", "MaxBytes"} {
		if !strings.Contains(fmt.Sprint(err), name) {
			t.Errorf("Open's error %q does not name %s", err, name)
		}
	}
	if !errors.Is(err, spool.ErrInvalidSetting) {
		t.Errorf("Open's error %v does not wrap ErrInvalidSetting", err)
	}
}
