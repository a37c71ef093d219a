package analytics

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/spool"
)

// Names of the events the session logic knows.
const (
	ScreenView = "screen_view"
	SessionEnd = "session_end"
)

// An Event is one tracked event, one row of the table.
type Event struct {
	ID      uint64 `json:"id"` // unique: rows with the same ID are one event
	Session uint64 `json:"s"`
	// Seq numbers the session's events from 1, in the order they happened;
	// the session logic applies them in this order, whatever order they
	// arrive in.
	Seq    uint32 `json:"q"`
	Name   string `json:"n"`
	TimeMs int64  `json:"t"` // Unix milliseconds
	UserID uint64 `json:"u"`
	// DurationMs is set by the pipeline on a screen_view: the time to the
	// session's next screen_view, or to its session_end.
	DurationMs int64 `json:"d,omitempty"`
}

// A Tracker micro-batches events from any number of goroutines into a
// spool: a batch is appended when it holds 100 events or 10 ms after its
// first, whichever comes first. Track returns once its event's batch is
// durable in the spool (as the spool's backend promises), so an event whose
// Track returned nil is delivered to the table even if the process dies
// right after.
type Tracker struct {
	sp       *spool.Spool[Event]
	in       chan tracked
	maxBatch int
	linger   time.Duration
	stop     chan struct{}
	wg       sync.WaitGroup
}

type tracked struct {
	e    Event
	done chan error
}

// NewTracker returns a running Tracker that appends to sp. Close it when
// done.
func NewTracker(sp *spool.Spool[Event]) *Tracker {
	t := &Tracker{sp: sp, in: make(chan tracked), maxBatch: 100, linger: 10 * time.Millisecond, stop: make(chan struct{})}
	t.wg.Go(t.loop)
	return t
}

// ErrTrackerClosed is returned by Track after Close.
var ErrTrackerClosed = errors.New("analytics: tracker closed")

