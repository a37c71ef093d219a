// Package redis keeps the leases of a shared capacity's partitions in Redis:
// a [ratelimiter.LeaseManager] for instances that all reach one Redis server
// (or cluster).
//
// # Keys
//
// Every key of one shared resource starts with "{prefix}:", the prefix given
// to [New] in braces, so that Redis Cluster keeps them in one hash slot as
// the scripts need:
//
//   - {prefix}:partitions holds the partition count that Provision recorded
//     (it never expires; delete it by hand when the resource is gone);
//   - {prefix}:lease:<p> holds the owner of partition p's lease, and expires
//     with the lease (SET NX PX);
//   - {prefix}:demands is a hash of each owner's demand, stamped with its end
//     by the server's clock; Announce drops the ended ones as it reads them,
//     and the hash itself expires with the longest-lived demand.
//
// Every check-and-set runs in a Lua script (EVALSHA, falling back to EVAL
// once per server), so each method is one round trip and atomic: an owner
// renews or releases a lease only while it holds it, and two owners racing
// for a free partition never both get it.
//
// # Time
//
// Leases and demands expire by the Redis server's clock, to the millisecond;
// durations are rounded up to whole milliseconds, and must be at least 1 ms.
// The instances' own clocks do not matter.
//
// # Contexts
//
// Give the client ContextTimeoutEnabled (in [goredis.Options] and its
// cluster and ring counterparts): go-redis then ends each call at its ctx's
// deadline. Without it, and for a ctx cancelled without a deadline in any
// case, go-redis notices the end of ctx only when the call ends by itself:
// with a server that does not answer, at the client's ReadTimeout (5 s by
// default). The error then still wraps ctx's. The Manager starts no
// goroutine to return sooner.
//
// # What it does not do
//
// It does not fence: an instance that stalls past its lease's end may still
// be using the partition when another acquires it. The SharedResource stops
// using a partition well before its lease ends (see the design's G6). It does
// not survive a Redis failover that loses recent writes; with Redis
// replication, a lease acquired on a primary that dies before replicating it
// may be acquired again on the new one.
package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/leasecall"
	"github.com/ratebatch/batcher/ratelimiter"
)

// A Manager keeps leases and demands in Redis. It holds no state of its own
// besides the client and the prefix, so any number of Managers with the same
// prefix, in any number of processes, share the same leases.
//
// Its methods are safe for concurrent use. It starts no goroutines, and has
// no Close: closing the client is its owner's business. Create one with
// [New].
type Manager struct {
	client goredis.UniversalClient
	prefix string
}

var _ ratelimiter.LeaseManager = (*Manager)(nil)

// New returns a Manager that keeps the leases of the shared resource named
// prefix (for example "orders-cosmos") in client. Every instance sharing the
// capacity must use the same prefix; two resources must not. The prefix must
// not be empty, and must not contain '{' or '}' (the keys wrap it in braces).
//
// Set ContextTimeoutEnabled in the client's options (see the package doc).
func New(client goredis.UniversalClient, prefix string) (*Manager, error) {
	var errs []error
	if client == nil {
		errs = append(errs, errors.New("ratelimiter/redis: New: client is nil"))
	}
	if prefix == "" {
		errs = append(errs, errors.New("ratelimiter/redis: New: prefix is empty"))
	} else if strings.ContainsAny(prefix, "{}") {
		errs = append(errs, fmt.Errorf("ratelimiter/redis: New: prefix %q contains '{' or '}'", prefix))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Manager{client: client, prefix: "{" + prefix + "}:"}, nil
}

func (m *Manager) countKey() string        { return m.prefix + "partitions" }
func (m *Manager) leaseKey(p int) string   { return m.prefix + "lease:" + strconv.Itoa(p) }
func (m *Manager) demandsKey() string      { return m.prefix + "demands" }
func errorf(format string, a ...any) error { return fmt.Errorf("ratelimiter/redis: "+format, a...) }

// millis converts d to whole milliseconds, rounded up, and refuses durations
// under a millisecond.
func millis(setting string, d time.Duration) (int64, error) {
	if d < time.Millisecond {
		return 0, errorf("%s %v is under the 1ms Redis allows", setting, d)
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond), nil
}

// checkCall returns ctx's error, or one for a bad partition or owner.
func checkCall(ctx context.Context, method string, p int, owner string) error {
	return leasecall.Check(ctx, "ratelimiter/redis", method, p, owner)
}

// wrap annotates an error of the client; see leasecall.Wrap.
func wrap(ctx context.Context, err error, format string, a ...any) error {
	return leasecall.Wrap(ctx, "ratelimiter/redis", err, format, a...)
}

// provisionScript raises the recorded partition count to ARGV[1].
var provisionScript = goredis.NewScript(`
local n = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > cur then
	redis.call('SET', KEYS[1], n)
end
return 1
`)

// Provision implements [ratelimiter.LeaseManager]. It records n as the
// partition count unless a larger one is recorded: partitions are never
// taken away, and Acquire refuses partitions beyond the count.
func (m *Manager) Provision(ctx context.Context, n int) error {
	if err := ctx.Err(); err != nil {
		return errorf("Provision(%d): %w", n, err)
	}
	if n < 0 {
		return errorf("Provision: partition count %d is negative", n)
	}
	if err := provisionScript.Run(ctx, m.client, []string{m.countKey()}, n).Err(); err != nil {
		return wrap(ctx, err, "Provision(%d)", n)
	}
	return nil
}

// acquireScript sets the lease to ARGV[1] for ARGV[2] ms if it is free or
// ARGV[1]'s already, and partition ARGV[3] is under the recorded count. It
// returns {1} on success, {0} when another owner holds the lease, and
// {-1, count} when the partition is out of range.
var acquireScript = goredis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[3]) >= n then
	return {-1, n}
