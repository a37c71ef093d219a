package batcher

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// EventKind says what an [Event] reports. Its String form is the seed's
// event name ("batch", "pause", "audit-fail", ...).
type EventKind int

// The kinds of events. The doc of each says which fields it sets.
const (
	_ EventKind = iota

	// BatchReleased: a batch was handed to ProcessBatch. Batch holds its
	// operations, Val its declared cost. Only with WithEmitBatch.
	BatchReleased
	// Paused: releases stopped for Duration from now. With Watcher nil,
	// every release, by Pause; with Watcher set (and Err, the throttle's
	// reason), that watcher's lane only, by a throttle.
	Paused
	// Resumed: a pause ended: the Batcher's (Watcher nil) or a lane's
	// (Watcher set).
	Resumed
	// ShutdownDone: Shutdown or Close finished; the last event a Batcher
	// emits. Err is the context's error if Shutdown gave up.
	ShutdownDone
	// AuditPassed: the periodic audit found the buffer's bookkeeping right.
	AuditPassed
	// AuditFailed: the audit found the bookkeeping wrong and corrected it;
	// Msg says what was wrong.
	AuditFailed
	// AuditSkipped: the audit had nothing to check (an empty Batcher).
	AuditSkipped
	// CapacityRequested: the Batcher asked its rate limiter for capacity;
	// Val is the demand it gave GiveMe. Only with WithEmitRequest.
	CapacityRequested
	// FlushStarted: a flush (on the interval or by Flush) began. Only with
	// WithEmitFlush.
	FlushStarted
	// FlushDone: a flush ended; Val is the number of operations it
	// released. Only with WithEmitFlush.
	FlushDone
	// CapacityChanged: a rate limiter's capacity changed; Val is the new
	// capacity in cost units per second. Emitted by rate limiters, and
	// passed on by a Batcher that uses one.
	CapacityChanged
	// TargetChanged: the cost waiting for capacity changed since the last
	// capacity interval; Val is the new target.
	TargetChanged
	// Retrying: ProcessBatch asked for operations to be retried. Batch holds
	// them, Err the reason, Duration the back-off before they are buffered
	// again.
	Retrying
	// Throttled: the datastore said "too many requests". Batch holds the
	// operations to retry, Duration the pause of their lane that follows,
	// Watcher the lane, Err the reason.
	Throttled
	// Failed: operations ended in failure. Batch holds them, Err the error
	// each one's Wait returns.
	Failed
	// TimedOut: a ProcessBatch call overran its MaxOperationTime; its
	// context was cancelled. Batch holds its operations, Duration the
	// limit. The batch keeps its slot until ProcessBatch returns.
	TimedOut

	// The kinds below are emitted by rate limiters that lease shared
	// capacity (ratelimiter.SharedResource), and passed on by a Batcher that
	// uses one.

	// ProvisionStarted: the limiter began preparing its lease store; Val is
	// the number of partitions.
	ProvisionStarted
	// ProvisionDone: the lease store is ready for Val partitions.
	ProvisionDone
	// PartitionAcquired: the limiter leased partition Val and counts its
	// capacity from now.
	PartitionAcquired
	// PartitionReleased: the limiter stopped counting partition Val; Msg
	// says why ("not needed", "fair share", "lease lost", "expired",
	// "shared capacity lowered", "stopping"). Its lease is released after
	// the handoff guard, or lapses.
	PartitionReleased
	// LimiterError: the limiter's lease store failed; Err says how. The
	// limiter falls back to its reserved capacity until the store answers
	// again.
	LimiterError

	// ListenerPanicked: a listener panicked. The panic was recovered, and
	// the listeners after it still got the event. Val is the listener's id
	// (as AddListener returned it), Msg names the event it panicked on, Err
	// is a [*PanicError] (wrapping [ErrPanic]) with the panic's value and
	// stack. Emitted to the other listeners, once per listener: its later
	// panics are recovered without a report.
	ListenerPanicked

	// kindCount is one past the last kind.
	kindCount
)

var kindNames = [...]string{
	BatchReleased:     "batch",
	Paused:            "pause",
	Resumed:           "resume",
	ShutdownDone:      "shutdown",
	AuditPassed:       "audit-pass",
	AuditFailed:       "audit-fail",
	AuditSkipped:      "audit-skip",
	CapacityRequested: "request",
	FlushStarted:      "flush-start",
	FlushDone:         "flush-done",
	CapacityChanged:   "capacity",
	TargetChanged:     "target",
	Retrying:          "retry",
	Throttled:         "throttled",
	Failed:            "failed",
	TimedOut:          "timeout",
	ProvisionStarted:  "provision-start",
	ProvisionDone:     "provision-done",
	PartitionAcquired: "allocated",
	PartitionReleased: "released",
	LimiterError:      "error",
	ListenerPanicked:  "listener-panic",
}

