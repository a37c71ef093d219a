package main

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// TestCapacityTwentyTimesTheModel is issue 14's check, smaller: the
// Batcher's limit is 20 times what the model serves (10,000 RU/s against
// 500), and the load still completes near the ideal (the RU it was charged
// at 500 RU/s), with few 429s, because the Controller finds the 500. With a
// fixed limit (-limiter fixed) most of the requests are answered 429 (79%
// in a run of this test): each second's burst is throttled, and the
// Batcher pauses and retries.
func TestCapacityTwentyTimesTheModel(t *testing.T) {
	if testing.Short() {
		t.Skip("about ten seconds")
	}
	var out bytes.Buffer
	rep, err := run(t.Context(), []string{"-ru", "500", "-other-ru", "0", "-capacity", "10000", "-items", "700",
		"-naive=false", "-chart", "", "-quiet", "-timeout", "90s"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	p := rep.phases[0]
	if p.written != 700 || p.verified != "all 700 items stored, each once" {
		t.Errorf("written %d, verified %q", p.written, p.verified)
	}
	ideal := time.Duration(p.units / 500 * float64(time.Second))
	share := float64(p.throttle) / float64(max(p.requests, 1))
	// Bounds for a loaded 2-core machine: the exact check (3,000 items)
	// asks for 1.3x and 5%; on a load of 8 s the Controller's start (from
	// half the limit, doubling) and a stalled second weigh more. The 429s
	// are bounded in number, not as a share: they come from the first
	// burst, before the first answers (18-23 of 119-157 requests in runs
	// of this test, at a quarter and at half the limit), whatever the
	// run's length; with a fixed limit every second's burst is throttled.
	if p.elapsed > 2*ideal || p.throttle > 30 {
		t.Errorf("%v against an ideal of %v (%.2fx), %d 429s of %d requests (%.1f%%); want at most 2x and 30 429s",
			p.elapsed, ideal, p.elapsed.Seconds()/ideal.Seconds(), p.throttle, p.requests, 100*share)
	}
	checkSummary(t, rep, out.String())
	t.Logf("%v against an ideal of %v (%.2fx); %d 429s of %d requests (%.1f%%)",
		p.elapsed, ideal, p.elapsed.Seconds()/ideal.Seconds(), p.throttle, p.requests, 100*share)
}

// The comparison's last lines say the trade-off plainly: when the naive
// loader is faster, it is faster only by taking the other workload's share
// and failing its writes; when it is not, it is slower and did so anyway.
func TestTradeOffText(t *testing.T) {
	cfg := config{otherRU: 1000, ru: 10000}
	b := phase{name: "batcher", elapsed: 7 * time.Second, other: &otherResult{writes: 1200, p99: 20 * time.Millisecond}}
	other := func(thr, failed int64, p99 time.Duration) *otherResult {
		return &otherResult{writes: 1400, throttled: thr, failed: failed, p99: p99}
	}
	cases := []struct {
		name string
		n    phase
		cfg  config
		want []string
	}{
		{"naive faster, the other workload hurt",
			phase{name: "naive", elapsed: 6 * time.Second, throttle: 3000, other: other(469, 12, 4*time.Second)}, cfg,
			[]string{"the naive loader was 1.2x as fast only by taking the other workload's share",
				"its 1,400 writes met 469 429s and 12 failed", "p99 4s against 20ms while the batcher loaded"}},
		{"naive slower, the other workload hurt",
			phase{name: "naive", elapsed: 8 * time.Second, throttle: 3000, other: other(469, 0, 4*time.Second)}, cfg,
			[]string{"the naive loader was slower, and took the other workload's share all the same",
				"its 1,400 writes met 469 429s and 0 failed"}},
		{"no other workload",
			phase{name: "naive", elapsed: 6 * time.Second, throttle: 3000}, config{ru: 10000},
			[]string{"the naive loader was 1.2x as fast only by taking every RU it could: 3,000 of its requests answered 429, which a client sharing the container meets too"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := tradeOff(c.cfg, b, c.n)
			for _, w := range c.want {
				if !bytes.Contains([]byte(got), []byte(w)) {
					t.Errorf("%q\nlacks %q", got, w)
				}
			}
		})
	}
}
