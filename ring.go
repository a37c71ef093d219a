package batcher

// ring is a FIFO queue on a circular buffer that grows as needed. The zero
// value is empty. The buffer's length is a power of two, so that positions
// wrap with a mask rather than a division (two per operation on the hot
// path otherwise).
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

// at returns the i-th element from the front.
func (r *ring[T]) at(i int) T { return r.buf[(r.head+i)&(len(r.buf)-1)] }

func (r *ring[T]) front() T { return r.buf[r.head] }

func (r *ring[T]) push(x T) {
	if r.n == len(r.buf) {
		r.grow(r.n + 1)
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = x
	r.n++
}

// pushFront puts xs, in their order, before the current front.
func (r *ring[T]) pushFront(xs []T) {
	if r.n+len(xs) > len(r.buf) {
		r.grow(r.n + len(xs))
	}
	mask := len(r.buf) - 1
	r.head = (r.head - len(xs)) & mask
	for i, x := range xs {
		r.buf[(r.head+i)&mask] = x
	}
	r.n += len(xs)
}

// pushFront1 puts x before the current front.
func (r *ring[T]) pushFront1(x T) {
	if r.n == len(r.buf) {
		r.grow(r.n + 1)
	}
	r.head = (r.head - 1) & (len(r.buf) - 1)
	r.buf[r.head] = x
	r.n++
}

// popFront removes the front element and returns it.
func (r *ring[T]) popFront() T {
	var zero T
	x := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) & (len(r.buf) - 1)
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
	size := 8
	for size < need || size < 2*len(r.buf) {
		size *= 2
	}
	buf := make([]T, size)
	for i := range r.n {
		buf[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf, r.head = buf, 0
}