end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
	return {0}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
`)

// Acquire implements [ratelimiter.LeaseManager]. d is rounded up to whole
// milliseconds and must be at least 1 ms. A partition beyond the count that
// Provision recorded is an error (not [ratelimiter.ErrLeaseHeld]).
func (m *Manager) Acquire(ctx context.Context, p int, owner string, d time.Duration) error {
	if err := checkCall(ctx, "Acquire", p, owner); err != nil {
		return err
	}
	ms, err := millis("Acquire: lease duration", d)
	if err != nil {
		return err
	}
	res, err := acquireScript.Run(ctx, m.client, []string{m.leaseKey(p), m.countKey()}, owner, ms, p).Int64Slice()
	if err != nil {
		return wrap(ctx, err, "Acquire partition %d", p)
	}
	switch {
	case len(res) >= 1 && res[0] == 1:
		return nil
	case len(res) >= 1 && res[0] == 0:
		return errorf("Acquire partition %d: %w", p, ratelimiter.ErrLeaseHeld)
	case len(res) == 2 && res[0] == -1:
		return errorf("Acquire: partition %d is out of range: %d provisioned", p, res[1])
	}
	return errorf("Acquire partition %d: unexpected script result %v", p, res)
}

// renewScript extends the lease by ARGV[2] ms from now if ARGV[1] holds it.
var renewScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
	return 1
end
return 0
`)

// Renew implements [ratelimiter.LeaseManager]. d is rounded up to whole
// milliseconds and must be at least 1 ms. A lease that ended is lost even
// when nobody took it: Redis deleted it.
func (m *Manager) Renew(ctx context.Context, p int, owner string, d time.Duration) error {
	if err := checkCall(ctx, "Renew", p, owner); err != nil {
		return err
	}
	ms, err := millis("Renew: lease duration", d)
	if err != nil {
		return err
	}
	ok, err := renewScript.Run(ctx, m.client, []string{m.leaseKey(p)}, owner, ms).Int64()
	if err != nil {
		return wrap(ctx, err, "Renew partition %d", p)
	}
	if ok != 1 {
		return errorf("Renew partition %d: %w", p, ratelimiter.ErrLeaseLost)
	}
	return nil
}

// releaseScript deletes the lease if ARGV[1] holds it.
var releaseScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// Release implements [ratelimiter.LeaseManager].
func (m *Manager) Release(ctx context.Context, p int, owner string) error {
	if err := checkCall(ctx, "Release", p, owner); err != nil {
		return err
	}
	if err := releaseScript.Run(ctx, m.client, []string{m.leaseKey(p)}, owner).Err(); err != nil {
		return wrap(ctx, err, "Release partition %d", p)
	}
	return nil
}

// announceScript stores ARGV[1]'s demand ARGV[3] in the hash, stamped with
// its end (now by the server's clock plus ARGV[2] ms), drops the ended
// demands, keeps the hash as long as its longest-lived demand, and returns
// the live ones as owner, stamped demand, owner, ...
var announceScript = goredis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], (now + ttl) .. ' ' .. ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
local last = now + ttl
for i = 1, #all, 2 do
	local untl = tonumber(string.match(all[i + 1], '^(%d+)'))
	if untl == nil or untl <= now then
		redis.call('HDEL', KEYS[1], all[i])
	else
		live[#live + 1] = all[i]
		live[#live + 1] = all[i + 1]
		if untl > last then
			last = untl
		end
	end
end
if redis.call('PTTL', KEYS[1]) < last - now then
	redis.call('PEXPIRE', KEYS[1], last - now)
end
return live
`)

// Announce implements [ratelimiter.LeaseManager], in one round trip. The
// demand's TTL is rounded up to whole milliseconds and must be at least
// 1 ms; its Want and its Held partitions must not be negative. The demands
// come back sorted by owner.
func (m *Manager) Announce(ctx context.Context, d ratelimiter.Demand) ([]ratelimiter.Demand, error) {
	if err := ctx.Err(); err != nil {
		return nil, errorf("Announce owner %q: %w", d.Owner, err)
	}
	if d.Owner == "" {
		return nil, errorf("Announce: owner is empty")
	}
	ms, err := millis(fmt.Sprintf("Announce owner %q: demand TTL", d.Owner), d.TTL)
	if err != nil {
		return nil, err
	}
	if d.Want < 0 {
		return nil, errorf("Announce owner %q: Want %d is negative", d.Owner, d.Want)
	}
	if i := slices.IndexFunc(d.Held, func(p int) bool { return p < 0 }); i >= 0 {
		return nil, errorf("Announce owner %q: held partition %d is negative", d.Owner, d.Held[i])
	}
	res, err := announceScript.Run(ctx, m.client, []string{m.demandsKey()}, d.Owner, ms, leasecall.EncodeDemand(d)).StringSlice()
	if err != nil {
		return nil, wrap(ctx, err, "Announce owner %q", d.Owner)
	}
	out := make([]ratelimiter.Demand, 0, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		// The script stamps each demand with its end: "end want p1,p2,...".
		_, wantHeld, _ := strings.Cut(res[i+1], " ")
		dd, err := leasecall.DecodeDemand("ratelimiter/redis", res[i], wantHeld)
		if err != nil {
			return nil, err
		}
		out = append(out, dd)
	}
	slices.SortFunc(out, func(a, b ratelimiter.Demand) int { return strings.Compare(a.Owner, b.Owner) })
	return out, nil
}