// String returns the seed's name for the kind, such as "audit-fail".
func (k EventKind) String() string {
	if k > 0 && k < kindCount {
		return kindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// An Event reports something a Batcher or a rate limiter did. Which fields
// are set depends on Kind; see the kinds' docs. Listeners must not modify
// Batch or its operations.
type Event struct {
	Kind     EventKind
	Val      int           // a count or a cost, per Kind
	Duration time.Duration // a pause, back-off or time limit, per Kind
	Msg      string        // a human-readable detail, per Kind
	Batch    []*Operation  // the operations concerned, per Kind
	Err      error         // the cause, per Kind
	// Watcher is the lane a Throttled, Paused or Resumed event concerns:
	// the watcher whose releases a throttle paused, or resumed. It is nil
	// for a pause of the whole Batcher (Pause) and for other kinds.
	Watcher *Watcher
}

// String returns a short description for logs.
func (e Event) String() string {
	s := e.Kind.String()
	if e.Val != 0 {
		s += fmt.Sprintf(" val=%d", e.Val)
	}
	if e.Duration != 0 {
		s += " duration=" + e.Duration.String()
	}
	if len(e.Batch) > 0 {
		s += fmt.Sprintf(" ops=%d", len(e.Batch))
	}
	if e.Msg != "" {
		s += " msg=" + e.Msg
	}
	if e.Err != nil {
		s += " err=" + e.Err.Error()
	}
	return s
}

// Listeners is a set of event listeners. [Batcher] and the limiters in
// package ratelimiter use one each; a custom rate limiter may too.
//
// The zero value is an empty set, ready to use. It is safe for concurrent
// use. Emit calls the listeners one after another on the calling goroutine;
// a listener added or removed during an Emit may or may not be called by it.
//
// A listener that panics does not stop the others: Emit recovers the panic,
// reports the listener's first one to the other listeners in a
// [ListenerPanicked] event, and goes on with the next listener.
type Listeners struct {
	mu   sync.Mutex // serialises changes; Emit does not take it
	next int
	list atomic.Pointer[[]listener]
}

type listener struct {
	id       int
	fn       func(Event)
	reported *atomic.Bool // a panic of it has been reported
}

// AddListener adds fn and returns an id for RemoveListener. A nil fn is
// ignored and gets id 0, which RemoveListener ignores too.
func (l *Listeners) AddListener(fn func(Event)) int {
	if fn == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	var old []listener
	if p := l.list.Load(); p != nil {
		old = *p
	}
	list := make([]listener, len(old), len(old)+1)
	copy(list, old)
	list = append(list, listener{l.next, fn, new(atomic.Bool)})
	l.list.Store(&list)
	return l.next
}

// RemoveListener removes the listener with the given id. Removing an
// unknown id does nothing.
func (l *Listeners) RemoveListener(id int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.list.Load()
	if p == nil {
		return
	}
	list := make([]listener, 0, len(*p))
	for _, x := range *p {
		if x.id != id {
			list = append(list, x)
		}
	}
	l.list.Store(&list)
}

// Len reports how many listeners there are.
func (l *Listeners) Len() int {
	if p := l.list.Load(); p != nil {
		return len(*p)
	}
	return 0
}

// Emit calls every listener with e, in the order they were added.
func (l *Listeners) Emit(e Event) {
	p := l.list.Load()
	if p == nil {
		return
	}
	for _, x := range *p {
		l.call(x, e)
	}
}

// call calls x with e, and recovers a panic in it.
func (l *Listeners) call(x listener, e Event) {
	defer func() {
		if v := recover(); v != nil {
			l.recovered(x, e, v, debug.Stack())
		}
	}()
	x.fn(e)
}

// recovered reports x's panic on e to the other listeners, if it is x's
// first. A listener that panics on the report is reported in turn, once:
// each listener is reported at most once, so this ends.
func (l *Listeners) recovered(x listener, e Event, v any, stack []byte) {
	if !x.reported.CompareAndSwap(false, true) {
		return
	}
	report := Event{
		Kind: ListenerPanicked,
		Val:  x.id,
		Msg:  fmt.Sprintf("listener %d panicked on a %q event", x.id, e.Kind),
		Err:  &PanicError{Value: v, Stack: stack, in: fmt.Sprintf("listener %d", x.id)},
	}
	for _, y := range *l.list.Load() {
		if y.id != x.id {
			l.call(y, report)
		}
	}
}

// emitGate lets a Batcher promise that nothing is emitted after Shutdown
// returns: emissions in progress are counted, and stop waits for them.
type emitGate struct {
	mu      sync.Mutex
	active  int
	stopped bool
	idle    chan struct{} // closed when active drops to 0 after stop
}

// enter reports whether an emission may go ahead; if so, leave must follow.
func (g *emitGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.active++
	return true
}

func (g *emitGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.active--
	if g.active == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// stop refuses further emissions and returns a channel that is closed once
// the ones in progress have finished.
func (g *emitGate) stop() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	if g.idle != nil {
		return g.idle
	}
	ch := make(chan struct{})
	if g.active == 0 {
		close(ch)
	} else {
		g.idle = ch
	}
	return ch
}
