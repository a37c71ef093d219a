package batcher

import (
	"errors"
	"fmt"
)

// Sentinel errors. Match them with [errors.Is]: the errors the package
// returns wrap them with details (the setting, the value, the cause). The
// text of an error message is not part of the API and may change.
var (
	// ErrNoOperation is returned by Enqueue for a nil operation.
	ErrNoOperation = errors.New("batcher: no operation")

	// ErrNoWatcher is returned by Enqueue for an operation without a watcher.
	ErrNoWatcher = errors.New("batcher: operation has no watcher")

	// ErrNegativeCost is returned by Enqueue for an operation whose cost is
	// below zero.
	ErrNegativeCost = errors.New("batcher: operation cost is negative")

	// ErrTooExpensive is returned by Enqueue for an operation that costs more
	// than the rate limiter's MaxCapacity, which could never be released, or
	// more than math.MaxInt32, the most an operation may cost. It also ends
	// the operations that cost more than a MaxCapacity that fell after they
	// were accepted: those buffered, those accepted as it fell, and those
	// that ProcessBatch sends back for another attempt. The error wrapping
	// it names both numbers.
	ErrTooExpensive = errors.New("batcher: operation costs more than can be released")

	// ErrTooManyAttempts ends an operation that ProcessBatch asked to retry
	// once it has been attempted its watcher's MaxAttempts times. The error
	// that ends it wraps this and the last error ProcessBatch gave.
	ErrTooManyAttempts = errors.New("batcher: too many attempts")

	// ErrBufferFull is returned by Enqueue when the buffer is full and the
	// Batcher was configured with WithErrorOnFullBuffer.
	ErrBufferFull = errors.New("batcher: buffer full")

	// ErrClosed is returned by Enqueue once Shutdown or Close has begun, by
	// Start after them, and by a Shutdown that finds the Batcher ended by
	// Close rather than drained; it ends the operations that Close, or a
	// Shutdown whose context ended, could not finish.
	ErrClosed = errors.New("batcher: closed")

	// ErrImproperOrder is returned for calls made out of order: Enqueue or
	// Flush before Start, Start twice, or an operation enqueued a second time.
	ErrImproperOrder = errors.New("batcher: improper order")

	// ErrPanic is wrapped by the error that ends the operations of a batch
	// whose ProcessBatch panicked, and by the error of a
	// [ListenerPanicked] event; that error is a [*PanicError].
	ErrPanic = errors.New("batcher: panic")

	// ErrInvalidSetting is wrapped by every error about a setting of a
	// Batcher, a Watcher or a rate limiter; the message names the setting
	// and its value.
	ErrInvalidSetting = errors.New("batcher: invalid setting")
)

// A PanicError is a panic that the Batcher recovered: in ProcessBatch,
// where it ends each operation of the batch, or in a listener, where a
// [ListenerPanicked] event reports it. Match it with [errors.As]; it wraps
// [ErrPanic] and, if the panic's value is an error, that error too.
type PanicError struct {
	// Value is what was passed to panic.
	Value any
	// Stack is the stack of the goroutine that panicked, from the panic
	// up, as runtime/debug.Stack formats it.
	Stack []byte

	in string // what panicked, for the message
}

// Error says what panicked and with what value; the stack is in Stack.
func (e *PanicError) Error() string {
	in := e.in
	if in == "" {
		in = "a callback"
	}
	return fmt.Sprintf("batcher: %s panicked: %v", in, e.Value)
}

// Unwrap returns ErrPanic, and the panic's value if it is an error.
func (e *PanicError) Unwrap() []error {
	if err, ok := e.Value.(error); ok {
		return []error{ErrPanic, err}
	}
	return []error{ErrPanic}
}
