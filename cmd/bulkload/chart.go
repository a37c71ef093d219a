package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"os"
)

// line is one polyline of the chart: units per second.
type line struct {
	name      string
	color     string
	values    []float64 // one a second
	throttles []int64   // 429s, one a second
}

// chartSVG draws units per second over time for each line, against a
// dashed capacity line, and each line's 429s per second as bars along the
// bottom, as a standalone SVG document.
func chartSVG(title, unit string, capacity float64, lines []line) []byte {
	const (
		w, h                   = 900, 420
		left, right, top, foot = 80, 30, 50, 60
		pw, ph                 = w - left - right, h - top - foot
	)
	secs := 1
	ymax := capacity
	var tmax int64
	for _, l := range lines {
		secs = max(secs, len(l.values), len(l.throttles))
		for _, v := range l.values {
			ymax = max(ymax, v)
		}
		for _, n := range l.throttles {
			tmax = max(tmax, n)
		}
	}
	step := niceCeil(ymax * 1.1 / 5)
	ymax = math.Ceil(ymax*1.1/step) * step
	x := func(t float64) float64 { return left + t/float64(secs)*pw }
	y := func(v float64) float64 { return top + ph - v/ymax*ph }

	var b bytes.Buffer
	esc := func(s string) string {
		var e bytes.Buffer
		_ = xml.EscapeText(&e, []byte(s))
		return e.String()
	}
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="25" font-size="15" font-weight="bold">%s</text>`+"\n", left, esc(title))

	// Axes, grid and ticks.
	for v := 0.0; v <= ymax+1e-9; v += step {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", left, y(v), left+pw, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, commas(int64(v)))
	}
	tstep := max(1, int(niceCeil(float64(secs)/10)))
	for t := 0; t <= secs; t += tstep {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/>`+"\n", x(float64(t)), top+ph, x(float64(t)), top+ph+5)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(float64(t)), top+ph+20, t)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, top+ph, left+pw, top+ph)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", left, top, left, top+ph)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">seconds since the loader started</text>`+"\n", left+pw/2, h-15)
	fmt.Fprintf(&b, `<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">%s per second</text>`+"\n", top+ph/2, top+ph/2, esc(unit))

	// Capacity.
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#d62728" stroke-width="1.5" stroke-dasharray="6 4"/>`+"\n", left, y(capacity), left+pw, y(capacity))
	fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#d62728">capacity %s %s/s</text>`+"\n", left+pw-4, y(capacity)-6, commas(int64(capacity)), esc(unit))

	// 429s per second: bars up to 60 px high over the second, translucent
	// where the lines' bars overlap.
	if tmax > 0 {
		bw := pw / float64(secs)
		for _, l := range lines {
			for t, n := range l.throttles {
				if n == 0 {
					continue
				}
				bh := float64(n) / float64(tmax) * 60
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.35"><title>%s 429s</title></rect>`+"\n",
					x(float64(t)), top+ph-bh, bw, bh, l.color, commas(n))
			}
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">bars: 429 answers per second (the tallest %s)</text>`+"\n", left+12, top+12+18*len(lines), commas(tmax))
	}

	// The lines, as steps: each second's value held over the second.
	for i, l := range lines {
		var pts bytes.Buffer
		for t, v := range l.values {
			fmt.Fprintf(&pts, "%.1f,%.1f %.1f,%.1f ", x(float64(t)), y(v), x(float64(t+1)), y(v))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", l.color, bytes.TrimSpace(pts.Bytes()))
		ly := top + 12 + 18*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", left+12, ly, left+32, ly, l.color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left+38, ly+4, esc(l.name))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v-1e-9 {
			return m * p
		}
	}
	return 10 * p
}

func writeChart(path string, svg []byte) error {
	if err := os.WriteFile(path, svg, 0o644); err != nil {
		return fmt.Errorf("writing the chart (-chart): %w", err)
	}
	return nil
}
