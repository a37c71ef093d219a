// Package redisstream is the Redis Streams backend of a spool, for a spool
// shared by many processes: producers in any process append (XADD), the
// consumers of all processes share the records through one consumer group
// (XREADGROUP), each record is acknowledged and deleted once its operation
// has ended (XACK, XDEL), and a consumer that died leaves its records to the
// others after an idle time (XAUTOCLAIM). Dead letters go to a second
// stream.
//
// What is durable when Append returns is what Redis makes durable when it
// acknowledges a write: with appendonly yes and appendfsync always, the
// record is on the server's disk; with appendfsync everysec, a crash of the
// server can lose up to a second of records; without persistence, a restart
// loses them all. Run Redis with AOF for a spool.
package redisstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/spool"
)

// Defaults of a Stream's settings.
const (
	DefaultGroup         = "spool"
	DefaultMaxLen        = 1_000_000
	DefaultMaxRecordSize = 1 << 20
	DefaultClaimIdle     = 30 * time.Second
	DefaultBlock         = 500 * time.Millisecond
)

// A Stream is a spool backend on a Redis stream. It implements
// spool.Backend.
//
// Create it with New, configure it with the With* methods and Open it.
// Its methods are safe for concurrent use. It does not close the Redis
// client, which the caller owns.
type Stream struct {
	rdb           redis.UniversalClient
	stream        string
	dead          string
	group         string
	consumer      string
	maxLen        int64
	maxRecordSize int
	errorWhenFull bool
	claimIdle     time.Duration
	block         time.Duration
	onError       func(error)

	opened    atomic.Bool
	closeOnce sync.Once
	closed    chan struct{}

	readMu    sync.Mutex
	ownDone   bool      // the consumer's own pending records were read again
	lastClaim time.Time // when XAUTOCLAIM last ran
	claimFrom string    // where the next XAUTOCLAIM scan starts

	retries atomic.Int64
}

// New returns a Stream on the stream named stream, through rdb, with the
// default settings: group "spool", a consumer name unique to this process
// and Stream, at most 1,000,000 records, records of at most 1 MiB,
// Append waiting when full, a dead consumer's records claimed after 30 s,
// dead letters in the stream named stream + ":dead".
func New(rdb redis.UniversalClient, stream string) *Stream {
	var b [6]byte
	rand.Read(b[:])
	host, _ := os.Hostname()
	return &Stream{
		rdb: rdb, stream: stream, dead: stream + ":dead",
		group:         DefaultGroup,
		consumer:      fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:])),
		maxLen:        DefaultMaxLen,
		maxRecordSize: DefaultMaxRecordSize,
		claimIdle:     DefaultClaimIdle,
		block:         DefaultBlock,
		claimFrom:     "0-0",
	}
}

func (s *Stream) mustNotBeOpen(method string) {
	if s.opened.Load() {
		panic("redisstream: Stream." + method + " called after Open")
	}
}

// WithGroup sets the consumer group's name. The default is "spool".
func (s *Stream) WithGroup(name string) *Stream {
	s.mustNotBeOpen("WithGroup")
	s.group = name
	return s
}

// WithConsumer sets this consumer's name in the group. The default is
// unique to the process and the Stream (host, pid and a random part); give
// a name that a restarted process reuses to have it take its own unfinished
// records back at once, rather than leave them to XAUTOCLAIM.
func (s *Stream) WithConsumer(name string) *Stream {
	s.mustNotBeOpen("WithConsumer")
	s.consumer = name
	return s
}

// WithDeadStream sets the name of the dead-letter stream. The default is
// the stream's name + ":dead".
func (s *Stream) WithDeadStream(name string) *Stream {
	s.mustNotBeOpen("WithDeadStream")
	s.dead = name
	return s
}

// WithMaxLen bounds the records the stream holds (XLEN). When an Append
// would pass it, Append waits for the consumers to remove records (or,
// with WithErrorWhenFull, returns spool.ErrFull). The default is 1,000,000;
// n must be more than 0.
func (s *Stream) WithMaxLen(n int64) *Stream {
	s.mustNotBeOpen("WithMaxLen")
	s.maxLen = n
	return s
}

