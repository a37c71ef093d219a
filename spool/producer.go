package spool

import (
	"context"
	"fmt"
	"sync"

	"github.com/ratebatch/batcher"
)

// A Spool is a durable queue of records of type T in front of a Batcher:
// Append stores a record in its Backend, and a Consumer (see
// Spool.Consumer) turns stored records into operations for a Watcher and
// removes each once its operation has ended.
//
// Create one with New. All methods are safe for concurrent use, by any
// number of producers; run one Consumer per Spool (the Redis Streams backend
// shares the work of one stream among the consumers of many processes).
type Spool[T any] struct {
	backend Backend
	codec   Codec[T]
	bufs    sync.Pool
}

// New returns a Spool that stores records in backend, encoded by codec.
// The Spool owns backend from now on: Spool.Close closes it.
func New[T any](backend Backend, codec Codec[T]) *Spool[T] {
	return &Spool[T]{backend: backend, codec: codec}
}

// Backend returns the spool's backend.
func (s *Spool[T]) Backend() Backend { return s.backend }

// Append stores v and returns once it is as durable as the backend's
// settings promise (see the package doc's table). It returns an error
// wrapping ErrCodec if the codec fails, ErrTooLarge if the encoded record
// is over the backend's size limit, ErrFull if the spool is full and the
// backend refuses rather than waits, ErrClosed after Close, and ctx's error
// if ctx ends while it waits for room or for the write. After an error
// other than a codec's or a size's, v may still have been stored, and will
// then be delivered: Append is at least once, like the rest of the spool.
func (s *Spool[T]) Append(ctx context.Context, v T) error {
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	b, err := s.codec.Encode((*bp)[:0], v)
	if err != nil {
		s.bufs.Put(bp)
		return fmt.Errorf("%w: encode: %w", ErrCodec, err)
	}
	err = s.backend.Append(ctx, [][]byte{b})
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		s.bufs.Put(bp)
	}
	return err
}

// AppendBatch stores vs, in order, as Append stores one record; it costs
// one round of the backend's group commit for all of them. If the codec
// fails on any record, or any is too large, none is stored.
func (s *Spool[T]) AppendBatch(ctx context.Context, vs []T) error {
	if len(vs) == 0 {
		return nil
	}
	var buf []byte
	ends := make([]int, len(vs))
	for i, v := range vs {
		var err error
		buf, err = s.codec.Encode(buf, v)
		if err != nil {
			return fmt.Errorf("%w: encode record %d of %d: %w", ErrCodec, i, len(vs), err)
		}
		ends[i] = len(buf)
	}
	recs := make([][]byte, len(vs))
	start := 0
	for i, end := range ends {
		recs[i] = buf[start:end:end]
		start = end
	}
	return s.backend.Append(ctx, recs)
}

// A DeadLetter is a record that failed for good, as the dead-letter store
// keeps it. Value is the decoded record; if the codec could not decode it,
// Value is the zero value and DecodeErr says why (Data has the bytes).
type DeadLetter[T any] struct {
	ID        ID // in the dead-letter store
	From      ID // in the spool, when it failed
	Value     T
	Data      []byte
	Reason    string
	DecodeErr error
}

// DeadLetters calls fn with each record in the dead-letter store, oldest
// first, until fn returns an error, which DeadLetters then returns.
func (s *Spool[T]) DeadLetters(ctx context.Context, fn func(DeadLetter[T]) error) error {
	return s.backend.DeadLetters(ctx, func(e DeadEntry) error {
		d := DeadLetter[T]{ID: e.ID, From: e.From, Data: e.Data, Reason: e.Reason}
		v, err := s.codec.Decode(e.Data)
		if err != nil {
			d.DecodeErr = fmt.Errorf("%w: decode: %w", ErrCodec, err)
		} else {
			d.Value = v
		}
		return fn(d)
	})
}

// Replay appends every dead letter to the spool again, for another try,
// and empties the dead-letter store; it returns how many records it moved.
// A crash during Replay may leave a record in both places.
func (s *Spool[T]) Replay(ctx context.Context) (int, error) {
	return s.backend.Replay(ctx)
}

// Close closes the backend. Stop the spool's Consumer first.
func (s *Spool[T]) Close() error { return s.backend.Close() }

// A Record is what a spool's operation carries to ProcessBatch: the
// decoded value, its ID in the spool, and the operation itself, on which
// ProcessBatch may call Retry, Fail, Throttle and SetActualCost.
type Record[T any] struct {
	Value T
	ID    ID
	Op    *batcher.Operation
}

// A Watcher is the Batcher's watcher of a spool's operations: a
// batcher.TypedWatcher whose operations carry *Record[T]. Make it with
// NewWatcher and configure it with its With* methods as any other.
type Watcher[T any] = batcher.TypedWatcher[*Record[T]]

// NewWatcher returns a Watcher for a spool's Consumer whose batches are
// handed to fn as records of type T: no type assertion, and a Watcher of
// another type is a compile error at Spool.Consumer. What fn returns, and
// what it says per record through Record.Op, decides each operation's end,
// as for any Watcher: the record is removed from the spool once its
// operation succeeded, and moved to the dead-letter store once it failed
// for good.
func NewWatcher[T any](fn func(ctx context.Context, batch []*Record[T]) error) *Watcher[T] {
	return batcher.NewTypedWatcher(func(ctx context.Context, ops []*batcher.TypedOperation[*Record[T]]) error {
		recs := make([]*Record[T], len(ops))
		for i, op := range ops {
			recs[i] = op.Payload()
		}
		return fn(ctx, recs)
	})
}
