package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ratebatch/batcher/internal/cosmosmodel"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/samples/cosmos"
)

// report is what a run did, for the summary and for tests.
type report struct {
	cfg    config
	phases []phase
	chart  string // the chart's path, "" if none was written
}

// run is the whole program: flags, data, the loads, the summary and the
// chart. Progress goes to stderr, the summary to stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (*report, error) {
	rep, err := runJob(ctx, args, stdout, stderr)
	// Every address in a message is redacted where it is written; this is
	// the last guard.
	return rep, redact.Error(err)
}

func runJob(ctx context.Context, args []string, stdout, stderr io.Writer) (*report, error) {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	items, err := loadItems(cfg, os.Stdin)
	if err != nil {
		return nil, fmt.Errorf("-input: %w", err)
	}
	if cfg.target() != "clickhouse" {
		// An item that costs more than a second's capacity could never be
		// released: say so now rather than fail every such item.
		largest := 0
		for _, it := range items {
			largest = max(largest, len(it.Body))
		}
		if need := int(math.Ceil(cosmosmodel.WriteCharge(largest) * (1 + cfg.margin))); need > cfg.capacity {
			return nil, &usageError{fmt.Errorf("-capacity %d: the largest document (%s B) counts for %d RU with the margin, more than the Batcher may release in a second; raise -capacity (or -ru), or lower -size", cfg.capacity, commas(int64(largest)), need)}
		}
	}
	rep := &report{cfg: cfg}
	limit := cfg.ru // the live line shows what the service served against what it allows
	if cfg.target() == "clickhouse" {
		limit = cfg.capacity
	}
	prog := newProgress(stderr, cfg.quiet, limit, cfg.unit())
	// The Batcher's limiter first: a lease store that does not answer is
	// an error now, before any work.
	lim, closeLimiter, err := newLimiter(ctx, cfg, prog)
	if err != nil {
		return nil, err
	}
	defer closeLimiter()
	fmt.Fprintln(stdout, headline(cfg, items))
	metrics := &metricsServer{addr: cfg.metricsAddr, out: stdout}
	defer metrics.close()

	var runErr error
	if cfg.target() == "clickhouse" {
		p, err := loadClickHouse(ctx, cfg, lim, items, prog, metrics)
		if err != nil && p.name == "" {
			return nil, err
		}
		rep.phases = append(rep.phases, p)
		runErr = err
	} else {
		t := &cosmosTarget{cfg: cfg}
		p, err := loadBatcher(ctx, cfg, lim, t, items, prog, metrics)
		if err != nil && p.name == "" {
			return nil, err
		}
		rep.phases = append(rep.phases, p)
		runErr = err
		prog.setStatus(nil) // the naive loader has no limiter
		if cfg.naive && runErr == nil {
			t := &cosmosTarget{cfg: cfg}
			p, err := loadNaive(ctx, cfg, t, items, prog)
			if err != nil && p.name == "" {
				return nil, err
			}
			rep.phases = append(rep.phases, p)
			runErr = err
		}
	}

	summary(stdout, rep)
	if cfg.chart != "" {
		if err := writeChart(cfg.chart, chartFor(rep)); err != nil {
			return rep, err
		}
		rep.chart = cfg.chart
		fmt.Fprintf(stdout, "chart of %s/s over time: %s\n", cfg.unit(), cfg.chart)
	}
	if runErr != nil {
		return rep, runErr
	}
	var failed int64
	var errs []error
	for _, p := range rep.phases {
		failed += p.failed
		if p.failed > 0 || p.written != int64(p.items) {
			errs = append(errs, fmt.Errorf("%s loader: %d of %d items failed; the first: %v", p.name, p.items-int(p.written), p.items, p.firstErr))
		}
	}
	return rep, errors.Join(errs...)
}

func headline(cfg config, items []cosmos.Item) string {
	h := headlineTarget(cfg, items)
	if cfg.leaseStore != "" {
		h += fmt.Sprintf(", the limit shared through the lease store %s (prefix %q) plus %s reserved",
			redact.String(cfg.leaseStore), cfg.leasePrefix, commas(int64(cfg.reserved)))
	}
	return h
}

func headlineTarget(cfg config, items []cosmos.Item) string {
	size := 0
	for _, it := range items {
		size += len(it.Body)
	}
	src := "generated"
	if cfg.input != "" {
		src = "from " + cfg.input
	}
	avg := size / len(items)
	switch cfg.target() {
	case "clickhouse":
		return fmt.Sprintf("bulkload: %s documents (%s, about %s B each) into ClickHouse table %s, at most %s rows/s",
			commas(int64(len(items))), src, commas(int64(avg)), cfg.table, commas(int64(cfg.capacity)))
	case "cosmos":
		return fmt.Sprintf("bulkload: %s documents (%s, about %s B each) into %s/%s at %s (%s RU/s provisioned, the Batcher's limit %s RU/s)",
			commas(int64(len(items))), src, commas(int64(avg)), cfg.database, cfg.container, redact.String(cfg.cosmosEndpoint), commas(int64(cfg.ru)), commas(int64(cfg.capacity)))
	}
	return fmt.Sprintf("bulkload: %s documents (%s, about %s B each) into the embedded Cosmos DB model (%s RU/s provisioned, the Batcher's limit %s RU/s)",
		commas(int64(len(items))), src, commas(int64(avg)), commas(int64(cfg.ru)), commas(int64(cfg.capacity)))
}