// WithErrorWhenFull makes Append return spool.ErrFull when the stream is
// full, instead of waiting.
func (s *Stream) WithErrorWhenFull() *Stream {
	s.mustNotBeOpen("WithErrorWhenFull")
	s.errorWhenFull = true
	return s
}

// WithMaxRecordSize sets the largest record Append accepts; a larger one is
// refused with an error wrapping spool.ErrTooLarge. The default is 1 MiB; n
// must be more than 0.
func (s *Stream) WithMaxRecordSize(n int) *Stream {
	s.mustNotBeOpen("WithMaxRecordSize")
	s.maxRecordSize = n
	return s
}

// WithClaimIdle sets how long a record may stay read and unacknowledged by
// one consumer before another takes it over (XAUTOCLAIM): keep it well over
// the longest time an operation takes, or records are processed twice. The
// default is 30s; d must be more than 0.
func (s *Stream) WithClaimIdle(d time.Duration) *Stream {
	s.mustNotBeOpen("WithClaimIdle")
	s.claimIdle = d
	return s
}

// OnError sets a function called with each error that Read met and
// overcame by trying again (Redis unreachable, say). It must not block.
func (s *Stream) OnError(fn func(error)) *Stream {
	s.mustNotBeOpen("OnError")
	s.onError = fn
	return s
}

// Consumer returns this consumer's name in the group.
func (s *Stream) Consumer() string { return s.consumer }

func (s *Stream) validate() error {
	var errs []error
	bad := func(setting string, v any, want string) {
		errs = append(errs, fmt.Errorf("%w: %s is %v, want %s", spool.ErrInvalidSetting, setting, v, want))
	}
	if s.rdb == nil {
		bad("the Redis client", "nil", "a client")
	}
	if s.stream == "" {
		bad("the stream's name", `""`, "a name")
	}
	if s.dead == "" || s.dead == s.stream {
		bad("DeadStream", strconv.Quote(s.dead), "a name other than the stream's")
	}
	if s.group == "" {
		bad("Group", `""`, "a name")
	}
	if s.consumer == "" {
		bad("Consumer", `""`, "a name")
	}
	if s.maxLen <= 0 {
		bad("MaxLen", s.maxLen, "more than 0")
	}
	if s.maxRecordSize <= 0 {
		bad("MaxRecordSize", s.maxRecordSize, "more than 0")
	}
	if s.claimIdle <= 0 {
		bad("ClaimIdle", s.claimIdle, "more than 0")
	}
	return errors.Join(errs...)
}

// Open checks the settings and creates the stream and its consumer group if
// they do not exist.
func (s *Stream) Open(ctx context.Context) error {
	if !s.opened.CompareAndSwap(false, true) {
		return errors.New("redisstream: Open called twice")
	}
	if err := s.validate(); err != nil {
		return err
	}
	s.closed = make(chan struct{})
	err := s.rdb.XGroupCreateMkStream(ctx, s.stream, s.group, "0").Err()
	if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("redisstream: create the group %q of %q: %w", s.group, s.stream, redact.Error(err))
	}
	return nil
}

// Close stops the Stream: blocked calls return spool.ErrClosed (a Read
// within the block time, 500 ms). It does not close the Redis client.
func (s *Stream) Close() error {
	if s.closed == nil {
		return nil
	}
	s.closeOnce.Do(func() { close(s.closed) })
	return nil
}

func (s *Stream) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// appendScript adds ARGV[2..] to the stream if the stream then holds at
// most ARGV[1] records; it returns the length before, or -1 if full.
var appendScript = redis.NewScript(`
local n = redis.call('XLEN', KEYS[1])
if n + #ARGV - 1 > tonumber(ARGV[1]) then return -1 end
for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'd', ARGV[i]) end
return n`)

