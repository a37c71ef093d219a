package batcher

// ring is a FIFO queue on a circular buffer that grows as needed. The zero
// value is empty.
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

// at returns the i-th element from the front.
func (r *ring[T]) at(i int) T { return r.buf[(r.head+i)%len(r.buf)] }

func (r *ring[T]) front() T { return r.buf[r.head] }

func (r *ring[T]) push(x T) {
	if r.n == len(r.buf) {
		r.grow(r.n + 1)
	}
	r.buf[(r.head+r.n)%len(r.buf)] = x
	r.n++
}

// pushFront puts xs, in their order, before the current front.
func (r *ring[T]) pushFront(xs []T) {
	if r.n+len(xs) > len(r.buf) {
		r.grow(r.n + len(xs))
	}
	r.head = (r.head - len(xs) + len(r.buf)) % len(r.buf)
	for i, x := range xs {
		r.buf[(r.head+i)%len(r.buf)] = x
	}
	r.n += len(xs)
}

// popFront removes the front element and returns it.
func (r *ring[T]) popFront() T {
	var zero T
	x := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if r.n == 0 {
		r.reset()
	}
	return x
}

// rotate moves the front element to the back.
func (r *ring[T]) rotate() {
	if r.n > 1 {
		r.push(r.popFront())
	}
}

// reset rewinds an empty ring.
func (r *ring[T]) reset() { r.head = 0 }

func (r *ring[T]) grow(need int) {
	buf := make([]T, max(8, 2*len(r.buf), need))
	for i := range r.n {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}