// summary prints the phases side by side, then what the rows mean where
// that is not plain. The figures add up: for each phase, items written +
// items failed + items never ended = items; items sent at least once +
// writes retried = item writes sent; and for the naive loader, which sends
// one item a request, item writes sent = requests.
func summary(w io.Writer, rep *report) {
	cfg := rep.cfg
	unit := cfg.unit()
	ch := cfg.target() == "clickhouse"
	provisioned := float64(cfg.ru)
	if ch {
		provisioned = float64(cfg.capacity)
	}
	others := cfg.otherRU > 0 && len(rep.phases) > 0 && rep.phases[0].other != nil
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(label string, f func(p phase) string) {
		fmt.Fprintf(tw, "%s\t", label)
		for _, p := range rep.phases {
			fmt.Fprintf(tw, "%s\t", f(p))
		}
		fmt.Fprintln(tw)
	}
	unended := false
	for _, p := range rep.phases {
		unended = unended || p.written+p.failed < int64(p.items)
	}
	row("", func(p phase) string { return p.name })
	row("items written", func(p phase) string { return fmt.Sprintf("%s of %s", commas(p.written), commas(int64(p.items))) })
	row("items failed", func(p phase) string { return commas(p.failed) })
	if unended {
		row("items never ended (the run stopped)", func(p phase) string { return commas(int64(p.items) - p.written - p.failed) })
	}
	row("completion time", func(p phase) string { return p.elapsed.Round(10 * time.Millisecond).String() })
	row("item writes sent", func(p phase) string { return commas(p.first + p.resent) })
	row("  writes retried", func(p phase) string { return commas(p.resent) })
	if ch {
		row("inserts", func(p phase) string { return commas(p.requests) })
	} else {
		row("requests", func(p phase) string { return commas(p.requests) })
		row("429 answers", func(p phase) string { return commas(p.throttle) })
	}
	charged := "RU charged to the loader"
	if ch {
		charged = "rows inserted"
	}
	row(charged, func(p phase) string { return commas(int64(p.units + 0.5)) })
	row(unit+"/s, mean of its seconds", func(p phase) string { return commas(int64(p.units/float64(max(len(p.perSec), 1)) + 0.5)) })
	busiest, used, wasted := unit+" in the busiest second", "capacity used", "RU wasted (paid, unused)"
	if ch {
		wasted = "rows of capacity unused"
	}
	if others {
		const both = ", both workloads"
		busiest, used, wasted = busiest+both, used+both, wasted+both
	}
	row(busiest, func(p phase) string { return commas(int64(p.peak + 0.5)) })
	row(used, func(p phase) string { return fmt.Sprintf("%.0f%%", 100*p.used(cfg)) })
	row(wasted, func(p phase) string {
		return commas(int64(max(provisioned*float64(len(p.perSec))-p.served(), 0) + 0.5))
	})
	if others {
		row(fmt.Sprintf("other workload at %s RU/s: writes", commas(int64(cfg.otherRU))), func(p phase) string { return commas(p.other.writes) })
		row("its 429 answers", func(p phase) string { return commas(p.other.throttled) })
		row("its writes failed", func(p phase) string { return commas(p.other.failed) })
		row("its latency, p50", func(p phase) string { return p.other.p50.Round(time.Millisecond).String() })
		row("its latency, p99", func(p phase) string { return p.other.p99.Round(time.Millisecond).String() })
	}
	tw.Flush()
	fmt.Fprintln(w)
	if ch {
		fmt.Fprintln(w, "item writes sent: each row's first insert and its retries; an insert carries many rows.")
	} else {
		fmt.Fprintln(w, "item writes sent: each item's first write and its retries (429s and failed requests); a request is one write, or a transactional batch of several.")
		served := "\"the model served\" below is what the container spent"
		if others {
			served += ", the other workload's writes included"
		}
		if cfg.target() == "embedded" {
			fmt.Fprintf(w, "RU charged to the loader: what its requests' responses said; %s.\n", served)
		}
	}
	fmt.Fprintf(w, "seconds: the one-second windows the run touched, each counted whole (the mean, the capacity used and the %s are per window).\n", wastedWord(ch))
	if others {
		fmt.Fprintf(w, "\"both workloads\": the loader's and the other workload's (%s RU/s) together, against the %s RU/s provisioned.\n", commas(int64(cfg.otherRU)), commas(int64(cfg.ru)))
	}
	for _, p := range rep.phases {
		var notes []string
		if p.verified != "" {
			notes = append(notes, p.verified)
		}
		if p.server != nil {
			notes = append(notes, fmt.Sprintf("the model served %s RU and answered %s 429s", commas(int64(p.server.RU+0.5)), commas(p.server.Throttled)))
		}
		if p.firstErr != nil {
			notes = append(notes, "first error: "+redact.String(p.firstErr.Error()))
		}
		if len(notes) > 0 {
			fmt.Fprintf(w, "%s: %s\n", p.name, strings.Join(notes, "; "))
		}
	}
	if len(rep.phases) == 2 {
		b, n := rep.phases[0], rep.phases[1]
		fmt.Fprintf(w, "the batcher finished in %s with %s 429s; the naive loader took %s (%.1fx the batcher's time) with %s 429s\n",
			b.elapsed.Round(100*time.Millisecond), commas(b.throttle), n.elapsed.Round(100*time.Millisecond),
			n.elapsed.Seconds()/b.elapsed.Seconds(), commas(n.throttle))
		fmt.Fprintln(w, tradeOff(cfg, b, n))
	}
}