// Append implements spool.Backend: it adds recs to the stream in one
// script, all or none, and returns once Redis acknowledged them.
func (s *Stream) Append(ctx context.Context, recs [][]byte) error {
	if s.closed == nil || s.isClosed() {
		return spool.ErrClosed
	}
	if int64(len(recs)) > s.maxLen {
		return fmt.Errorf("%w: %d records in one Append, over MaxLen %d", spool.ErrTooLarge, len(recs), s.maxLen)
	}
	args := make([]any, 0, len(recs)+1)
	args = append(args, s.maxLen)
	for i, r := range recs {
		if len(r) > s.maxRecordSize {
			return fmt.Errorf("%w: record %d is %d bytes, over the limit of %d (MaxRecordSize)", spool.ErrTooLarge, i, len(r), s.maxRecordSize)
		}
		args = append(args, r)
	}
	wait := 5 * time.Millisecond
	for {
		n, err := appendScript.Run(ctx, s.rdb, []string{s.stream}, args...).Int64()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("redisstream: append to %q: %w", s.stream, redact.Error(err))
		}
		if n >= 0 {
			return nil
		}
		if s.errorWhenFull {
			return fmt.Errorf("%w: the stream %q holds its MaxLen of %d records", spool.ErrFull, s.stream, s.maxLen)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-s.closed:
			t.Stop()
			return spool.ErrClosed
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// Read implements spool.Backend. It first delivers again this consumer's
// own unacknowledged records (after a restart under the same name), then,
// every half ClaimIdle, takes over the records other consumers left idle
// for ClaimIdle, and otherwise reads new records. If Redis fails, Read
// tries again (reporting to OnError) until ctx ends or the Stream closes.
func (s *Stream) Read(ctx context.Context, max int) ([]spool.Entry, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: Read's max is %d, want more than 0", spool.ErrInvalidSetting, max)
	}
	s.readMu.Lock()
	defer s.readMu.Unlock()
	wait := 50 * time.Millisecond
	for {
		if s.closed == nil || s.isClosed() {
			return nil, spool.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		es, err := s.readOnce(ctx, max)
		if err == nil {
			wait = 50 * time.Millisecond
			if len(es) > 0 {
				return es, nil
			}
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.retries.Add(1)
		if s.onError != nil {
			s.onError(fmt.Errorf("redisstream: read %q: %w", s.stream, redact.Error(err)))
		}
		if strings.Contains(err.Error(), "NOGROUP") {
			// The stream was lost (a Redis without persistence restarted):
			// make the group again.
			s.rdb.XGroupCreateMkStream(ctx, s.stream, s.group, "0")
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-s.closed:
			t.Stop()
			return nil, spool.ErrClosed
		}
		wait = min(2*wait, 2*time.Second)
	}
}

func (s *Stream) readOnce(ctx context.Context, max int) ([]spool.Entry, error) {
	if !s.ownDone {
		res, err := s.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: s.group, Consumer: s.consumer, Streams: []string{s.stream, "0"}, Count: int64(max),
		}).Result()
		if err != nil && err != redis.Nil {
			return nil, err
		}
		es := entries(res)
		if len(es) == 0 {
			s.ownDone = true
		}
		return es, nil
	}
	if time.Since(s.lastClaim) >= s.claimIdle/2 {
		msgs, next, err := s.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: s.stream, Group: s.group, Consumer: s.consumer, MinIdle: s.claimIdle, Start: s.claimFrom, Count: int64(max),
		}).Result()
		if err != nil && err != redis.Nil {
			return nil, err
		}
		s.claimFrom = next
		if next == "0-0" {
			s.lastClaim = time.Now()
		}
		if es := messages(msgs); len(es) > 0 {
			return es, nil
		}
	}
	res, err := s.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: s.group, Consumer: s.consumer, Streams: []string{s.stream, ">"}, Count: int64(max), Block: s.block,
	}).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return entries(res), nil
}

func entries(res []redis.XStream) []spool.Entry {
	var es []spool.Entry
	for _, st := range res {
		es = append(es, messages(st.Messages)...)
	}
	return es
}

func messages(msgs []redis.XMessage) []spool.Entry {
	es := make([]spool.Entry, 0, len(msgs))
	for _, m := range msgs {
		id, ok := parseID(m.ID)
		if !ok {
			continue
		}
		d, ok := m.Values["d"].(string)
		if !ok { // deleted meanwhile
			continue
		}
		es = append(es, spool.Entry{ID: id, Data: []byte(d)})
	}
	return es
}

