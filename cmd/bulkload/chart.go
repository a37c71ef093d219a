package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"strconv"
)

// line is one loader on the chart: its units and its 429s in each
// one-second window.
type line struct {
	name      string
	color     string
	values    []float64 // units in each window
	throttles []int64   // 429s in each window
	// offset is how far the first window starts before the loader did, in
	// seconds; end is when the loader finished, in seconds since it
	// started. Window i is drawn over [i-offset, i+1-offset] clipped to
	// [0, end]: the last, partial, window only as far as the loader ran.
	offset, end float64
}

// chartSpec is what the chart shows.
type chartSpec struct {
	title     string
	unit      string
	capacity  float64 // what the service allows, in units per second
	capName   string  // its label, such as "provisioned"
	limit     float64 // the Batcher's own limit; 0 for none
	thrTitle  string  // the 429 panel's title
	limitNote string  // more about the Batcher's limit, after its label
	lines     []line
}

// span returns where window i of l starts and ends on the time axis, and
// whether any of it is drawn.
func (l line) span(i int) (from, to float64, ok bool) {
	from = max(float64(i)-l.offset, 0)
	to = min(float64(i+1)-l.offset, l.end)
	return from, to, to > from
}

// chartSVG draws two panels sharing the time axis, as a standalone SVG
// document: above, each line's units per second as steps, against the
// capacity and the Batcher's limit (drawn over the lines, dashed, so that
// no line hides them); below, on an axis of their own, each line's 429s
// per second as bars. The legend sits above the panels.
func chartSVG(c chartSpec) []byte {
	const (
		w                 = 900
		left, right       = 80, 30
		pw                = w - left - right
		titleH, legendRow = 34, 18
		mainH, gap, thrH  = 280, 34, 90
		foot              = 48
	)
	legendH := legendRow*len(c.lines) + 10
	top := titleH + legendH
	thrTop := top + mainH + gap
	h := thrTop + thrH + foot

	end := 0.0
	ymax := max(c.capacity, c.limit)
	var tmax int64
	for _, l := range c.lines {
		end = max(end, l.end)
		for i, v := range l.values {
			if _, _, ok := l.span(i); ok {
				ymax = max(ymax, v)
			}
		}
		for i, n := range l.throttles {
			if _, _, ok := l.span(i); ok {
				tmax = max(tmax, n)
			}
		}
	}
	if end <= 0 {
		end = 1
	}
	ystep := tickStep(ymax*1.04, 7)
	ymax = math.Ceil(ymax*1.04/ystep) * ystep
	tstep := max(1, tickStep(float64(max(tmax, 1)), 3))
	ttop := math.Ceil(float64(max(tmax, 1))/tstep) * tstep
	x := func(t float64) float64 { return left + t/end*pw }
	y := func(v float64) float64 { return float64(top+mainH) - v/ymax*mainH }
	yt := func(n float64) float64 { return float64(thrTop+thrH) - n/ttop*thrH }

	var b bytes.Buffer
	esc := func(s string) string {
		var e bytes.Buffer
		_ = xml.EscapeText(&e, []byte(s))
		return e.String()
	}
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", left, esc(c.title))

	// Legend.
	for i, l := range c.lines {
		ly := titleH + legendRow*i + 6
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", left, ly, left+20, ly, l.color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left+26, ly+4, esc(l.name))
	}

	// Time axis, shared: ticks on both panels, labels under the lower one.
	xstep := tickStep(end, 10)
	for k := 0; float64(k)*xstep <= end+1e-9; k++ {
		t := float64(k) * xstep
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#f0f0f0"/>`+"\n", x(t), top, x(t), top+mainH)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/>`+"\n", x(t), thrTop+thrH, x(t), thrTop+thrH+5)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x(t), thrTop+thrH+18, trimFloat(t))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">seconds since the loader started (each loader ends where its line ends)</text>`+"\n", left+pw/2, h-12)

	// Upper panel: units per second.
	for v := 0.0; v <= ymax+1e-9; v += ystep {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", left, y(v), left+pw, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, commas(int64(v)))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, top, left, top+mainH)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, top+mainH, left+pw, top+mainH)
	fmt.Fprintf(&b, `<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">%s per second</text>`+"\n", top+mainH/2, top+mainH/2, esc(c.unit))
	// The lines, as steps: each window's value held over the part of it
	// that is drawn. Translucent, so that one shows through another.
	for _, l := range c.lines {
		var pts bytes.Buffer
		for i, v := range l.values {
			from, to, ok := l.span(i)
			if !ok {
				continue
			}
			fmt.Fprintf(&pts, "%.1f,%.1f %.1f,%.1f ", x(from), y(v), x(to), y(v))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-opacity="0.85" stroke-width="2" points="%s"/>`+"\n", l.color, bytes.TrimSpace(pts.Bytes()))
	}
	// The capacity and the Batcher's limit, over the lines.
	limitLine := func(v float64, color, dash, label string, above bool) {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`+"\n", left, y(v), left+pw, y(v), color, dash)
		ty := y(v) + 15
		if above {
			ty = y(v) - 6
		}
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="%s" stroke="white" stroke-width="3" paint-order="stroke">%s</text>`+"\n", left+pw-4, ty, color, esc(label))
	}
	limitLine(c.capacity, "#d62728", "8 4", fmt.Sprintf("%s %s %s/s", c.capName, commas(int64(c.capacity)), c.unit), true)
	if c.limit > 0 && c.limit != c.capacity {
		limitLine(c.limit, "#2ca02c", "3 3", fmt.Sprintf("the Batcher's limit %s %s/s%s", commas(int64(c.limit)), c.unit, c.limitNote), false)
	}

	// Lower panel: 429s per second, the lines' bars side by side.
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", left, thrTop-8, esc(c.thrTitle))
	for n := 0.0; n <= ttop+1e-9; n += tstep {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", left, yt(n), left+pw, yt(n))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, yt(n)+4, commas(int64(n)))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, thrTop, left, thrTop+thrH)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, thrTop+thrH, left+pw, thrTop+thrH)
	fmt.Fprintf(&b, `<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">429s</text>`+"\n", thrTop+thrH/2, thrTop+thrH/2)
	for k, l := range c.lines {
		for i, n := range l.throttles {
			from, to, ok := l.span(i)
			if !ok || n == 0 {
				continue
			}
			bw := (x(to) - x(from)) / float64(len(c.lines))
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %s 429s</title></rect>`+"\n",
				x(from)+bw*float64(k), yt(float64(n)), max(bw-1, 1), float64(thrTop+thrH)-yt(float64(n)), l.color, esc(l.name), commas(n))
		}
	}
	if tmax == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">none</text>`+"\n", left+pw/2, thrTop+thrH/2)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// tickStep returns a step of 1, 2, 2.5 or 5 times a power of ten that
// divides 0..v into at most n steps.
func tickStep(v float64, n int) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v/float64(n))))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v/(m*p) <= float64(n)+1e-9 {
			return m * p
		}
	}
	return 10 * p
}

// trimFloat prints a tick value without needless decimals.
func trimFloat(v float64) string {
	if v == math.Trunc(v) {
		return commas(int64(v))
	}
	return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64)
}

func writeChart(path string, svg []byte) error {
	if err := os.WriteFile(path, svg, 0o644); err != nil {
		return fmt.Errorf("writing the chart (-chart): %w", err)
	}
	return nil
}