// Track adds e to the current micro-batch and waits until the batch is
// appended to the spool. If ctx ends first it returns ctx's error; the event
// may still be appended.
func (t *Tracker) Track(ctx context.Context, e Event) error {
	done := make(chan error, 1)
	select {
	case t.in <- tracked{e, done}:
	case <-t.stop:
		return ErrTrackerClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the Tracker after appending what it holds.
func (t *Tracker) Close() {
	close(t.stop)
	t.wg.Wait()
}

func (t *Tracker) loop() {
	var batch []tracked
	var timer *time.Timer
	var fire <-chan time.Time
	var flushes sync.WaitGroup
	slots := make(chan struct{}, 4) // micro-batches appended at once
	flush := func() {
		if timer != nil {
			timer.Stop()
			fire = nil
		}
		if len(batch) == 0 {
			return
		}
		b := batch
		batch = nil
		slots <- struct{}{}
		flushes.Go(func() {
			defer func() { <-slots }()
			events := make([]Event, len(b))
			for i, x := range b {
				events[i] = x.e
			}
			err := t.sp.AppendBatch(context.Background(), events)
			for _, x := range b {
				x.done <- err
			}
		})
	}
	defer flushes.Wait()
	for {
		select {
		case x := <-t.in:
			batch = append(batch, x)
			if len(batch) == 1 {
				timer = time.NewTimer(t.linger)
				fire = timer.C
			}
			if len(batch) >= t.maxBatch {
				flush()
			}
		case <-fire:
			flush()
		case <-t.stop:
			flush()
			return
		}
	}
}

// Sessions applies the session logic in Redis, atomically per event with a
// Lua script, so that any number of consumers in any number of processes
// may apply it at once: each session's events are applied in Seq order (an
// event that comes early waits in Redis for those before it), each
// screen_view is held until the session's next screen_view or session_end
// gives it its duration, and an event applied again (a redelivery) returns
// exactly the rows its first application returned. The rows to insert are
// what the script returns.
type Sessions struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewSessions returns the session logic on rdb, under keys prefix + the
// session's number, kept for ttl after a session's last event.
func NewSessions(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Sessions {
	return &Sessions{rdb: rdb, prefix: prefix, ttl: ttl}
}

// The script's state per session, in one hash: next (the Seq it applies
// next), last and last_t (the held screen_view and its time), park:<seq>
// (an event that came before its turn) and memo:<seq> (the rows an event's
// application returned). ARGV: seq, name, time, the event's JSON, ttl ms.
var sessionScript = redis.NewScript(`
local k = KEYS[1]
local seq = tonumber(ARGV[1])
local nxt = tonumber(redis.call('HGET', k, 'next') or '1')
if seq < nxt then return redis.call('HGET', k, 'memo:' .. seq) or '' end
if seq > nxt then
  redis.call('HSET', k, 'park:' .. seq, ARGV[2] .. '\t' .. ARGV[3] .. '\t' .. ARGV[4])
  redis.call('PEXPIRE', k, ARGV[5])
  return ''
end
local out = {}
local name, t, ev = ARGV[2], ARGV[3], ARGV[4]
while true do
  if name == 'screen_view' or name == 'session_end' then
    local last = redis.call('HGET', k, 'last')
    if last then
      out[#out + 1] = last .. '\t' .. (tonumber(t) - tonumber(redis.call('HGET', k, 'last_t')))
      redis.call('HDEL', k, 'last', 'last_t')
    end
  end
  if name == 'screen_view' then
    redis.call('HSET', k, 'last', ev, 'last_t', t)
  else
    out[#out + 1] = ev .. '\t0'
  end
  nxt = nxt + 1
  local p = redis.call('HGET', k, 'park:' .. nxt)
  if not p then break end
  redis.call('HDEL', k, 'park:' .. nxt)
  local a = string.find(p, '\t', 1, true)
  local b = string.find(p, '\t', a + 1, true)
  name, t, ev = string.sub(p, 1, a - 1), string.sub(p, a + 1, b - 1), string.sub(p, b + 1)
end
redis.call('HSET', k, 'next', nxt)
local res = table.concat(out, '\n')
redis.call('HSET', k, 'memo:' .. seq, res)
redis.call('PEXPIRE', k, ARGV[5])
return res`)

// Apply applies events, in the order given, and returns the rows they
// release: events with their durations set, ready to insert.
func (s *Sessions) Apply(ctx context.Context, events []Event) ([]Event, error) {
	p := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(events))
	for i, e := range events {
		js, err := json.Marshal(e)
		if err != nil {
			return nil, err
		}
		cmds[i] = sessionScript.EvalSha(ctx, p, []string{s.prefix + strconv.FormatUint(e.Session, 10)},
			e.Seq, e.Name, e.TimeMs, js, s.ttl.Milliseconds())
	}
	if _, err := p.Exec(ctx); err != nil {
		if !strings.Contains(err.Error(), "NOSCRIPT") {
			return nil, err
		}
		// The script is not loaded yet: load it and go again (the
		// applications that failed changed nothing).
		if err := sessionScript.Load(ctx, s.rdb).Err(); err != nil {
			return nil, err
		}
		return s.Apply(ctx, events)
	}
	var rows []Event
	for _, c := range cmds {
		out, _ := c.Text()
		for line := range strings.SplitSeq(out, "\n") {
			if line == "" {
				continue
			}
			js, d, _ := strings.Cut(line, "\t")
			var e Event
			if err := json.Unmarshal([]byte(js), &e); err != nil {
				return nil, fmt.Errorf("analytics: a row from the session script: %w", err)
			}
			e.DurationMs, _ = strconv.ParseInt(d, 10, 64)
			rows = append(rows, e)
		}
	}
	return rows, nil
}

// observe, when set (by the package's tests), is called after each batch
// the Watcher processed: its events, the rows it inserted, the time in the
// session logic and the time inserting.
var observe atomic.Pointer[func(events, rows int, apply, insert time.Duration)]

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// CreateTable creates the events table if it does not exist: a MergeTree
// sorted by time, in which an event delivered twice is two rows with the
// same id (count them with uniqExact(id); use a ReplacingMergeTree to have
// merges collapse them).
func CreateTable(ctx context.Context, conn driver.Conn, table string) error {
	if !tableName.MatchString(table) {
		return fmt.Errorf("analytics: %q is not a table name such as events or db.events", table)
	}
	return conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+table+` (
		time        DateTime,
		time_ms     Int64,
		id          UInt64,
		session     UInt64,
		seq         UInt32,
		name        String,
		user_id     UInt64,
		duration_ms Int64
	) ENGINE = MergeTree()
	ORDER BY (time, id)`)
}

// Insert writes events to table in chunks of chunk rows, in time order.
func Insert(ctx context.Context, conn driver.Conn, table string, events []Event, chunk int) error {
	slices.SortFunc(events, func(a, b Event) int {
		return cmp.Or(cmp.Compare(a.TimeMs, b.TimeMs), cmp.Compare(a.ID, b.ID))
	})
	for start := 0; start < len(events); start += chunk {
		part := events[start:min(start+chunk, len(events))]
		b, err := conn.PrepareBatch(ctx, "INSERT INTO "+table+" (time, time_ms, id, session, seq, name, user_id, duration_ms)")
		if err != nil {
			return err
		}
		for _, e := range part {
			if err := b.Append(time.UnixMilli(e.TimeMs).UTC(), e.TimeMs, e.ID, e.Session, e.Seq, e.Name, e.UserID, e.DurationMs); err != nil {
				b.Abort()
				return err
			}
		}
		if err := b.Send(); err != nil {
			return err
		}
	}
	return nil
}

// NewWatcher returns the spool Watcher of the pipeline's consumer: each
// batch (up to 4,000 events) is sorted by time, put through the session
// logic, and inserted into table in chunks of 1,000; ProcessBatch returns,
// and the batch's records are removed from the spool, only after every
// chunk was inserted. A failure is retried (up to 1,000 times, backing off
// to 10 s), so that the records stay in the spool while ClickHouse or Redis
// is down.
func NewWatcher(conn driver.Conn, sessions *Sessions, table string) *spool.Watcher[Event] {
	return spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[Event]) error {
		events := make([]Event, len(batch))
		for i, r := range batch {
			events[i] = r.Value
		}
		slices.SortFunc(events, func(a, b Event) int {
			return cmp.Or(cmp.Compare(a.TimeMs, b.TimeMs), cmp.Compare(a.Seq, b.Seq))
		})
		start := time.Now()
		rows, err := sessions.Apply(ctx, events)
		if err != nil {
			return batcher.Retry(fmt.Errorf("analytics: session logic: %w", err))
		}
		applied := time.Now()
		if err := Insert(ctx, conn, table, rows, 1000); err != nil {
			return batcher.Retry(fmt.Errorf("analytics: insert: %w", err))
		}
		if fn := observe.Load(); fn != nil {
			(*fn)(len(events), len(rows), applied.Sub(start), time.Since(applied))
		}
		return nil
	}).WithMaxBatchSize(4000).WithMaxAttempts(1000).WithRetryBackoff(100*time.Millisecond, 10*time.Second).WithMaxConcurrentBatches(2)
}
