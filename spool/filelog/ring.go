package filelog

import "sort"

// ring holds the records read and not yet ended, in the order read, which
// is the order of their positions.
type ring struct {
	items []ringItem
	head  int
}

type ringItem struct {
	p     pos
	ended bool
}

func (r *ring) len() int { return len(r.items) - r.head }

func (r *ring) push(p pos) {
	if r.head > 0 && r.head >= len(r.items)/2 {
		n := copy(r.items, r.items[r.head:])
		clear(r.items[n:])
		r.items = r.items[:n]
		r.head = 0
	}
	r.items = append(r.items, ringItem{p: p})
}

func (r *ring) front() (pos, bool) {
	if r.len() == 0 {
		return pos{}, false
	}
	return r.items[r.head].p, true
}

// end marks the record at p ended; it reports whether it was there.
func (r *ring) end(p pos) bool {
	live := r.items[r.head:]
	i := sort.Search(len(live), func(i int) bool { return !live[i].p.less(p) })
	if i == len(live) || live[i].p != p || live[i].ended {
		return false
	}
	live[i].ended = true
	return true
}

// pop drops the ended records at the front.
func (r *ring) pop() {
	for r.head < len(r.items) && r.items[r.head].ended {
		r.head++
	}
	if r.head == len(r.items) {
		r.items, r.head = r.items[:0], 0
	}
}
