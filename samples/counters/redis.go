package counters

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// DefaultDedupeTTL is how long a RedisStore remembers which deltas it
// applied, by default.
const DefaultDedupeTTL = 24 * time.Hour

// applyScript applies a batch of deltas atomically, each at most once.
// KEYS: for each delta, the set of keys applied in its flush, then the
// counter's key. ARGV: the sets' time to live in seconds, then for each delta
// its key (the set's member) and its N.
var applyScript = goredis.NewScript(`
local applied = 0
for i = 1, #KEYS, 2 do
  if redis.call('SADD', KEYS[i], ARGV[i + 1]) == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
    redis.call('INCRBY', KEYS[i + 1], ARGV[i + 2])
    applied = applied + 1
  end
end
return applied
`)

// RedisStore is a Store in Redis: counter key becomes the Redis key
// prefix+key, holding an integer. Each Apply is one Lua script (EVALSHA),
// which Redis runs atomically: per delta, SADD to the set prefix+"~applied:"+
// flush, and INCRBY if the delta was not in it. Read the counts with GET.
//
// Create it with NewRedisStore. It is safe for concurrent use.
type RedisStore struct {
	client goredis.Scripter
	prefix string
	ttl    time.Duration
}

// NewRedisStore returns a store writing through client (a *redis.Client, or
// anything that runs scripts) under keys prefix+key, remembering applied
// deltas for DefaultDedupeTTL.
func NewRedisStore(client goredis.Scripter, prefix string) *RedisStore {
	return &RedisStore{client: client, prefix: prefix, ttl: DefaultDedupeTTL}
}

// WithDedupeTTL sets how long the store remembers the deltas it applied; it
// must be longer than a delta can be retried (MaxAttempts times the largest
// back-off, and then some). The default is 24h; d must be at least a second.
func (s *RedisStore) WithDedupeTTL(d time.Duration) *RedisStore {
	s.ttl = d
	return s
}

// Key returns the Redis key that holds counter key.
func (s *RedisStore) Key(key string) string { return s.prefix + key }

// Apply adds the deltas not applied before, in one atomic script.
func (s *RedisStore) Apply(ctx context.Context, deltas []Delta) (int, error) {
	if s.ttl < time.Second {
		return 0, fmt.Errorf("counters: RedisStore DedupeTTL must be at least 1s, got %v", s.ttl)
	}
	if len(deltas) == 0 {
		return 0, nil
	}
	keys := make([]string, 0, 2*len(deltas))
	args := make([]any, 0, 1+2*len(deltas))
	args = append(args, int64(s.ttl/time.Second))
	for _, d := range deltas {
		keys = append(keys, s.prefix+"~applied:"+d.Flush, s.prefix+d.Key)
		args = append(args, d.Key, d.N)
	}
	n, err := applyScript.Run(ctx, s.client, keys, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("counters: applying %d deltas in redis: %w", len(deltas), err)
	}
	return n, nil
}
