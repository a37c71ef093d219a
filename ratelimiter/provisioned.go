package ratelimiter

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/ratebatch/batcher"
)

// Provisioned is a fixed capacity, such as the throughput provisioned for a
// Cosmos DB container: Capacity and MaxCapacity are both the capacity set,
// whatever the target. Change it at run time with SetCapacity.
//
// Create it with [NewProvisioned]. It is safe for concurrent use.
type Provisioned struct {
	capacity  atomic.Int64
	listeners batcher.Listeners
}

// NewProvisioned returns a limiter that grants capacity cost units per
// second. Start reports a negative capacity. The capacity is also the
// maximum: Enqueue refuses operations that cost more, and when SetCapacity
// lowers it, the Batcher fails the buffered operations that cost more than
// the new capacity (they could never go out) with ErrTooExpensive. So a
// capacity of 0 accepts only operations that cost nothing.
func NewProvisioned(capacity int) *Provisioned {
	p := &Provisioned{}
	p.capacity.Store(int64(capacity))
	return p
}

// Start checks the capacity; Provisioned has no work of its own.
func (p *Provisioned) Start(context.Context) error {
	if c := p.capacity.Load(); c < 0 {
		return fmt.Errorf("%w: Provisioned capacity is %d; it must be 0 or more", batcher.ErrInvalidSetting, c)
	}
	return nil
}

// SetCapacity changes the capacity and, if it changed, emits a
// [batcher.CapacityChanged] event. A Batcher applies it at its next flush or
// capacity interval; a lower capacity holds back releases until the last
// second's releases fit under it. Events of SetCapacity calls made at the
// same time may reach listeners in another order than the calls took
// effect; Capacity is the truth. A negative capacity is refused, and nothing
// changes, with an error wrapping [batcher.ErrInvalidSetting].
func (p *Provisioned) SetCapacity(capacity int) error {
	if capacity < 0 {
		return fmt.Errorf("%w: Provisioned capacity is %d; it must be 0 or more", batcher.ErrInvalidSetting, capacity)
	}
	if p.capacity.Swap(int64(capacity)) != int64(capacity) {
		p.listeners.Emit(batcher.Event{Kind: batcher.CapacityChanged, Val: capacity})
	}
	return nil
}

// Capacity returns the capacity, in cost units per second.
func (p *Provisioned) Capacity() int { return int(max(p.capacity.Load(), 0)) }

// MaxCapacity returns the capacity: no operation may cost more.
func (p *Provisioned) MaxCapacity() int { return p.Capacity() }

// GiveMe does nothing: a provisioned capacity does not depend on the target.
func (p *Provisioned) GiveMe(int) {}

// AddListener adds a listener for capacity changes and returns its id.
func (p *Provisioned) AddListener(fn func(batcher.Event)) int { return p.listeners.AddListener(fn) }

// RemoveListener removes the listener with the given id.
func (p *Provisioned) RemoveListener(id int) { p.listeners.RemoveListener(id) }