// tradeOff says plainly what the naive loader's time cost: when it is
// faster, it is so only by taking the other workload's share and failing
// its writes.
func tradeOff(cfg config, b, n phase) string {
	var s string
	if n.elapsed < b.elapsed {
		s = fmt.Sprintf("the naive loader was %.1fx as fast only by taking ", b.elapsed.Seconds()/n.elapsed.Seconds())
	} else {
		s = "the naive loader was slower, and took "
		if n.other == nil {
			s += "every RU it could all the same"
		}
	}
	if n.other == nil || b.other == nil {
		if n.elapsed < b.elapsed {
			s += "every RU it could"
		}
		return s + fmt.Sprintf(": %s of its requests answered 429, which a client sharing the container meets too; the batcher keeps to its limit (%s %s/s) and leaves the rest to them",
			commas(n.throttle), commas(int64(cfg.capacity)), cfg.unit())
	}
	if n.elapsed < b.elapsed {
		s += "the other workload's share"
	} else {
		s += "the other workload's share all the same"
	}
	return s + fmt.Sprintf(": its %s writes met %s 429s and %s failed, its p99 %s against %s while the batcher loaded (%s 429s, %s failed)",
		commas(n.other.writes), commas(n.other.throttled), commas(n.other.failed),
		n.other.p99.Round(time.Millisecond), b.other.p99.Round(time.Millisecond),
		commas(b.other.throttled), commas(b.other.failed))
}

func wastedWord(clickhouse bool) string {
	if clickhouse {
		return "unused rows"
	}
	return "RU wasted"
}

// chartFor draws each phase's units per second against the provisioned
// capacity and the Batcher's limit, and its 429s per second.
func chartFor(rep *report) []byte {
	cfg := rep.cfg
	colors := map[string]string{"batcher": "#1f77b4", "naive": "#ff7f0e"}
	var lines []line
	for _, p := range rep.phases {
		name := fmt.Sprintf("%s: %s items in %s, %s 429s", p.name, commas(p.written), p.elapsed.Round(100*time.Millisecond), commas(p.throttle))
		if p.other != nil {
			name += fmt.Sprintf("; the other workload meanwhile: %s 429s, p99 %s", commas(p.other.throttled), p.other.p99.Round(time.Millisecond))
		}
		lines = append(lines, line{
			name:      name,
			color:     colors[p.name],
			values:    p.perSec,
			throttles: p.thrSec,
			offset:    p.offset,
			end:       p.elapsed.Seconds(),
		})
	}
	c := chartSpec{
		title:    fmt.Sprintf("bulkload: RU/s of %s documents, %s RU/s provisioned", commas(int64(rep.phases[0].items)), commas(int64(cfg.ru))),
		unit:     cfg.unit(),
		capacity: float64(cfg.ru),
		capName:  "provisioned",
		limit:    float64(cfg.capacity),
		thrTitle: "429 answers per second",
		lines:    lines,
	}
	if cfg.otherRU > 0 {
		c.title = fmt.Sprintf("bulkload: RU/s the container served, %s documents plus another workload at %s RU/s",
			commas(int64(rep.phases[0].items)), commas(int64(cfg.otherRU)))
		c.thrTitle = "429 answers per second, the other workload's included"
		c.limitNote = ", for its own writes"
	}
	if cfg.target() == "clickhouse" {
		c.title = fmt.Sprintf("bulkload: rows/s of %s documents into ClickHouse", commas(int64(rep.phases[0].items)))
		c.capacity, c.capName, c.limit = float64(cfg.capacity), "the Batcher's limit", 0
	}
	return chartSVG(c)
}
