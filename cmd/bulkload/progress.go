package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progress prints a live line about a running phase: items done, the units
// per second of the last second against the capacity, 429s, elapsed time
// and ETA. On a terminal it rewrites one line four times a second; otherwise
// it prints a line every two seconds.
type progress struct {
	w        io.Writer
	tty      bool
	quiet    bool
	capacity int
	unit     string

	mu     sync.Mutex
	status func(now time.Time) string // more to show, such as the lease store's state; nil for nothing
}

// setStatus sets a function whose text the line shows after the 429s, or
// nil for none.
func (p *progress) setStatus(f func(now time.Time) string) {
	p.mu.Lock()
	p.status = f
	p.mu.Unlock()
}

func newProgress(w io.Writer, quiet bool, capacity int, unit string) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, tty: tty, quiet: quiet, capacity: capacity, unit: unit}
}

// start shows the progress of a phase until the returned function is
// called, which prints the final line and returns once the goroutine has
// ended.
// rate gives the units of the last whole second, for the line.
func (p *progress) start(name string, total int, done func() int64, s *series, rate func(time.Time) float64) (stop func()) {
	if p.quiet {
		return func() {}
	}
	every := 2 * time.Second
	if p.tty {
		every = 250 * time.Millisecond
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.print(name, total, done(), s, rate, false)
			case <-quit:
				p.print(name, total, done(), s, rate, true)
				return
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
	}
}

func (p *progress) print(name string, total int, done int64, s *series, rate func(time.Time) float64, last bool) {
	now := time.Now()
	elapsed := now.Sub(s.start())
	_, _, throttled := s.totals()
	eta := "-"
	if done > 0 && int(done) < total {
		left := time.Duration(float64(elapsed) / float64(done) * float64(total-int(done)))
		eta = left.Round(time.Second).String()
	} else if int(done) >= total {
		eta = "0s"
	}
	extra := ""
	p.mu.Lock()
	if p.status != nil {
		extra = "  " + p.status(now)
	}
	p.mu.Unlock()
	line := fmt.Sprintf("%-7s %s/%s items  %s %s/s of %s  429s %s%s  %s  ETA %s",
		name, commas(done), commas(int64(total)), commas(int64(rate(now))), p.unit, commas(int64(p.capacity)),
		commas(throttled), extra, elapsed.Round(100*time.Millisecond), eta)
	switch {
	case p.tty && last:
		fmt.Fprintf(p.w, "\r%s\x1b[K\n", line)
	case p.tty:
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
	default:
		fmt.Fprintln(p.w, line)
	}
}

// commas renders n with thousands separators: 12,345.
func commas(n int64) string {
	if n < 0 {
		return "-" + commas(-n)
	}
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
