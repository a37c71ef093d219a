package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ratebatch/batcher/internal/servicetest"
)

// checkSVG fails unless path holds a well-formed SVG document with at
// least polylines lines.
func checkSVG(t *testing.T, path string, polylines int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	root, n := "", 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart %s is not well-formed XML: %v", path, err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
				if se.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q", se.Name.Space)
				}
			}
			if se.Name.Local == "polyline" {
				n++
			}
		}
	}
	if root != "svg" || n < polylines {
		t.Errorf("chart: root <%s>, %d polylines; want <svg> and %d", root, n, polylines)
	}
}

// TestRunEmbedded runs the main job in process on the embedded model, with
// fewer RU than a second's capacity, so that the Batcher can never meet a
// 429: every item is stored once, by both loaders, and the chart is SVG.
func TestRunEmbedded(t *testing.T) {
	chart := filepath.Join(t.TempDir(), "ru.svg")
	var out, errOut bytes.Buffer
	rep, err := run(t.Context(), []string{"-items", "300", "-ru", "5000", "-chart", chart}, &out, &errOut)
	if err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	if len(rep.phases) != 2 {
		t.Fatalf("%d phases, want batcher and naive", len(rep.phases))
	}
	for _, p := range rep.phases {
		if p.written != 300 || p.failed != 0 || p.verified != "all 300 items stored, each once" {
			t.Errorf("%s: written %d, failed %d, verified %q", p.name, p.written, p.failed, p.verified)
		}
		// The model served the loader's RU and the other workload's: at
		// least what their responses said, more if the other workload's
		// last writes were cut short (finish cancels those still under
		// way after 10 s, which a stalled machine can reach) after the
		// model had charged them.
		if math.Abs(p.units-300*5.71) > 0.01 || p.other == nil || p.server == nil ||
			p.server.RU < p.units+p.other.units-0.01 {
			t.Errorf("%s: loader %v RU, other workload %+v, the model %+v; want %v RU for the loader and at least the sum served",
				p.name, p.units, p.other, p.server, 300*5.71)
		}
	}
	// 1,713 RU of items and 1,000 RU/s of the other workload within 5,000 RU/s.
	if b := rep.phases[0]; b.throttle != 0 || b.server.Throttled != 0 || b.other.throttled != 0 || b.other.failed != 0 {
		t.Errorf("batcher met %d 429s, the other workload %d (the model counted %d), want none", b.throttle, b.other.throttled, b.server.Throttled)
	}
	if rep.cfg.otherRU != 1000 || rep.cfg.capacity != 4000 {
		t.Errorf("other workload %d RU/s, capacity %d; want 1,000 and 4,000 by default", rep.cfg.otherRU, rep.cfg.capacity)
	}
	checkSVG(t, chart, 2)
	checkSummary(t, rep, out.String())
	for _, want := range []string{"items written", "429 answers", "completion time", "RU wasted", "chart of RU/s over time: " + chart,
		// The rows that count both workloads say so, and a line says
		// what "both workloads" means.
		"capacity used, both workloads", `"both workloads": the loader's and the other workload's (1,000 RU/s) together`,
		// What the loader was charged, beside what the model served.
		`RU charged to the loader: what its requests' responses said; "the model served" below is what the container spent, the other workload's writes included.`,
		// Which way the ratio goes.
		"x the batcher's time) with",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(errOut.String(), "batcher 300/300 items") {
		t.Errorf("progress lacks the final line:\n%s", errOut.String())
	}
	t.Logf("\n%s", out.String())
}

// TestRunSaturated keeps the Batcher busy for several seconds at a low
// capacity: every item is still stored once and no second's RU goes over
// the provisioned throughput.
func TestRunSaturated(t *testing.T) {
	if testing.Short() {
		t.Skip("a few seconds")
	}
	var out bytes.Buffer
	rep, err := run(t.Context(), []string{"-items", "400", "-ru", "1000", "-other-ru", "0", "-naive=false", "-chart", "", "-quiet"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	p := rep.phases[0]
	if p.written != 400 || p.verified != "all 400 items stored, each once" {
		t.Errorf("written %d, verified %q", p.written, p.verified)
	}
	for i, v := range p.perSec {
		if v > 1000 {
			t.Errorf("second %d: %v RU, over the 1,000 provisioned", i, v)
		}
	}
	if p.elapsed < 2*time.Second {
		t.Errorf("2,284 RU at 1,000 RU/s in %v", p.elapsed)
	}
	checkSummary(t, rep, out.String())
	t.Logf("429s: %d (the model: %d); %v", p.throttle, p.server.Throttled, p.elapsed)
}

func TestInputFile(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "docs.jsonl")
	var lines []string
	for i := range 50 {
		lines = append(lines, fmt.Sprintf(`{"id":"d%d","tenant":"t%d","n":%d}`, i, i%3, i), "")
	}
	if err := os.WriteFile(in, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := run(t.Context(), []string{"-input", in, "-partition-key", "/tenant", "-naive=false", "-chart", "", "-quiet"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if p := rep.phases[0]; p.written != 50 || p.verified != "all 50 items stored, each once" {
		t.Errorf("written %d, verified %q", p.written, p.verified)
	}
	checkSummary(t, rep, out.String())
}

func TestReadLinesErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"id":"a","pk":"x"}` + "\n" + `{"id":"a","pk":"x"}`, "in.jsonl:2: the id \"a\" with partition key \"x\" is on line 1 too"},
		{`{"pk":"x"}`, `in.jsonl:1: the document has no string "id"`},
		{`{"id":"a"}`, `in.jsonl:1: the document has no string "pk"`},
		{`{"id":"a","pk":7}`, `in.jsonl:1: the document has no string "pk"`},
		{"\n\n[1,2]", "in.jsonl:3: not a JSON object"},
		{"\n \n", "in.jsonl: no documents"},
	}
	for _, tt := range tests {
		_, err := readLines(strings.NewReader(tt.in), "in.jsonl", "pk")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("readLines(%q): %v, want %q", tt.in, err, tt.want)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		want []string // each must be in the error
	}{
		{[]string{"-items", "0"}, []string{"-items 0: must be at least 1"}},
		{[]string{"-items", "-5", "-ru", "0"}, []string{"-items -5", "-ru 0: must be at least 1 RU/s"}},
		{[]string{"-size", "10"}, []string{"-size 10: must be from 64"}},
		{[]string{"-size", "3000000"}, []string{"-size 3000000"}},
		{[]string{"-partitions", "0"}, []string{"-partitions 0"}},
		{[]string{"-capacity", "-1"}, []string{"-capacity -1"}},
		{[]string{"-naive-workers", "-1"}, []string{"-naive-workers -1"}},
		{[]string{"-margin", "1"}, []string{"-margin 1: must be 0 or more and less than 1"}},
		{[]string{"-margin", "-0.5"}, []string{"-margin -0.5"}},
		{[]string{"-other-ru", "10000"}, []string{"-other-ru 10000: must be from 0 to less than -ru (10000)"}},
		{[]string{"-other-ru", "-2"}, []string{"-other-ru -2"}},
		{[]string{"-clickhouse", "clickhouse://127.0.0.1:9000", "-other-ru", "5"}, []string{"-other-ru 5: is for Cosmos DB only"}},
		{[]string{"-timeout", "0s"}, []string{"-timeout 0s"}},
		{[]string{"-input", filepath.Join(dir, "nope.jsonl")}, []string{"-input " + filepath.Join(dir, "nope.jsonl") + ": cannot be read"}},
		{[]string{"-input", dir}, []string{"is a directory"}},
		{[]string{"-input", "-", "-items", "5"}, []string{"-items 5: cannot be used with -input"}},
		{[]string{"-partition-key", "pk"}, []string{"-partition-key pk"}},
		{[]string{"-partition-key", "/a/b"}, []string{"-partition-key /a/b"}},
		{[]string{"-cosmos-endpoint", "127.0.0.1:8081"}, []string{"-cosmos-endpoint 127.0.0.1:8081: must be an http(s) URL"}},
		{[]string{"-cosmos-endpoint", "https://127.0.0.1:8081/", "-cosmos-key", "not base64!"}, []string{"-cosmos-key (hidden): is not a base64 account key"}},
		{[]string{"-cosmos-key", "abcd"}, []string{"-cosmos-key (given): needs -cosmos-endpoint"}},
		{[]string{"-cosmos-endpoint", "https://x/", "-clickhouse", "clickhouse://127.0.0.1:9000"}, []string{"-clickhouse clickhouse://127.0.0.1:9000: cannot be used with -cosmos-endpoint"}},
		{[]string{"-clickhouse", "clickhouse://127.0.0.1:9000/default?dial_timeout=xyz"}, []string{"-clickhouse clickhouse://127.0.0.1:9000/default?dial_timeout=xyz: is not a ClickHouse DSN"}},
		{[]string{"-clickhouse", "clickhouse://127.0.0.1:9000", "-table", "a;drop"}, []string{"-table a;drop"}},
		{[]string{"-database", ""}, []string{`-database "": must be a non-empty name`}},
		{[]string{"-container", "a/b"}, []string{`-container "a/b"`}},
		{[]string{"-nosuchflag"}, []string{"flag provided but not defined: -nosuchflag"}},
		{[]string{"-items", "many"}, []string{`invalid value "many" for flag -items`}},
		{[]string{"extra"}, []string{`unexpected arguments ["extra"]`}},
		{[]string{"-lease-store", "mongo://x:1"}, []string{`-lease-store: lease store mongo://x:1: unknown scheme "mongo"`}},
		{[]string{"-lease-store", "https://acct.blob.core.windows.net/"}, []string{"must name the container"}},
		{[]string{"-lease-store", "redis://127.0.0.1:6379", "-capacity", "1500", "-reserved", "-1"}, []string{"-reserved -1", "-capacity 1500: must be a multiple of -factor (1000)"}},
		{[]string{"-lease-store", "redis://127.0.0.1:6379", "-factor", "0", "-lease-prefix", ""}, []string{"-factor 0", `-lease-prefix "": must not be empty`}},
		{[]string{"-reserved", "100"}, []string{"-reserved (given): needs -lease-store"}},
		{[]string{"-items", "3", "-size", "1000000", "-capacity", "100"}, []string{"-capacity 100: the largest document (1,000,000 B) counts for 444 RU"}},
	}
	for _, tt := range tests {
		_, err := run(context.Background(), tt.args, io.Discard, io.Discard)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("run(%q): %v, want a usage error", tt.args, err)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("run(%q): %q, want it to say %q", tt.args, err, w)
			}
		}
	}
	if _, err := run(context.Background(), []string{"-h"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// TestUnreachable checks that a wrong endpoint fails fast, naming it.
func TestUnreachable(t *testing.T) {
	start := time.Now()
	_, err := run(t.Context(), []string{"-cosmos-endpoint", "https://127.0.0.1:1/", "-items", "10", "-quiet"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "cosmos endpoint https://127.0.0.1:1/ is unreachable") {
		t.Errorf("unreachable Cosmos DB: %v", err)
	}
	_, err = run(t.Context(), []string{"-clickhouse", "clickhouse://127.0.0.1:1/default", "-items", "10", "-quiet"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "clickhouse [127.0.0.1:1]") {
		t.Errorf("unreachable ClickHouse: %v", err)
	}
	if d := time.Since(start); d > 12*time.Second {
		t.Errorf("took %v to report unreachable endpoints", d)
	}
}

func TestRealCosmos(t *testing.T) {
	addr := servicetest.Need(t, servicetest.Cosmos)
	db := fmt.Sprintf("bulkload-test-%d", time.Now().UnixNano())
	var out bytes.Buffer
	rep, err := run(t.Context(), []string{"-cosmos-endpoint", addr, "-database", db, "-items", "200", "-ru", "2000", "-chart", "", "-quiet"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, p := range rep.phases {
		if p.written != 200 || p.verified != "the container holds 200 documents" {
			t.Errorf("%s: written %d, verified %q", p.name, p.written, p.verified)
		}
	}
	checkSummary(t, rep, out.String())
}

// TestSharedThroughRedis loads with the limit shared through the real Redis
// as a lease store: the loader leases the partitions it needs, and every
// item is stored once without a 429.
func TestSharedThroughRedis(t *testing.T) {
	addr := servicetest.Need(t, servicetest.Redis)
	prefix := fmt.Sprintf("bulkload-test-%d", time.Now().UnixNano())
	var out bytes.Buffer
	rep, err := run(t.Context(), []string{"-items", "300", "-ru", "5000", "-capacity", "4000", "-naive=false", "-chart", "", "-quiet",
		"-lease-store", "redis://" + addr, "-lease-prefix", prefix, "-reserved", "100"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	p := rep.phases[0]
	if p.written != 300 || p.verified != "all 300 items stored, each once" || p.throttle != 0 {
		t.Errorf("written %d, verified %q, %d 429s", p.written, p.verified, p.throttle)
	}
	if !strings.Contains(out.String(), "shared through the lease store redis://"+addr) {
		t.Errorf("the headline does not say the limit is shared:\n%s", out.String())
	}
	checkSummary(t, rep, out.String())
}

func TestRealClickHouse(t *testing.T) {
	addr := servicetest.Need(t, servicetest.ClickHouse)
	chart := filepath.Join(t.TempDir(), "rows.svg")
	var out bytes.Buffer
	rep, err := run(t.Context(), []string{"-clickhouse", "clickhouse://" + addr + "/default", "-items", "3000", "-size", "100", "-capacity", "2000", "-chart", chart, "-quiet"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	p := rep.phases[0]
	if len(rep.phases) != 1 || p.written != 3000 || !strings.HasPrefix(p.verified, "all 3,000 rows of run") {
		t.Errorf("%d phases; written %d, verified %q", len(rep.phases), p.written, p.verified)
	}
	for i, v := range p.perSec {
		if v > 2000 {
			t.Errorf("second %d: %v rows, over the 2,000 a second allowed", i, v)
		}
	}
	checkSVG(t, chart, 1)
	checkSummary(t, rep, out.String())
}

func TestChartSVG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.svg")
	svg := chartSVG(chartSpec{title: `a <title> & "quotes"`, unit: "RU", capacity: 10000, capName: "provisioned", limit: 9000, lines: []line{
		{name: "a & b", color: "#123456", values: []float64{100, 20000, 0}, throttles: []int64{0, 5, 0}, end: 2.5},
		{name: "empty", color: "#654321"},
	}})
	if err := os.WriteFile(path, svg, 0o644); err != nil {
		t.Fatal(err)
	}
	checkSVG(t, path, 2)
	// Ticks are round numbers, the time axis's included for a run under a
	// second.
	short := string(chartSVG(chartSpec{title: "t", unit: "RU", capacity: 5000, lines: []line{{values: []float64{100}, end: 0.7}}}))
	for _, want := range []string{">0.6<", ">0.7<", ">6,000<"} {
		if !strings.Contains(short, want) {
			t.Errorf("the chart of a 0.7 s run has no tick %s", want)
		}
	}
	if strings.Contains(short, "00000") {
		t.Error("a tick label with a float's noise")
	}
	for _, v := range []float64{0.3, 1, 7, 11, 99, 101, 9999, 10400} {
		if s := tickStep(v, 8); v/s > 8 || v/s < 2 {
			t.Errorf("tickStep(%v) = %v: %v steps", v, s, v/s)
		}
	}
	if got := commas(-1234567); got != "-1,234,567" {
		t.Errorf("commas: %s", got)
	}
}

// svgElements returns the start elements of an SVG document, in order,
// with the text each <text> holds.
func svgElements(t *testing.T, svg []byte) (els []xml.StartElement, texts []string) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	inText := false
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return els, texts
		}
		if err != nil {
			t.Fatalf("not well-formed: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			els = append(els, tok)
			inText = tok.Name.Local == "text"
		case xml.CharData:
			if inText {
				texts = append(texts, string(tok))
			}
		case xml.EndElement:
			inText = false
		}
	}
}

func attr(e xml.StartElement, name string) string {
	for _, a := range e.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// polylineXs returns the least and the greatest x of a polyline's points.
func polylineXs(t *testing.T, e xml.StartElement) (lo, hi float64) {
	t.Helper()
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, pt := range strings.Fields(attr(e, "points")) {
		var x, y float64
		if _, err := fmt.Sscanf(pt, "%f,%f", &x, &y); err != nil {
			t.Fatalf("point %q: %v", pt, err)
		}
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// TestChartDrawsWhatTheSummarySays draws the chart of a made-up run with
// the figures: 6,691 429s in one second of the naive loader, the
// batcher ending 0.5 s into its third second, the naive loader 0.3 s into
// its second. The 429s get an axis of their own (a tick above 6,691); the
// RU axis ends near the capacity, not 5,000 RU/s above it; the capacity
// and the Batcher's limit are drawn over the lines; and each line ends
// where its loader did, the last partial second not drawn whole.
func TestChartDrawsWhatTheSummarySays(t *testing.T) {
	rep := &report{
		cfg: config{ru: 10000, capacity: 9000, otherRU: 1000},
		phases: []phase{
			{name: "batcher", items: 100, written: 100, elapsed: 2500 * time.Millisecond, perSec: []float64{9000, 9100, 4000}, thrSec: []int64{0, 0, 0}},
			{name: "naive", items: 100, written: 100, elapsed: 1300 * time.Millisecond, perSec: []float64{10000, 3000}, thrSec: []int64{6691, 50}},
		},
	}
	svg := chartFor(rep)
	els, texts := svgElements(t, svg)
	all := strings.Join(texts, "|")
	if !strings.Contains(all, "|7,000|") && !strings.Contains(all, "|7,500|") && !strings.Contains(all, "|8,000|") {
		t.Errorf("no axis for the 429s (a tick at 7,500 or so): %q", texts)
	}
	if strings.Contains(all, "|15,000|") || strings.Contains(all, "|14,000|") {
		t.Errorf("the RU axis goes far over the 10,000 provisioned: %q", texts)
	}
	if !strings.Contains(all, "the Batcher's limit 9,000 RU/s") {
		t.Errorf("the Batcher's limit is not drawn: %q", texts)
	}
	var xs [][2]float64
	lastPolyline, capacityLine := -1, -1
	for i, e := range els {
		switch {
		case e.Name.Local == "polyline":
			lo, hi := polylineXs(t, e)
			xs = append(xs, [2]float64{lo, hi})
			lastPolyline = i
		case e.Name.Local == "line" && attr(e, "stroke") == "#d62728" && capacityLine < 0:
			capacityLine = i
		}
	}
	if capacityLine < lastPolyline {
		t.Errorf("the capacity line (element %d) is drawn before the last loader's line (element %d), which may hide it", capacityLine, lastPolyline)
	}
	if len(xs) != 2 {
		t.Fatalf("%d polylines, want 2", len(xs))
	}
	// Both start at 0; the batcher's ends at the right edge (2.5 s), the
	// naive loader's at 1.3/2.5 of the width.
	left, width := xs[0][0], xs[0][1]-xs[0][0]
	if got := (xs[1][1] - left) / width; math.Abs(got-1.3/2.5) > 0.01 {
		t.Errorf("the naive loader's line ends at %.3f of the time axis, want %.3f (1.3 s of 2.5 s)", got, 1.3/2.5)
	}
}