func parseID(s string) (spool.ID, bool) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return spool.ID{}, false
	}
	hi, err1 := strconv.ParseUint(a, 10, 64)
	lo, err2 := strconv.ParseUint(b, 10, 64)
	return spool.ID{Hi: hi, Lo: lo}, err1 == nil && err2 == nil
}

// Ack implements spool.Backend: XACK and XDEL in one transaction.
func (s *Stream) Ack(ctx context.Context, ids []spool.ID) error {
	if len(ids) == 0 {
		return nil
	}
	if s.closed == nil || s.isClosed() {
		return spool.ErrClosed
	}
	strs := make([]string, len(ids))
	for i, id := range ids {
		strs[i] = id.String()
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.XAck(ctx, s.stream, s.group, strs...)
		p.XDel(ctx, s.stream, strs...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstream: acknowledge %d records of %q: %w", len(ids), s.stream, redact.Error(err))
	}
	return nil
}

// Dead implements spool.Backend: in one transaction, it adds the records to
// the dead-letter stream with their reasons and IDs, and acknowledges and
// deletes them from the stream.
func (s *Stream) Dead(ctx context.Context, entries []spool.Entry, reasons []string) error {
	if len(entries) != len(reasons) {
		return fmt.Errorf("redisstream: Dead got %d entries and %d reasons", len(entries), len(reasons))
	}
	if s.closed == nil || s.isClosed() {
		return spool.ErrClosed
	}
	strs := make([]string, len(entries))
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i, e := range entries {
			strs[i] = e.ID.String()
			p.XAdd(ctx, &redis.XAddArgs{Stream: s.dead, Values: []any{"d", e.Data, "r", reasons[i], "from", strs[i]}})
		}
		p.XAck(ctx, s.stream, s.group, strs...)
		p.XDel(ctx, s.stream, strs...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstream: dead-letter %d records of %q: %w", len(entries), s.stream, redact.Error(err))
	}
	return nil
}

// DeadLetters implements spool.Backend: it reads the dead-letter stream in
// pages of 1,000.
func (s *Stream) DeadLetters(ctx context.Context, fn func(spool.DeadEntry) error) error {
	start := "-"
	for {
		msgs, err := s.rdb.XRangeN(ctx, s.dead, start, "+", 1000).Result()
		if err != nil {
			return fmt.Errorf("redisstream: read the dead letters of %q: %w", s.stream, redact.Error(err))
		}
		for _, m := range msgs {
			id, _ := parseID(m.ID)
			d, _ := m.Values["d"].(string)
			r, _ := m.Values["r"].(string)
			f, _ := m.Values["from"].(string)
			from, _ := parseID(f)
			if err := fn(spool.DeadEntry{ID: id, From: from, Data: []byte(d), Reason: r}); err != nil {
				return err
			}
		}
		if len(msgs) < 1000 {
			return nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// Replay implements spool.Backend: page by page, in one transaction each,
// it adds the dead letters to the stream again and deletes them from the
// dead-letter stream. It does not wait for room under MaxLen.
func (s *Stream) Replay(ctx context.Context) (int, error) {
	n := 0
	for {
		msgs, err := s.rdb.XRangeN(ctx, s.dead, "-", "+", 1000).Result()
		if err != nil {
			return n, fmt.Errorf("redisstream: read the dead letters of %q: %w", s.stream, redact.Error(err))
		}
		if len(msgs) == 0 {
			return n, nil
		}
		_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			ids := make([]string, len(msgs))
			for i, m := range msgs {
				ids[i] = m.ID
				p.XAdd(ctx, &redis.XAddArgs{Stream: s.stream, Values: []any{"d", m.Values["d"]}})
			}
			p.XDel(ctx, s.dead, ids...)
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("redisstream: replay the dead letters of %q: %w", s.stream, redact.Error(err))
		}
		n += len(msgs)
	}
}
