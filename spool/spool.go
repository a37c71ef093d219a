package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Errors of the spool and its backends. The message text is not part of the
// contract; match them with errors.Is.
var (
	// ErrClosed is returned by calls on a closed spool or backend.
	ErrClosed = errors.New("spool: closed")
	// ErrFull is returned by Append when the spool's bound is reached and
	// the backend was told to refuse rather than wait.
	ErrFull = errors.New("spool: full")
	// ErrTooLarge is wrapped by the error of an Append whose record, once
	// encoded, is larger than the backend's record size limit.
	ErrTooLarge = errors.New("spool: record too large")
	// ErrCodec is wrapped by the error of an Append whose record the codec
	// could not encode, and by the reason of a dead letter the codec could
	// not decode.
	ErrCodec = errors.New("spool: codec failed")
	// ErrLocked is returned when another process holds the spool.
	ErrLocked = errors.New("spool: held by another process")
	// ErrInvalidSetting is wrapped by every error about a bad setting.
	ErrInvalidSetting = errors.New("spool: invalid setting")
)

// A Codec turns records of type T into bytes and back. Encode appends the
// encoding of v to dst and returns the extended slice; Decode must not keep
// data, which the spool reuses. Both must be safe for concurrent use.
type Codec[T any] interface {
	Encode(dst []byte, v T) ([]byte, error)
	Decode(data []byte) (T, error)
}

// JSON returns a Codec that encodes records with encoding/json.
func JSON[T any]() Codec[T] { return jsonCodec[T]{} }

type jsonCodec[T any] struct{}

func (jsonCodec[T]) Encode(dst []byte, v T) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

func (jsonCodec[T]) Decode(data []byte) (T, error) {
	var v T
	err := json.Unmarshal(data, &v)
	return v, err
}

// Bytes returns a Codec for records that are already bytes: it copies them
// as they are.
func Bytes() Codec[[]byte] { return bytesCodec{} }

type bytesCodec struct{}

func (bytesCodec) Encode(dst []byte, v []byte) ([]byte, error) { return append(dst, v...), nil }
func (bytesCodec) Decode(data []byte) ([]byte, error)          { return append([]byte(nil), data...), nil }

// An ID names a record in its backend: the local log's segment and offset,
// or a Redis stream entry's milliseconds and sequence number. IDs of one
// backend grow in the order the records were appended.
type ID struct {
	Hi, Lo uint64
}

// String returns the ID as "Hi-Lo", as Redis writes stream IDs.
func (id ID) String() string {
	return strconv.FormatUint(id.Hi, 10) + "-" + strconv.FormatUint(id.Lo, 10)
}

// An Entry is one stored record: its ID and its encoded bytes.
type Entry struct {
	ID   ID
	Data []byte
}

// A DeadEntry is a record that failed for good, kept in the backend's
// dead-letter store: the record's ID when it failed, its bytes, why it
// failed, and its ID in the dead-letter store.
type DeadEntry struct {
	ID     ID // in the dead-letter store
	From   ID // in the spool, when it failed
	Data   []byte
	Reason string
}

// A Backend stores encoded records durably: the local log (package
// spool/filelog) or Redis Streams (package spool/redisstream). Users pick
// one and hand it to New; they do not call its methods themselves.
//
// Implementations must be safe for concurrent use. Every blocking method
// returns ctx.Err() (possibly wrapped) when ctx ends first.
type Backend interface {
	// Append stores recs in order and returns once they are as durable
	// as the backend's settings promise. If it returns an error, some of
	// recs may still have been stored (and will be delivered).
	Append(ctx context.Context, recs [][]byte) error
	// Read returns up to max records not yet delivered to this reader,
	// waiting until there is at least one. A record read and neither
	// acknowledged nor dead-lettered is delivered again after a crash or
	// a reopen (and, for shared backends, to another consumer after a
	// time). The entries' Data belong to the caller.
	Read(ctx context.Context, max int) ([]Entry, error)
	// Ack removes the records with these IDs: their work is done.
	Ack(ctx context.Context, ids []ID) error
	// Dead moves records that failed for good to the dead-letter store,
	// with a reason each, durably, and then removes them as Ack does.
	Dead(ctx context.Context, entries []Entry, reasons []string) error
	// DeadLetters calls fn for each record in the dead-letter store, in
	// the order they died, until fn returns an error (returned as is).
	DeadLetters(ctx context.Context, fn func(DeadEntry) error) error
	// Replay appends every dead letter to the spool again and removes it
	// from the dead-letter store, returning how many it moved. A crash
	// during Replay may leave a record in both.
	Replay(ctx context.Context) (int, error)
	// Close releases the backend. Calls that block return ErrClosed.
	Close() error
}

// invalid returns an error about a bad setting.
func invalid(setting string, value any, want string) error {
	return fmt.Errorf("%w: %s is %v, want %s", ErrInvalidSetting, setting, value, want)
}
