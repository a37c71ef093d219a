// Package etcd keeps the leases of a shared capacity's partitions in etcd: a
// [ratelimiter.LeaseManager] for instances that all reach one etcd cluster
// (v3 API; checked against etcd 3.4).
//
// # Keys and leases
//
// Every key of one shared resource starts with the prefix given to [New],
// then a slash:
//
//   - <prefix>/partitions holds the partition count that Provision recorded
//     (it never expires; delete it by hand when the resource is gone);
//   - <prefix>/lease/<p> holds the owner of partition p's lease, attached to
//     an etcd lease of the lease's duration, so etcd deletes it when the
//     lease ends;
//   - <prefix>/demand/<owner> holds the owner's demand, attached to an etcd
//     lease of the demand's TTL.
//
// Each partition lease and each demand has an etcd lease of its own. A
// Manager remembers the etcd lease behind each partition lease it acquired,
// so that Renew is a keep-alive; a Manager that does not know it (another
// process with the same owner, or a restarted one) finds it from the key.
// Acquiring, renewing with a new duration and releasing run in transactions
// guarded on the key's value, so an owner renews or releases a lease only
// while it holds it, and two owners racing for a free partition never both
// get it.
//
// # Time
//
// etcd leases count whole seconds: durations and TTLs are rounded up to a
// whole second, and the server raises them to its minimum (1.5 times the
// election timeout, rounded up: 2 s with etcd's defaults). A lease or demand
// therefore lasts at least as long as asked, and up to about a second
// longer; etcd checks for ended leases twice a second, so an ended lease's
// key may stay up to half a second more. Expiry runs on the etcd leader's
// clock. The instances' own clocks do not matter.
//
// # Round trips
//
// Writes (grants, transactions, revokes) go through etcd's log and cost a
// disk sync; keep-alives and reads do not. Acquire is 2 round trips: a lease
// (a keep-alive of a spare one, or a grant) and a transaction; when the
// partition is held, the unused lease is kept as the spare for the next
// Acquire with the same duration. So the Manager holds at most one lease
// with no key per duration, which ends by itself. Renew with the same
// duration: 2 (keep-alive, read the key); with another duration: 3 (lease,
// transaction, revoke the old lease). Release: 2 (transaction, revoke).
// Announce: 2 (keep-alive or grant, transaction). Provision: 1.
//
// # What it does not do
//
// It does not fence: an instance that stalls past its lease's end may still
// be using the partition when another acquires it. The SharedResource stops
// using a partition well before its lease ends (see the design's G6).
package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ratebatch/batcher/internal/leasecall"
	"github.com/ratebatch/batcher/ratelimiter"
)

// A Manager keeps leases and demands in etcd. Any number of Managers with the
// same prefix, in any number of processes, share the same leases.
//
// Its methods are safe for concurrent use. It starts no goroutines, and has
// no Close: closing the client is its owner's business; the etcd leases of
// the partitions it holds end by themselves unless released. Create one with
// [New].
type Manager struct {
	client *clientv3.Client
	prefix string // with its trailing slash

	mu sync.Mutex
	// leases are the etcd leases behind the partition leases this Manager
	// acquired or renewed, and the TTL (whole seconds, as asked) of each.
	leases map[leaseKey]grant
	// demands are the etcd leases behind each owner's demand.
	demands map[string]grant
	// spares are etcd leases that carry no key, by TTL: granted for an
	// Acquire that found the partition held, and kept for the next one.
	spares map[int64]clientv3.LeaseID
}

type leaseKey struct {
	p     int
	owner string
}

type grant struct {
	id  clientv3.LeaseID
	ttl int64
}

var _ ratelimiter.LeaseManager = (*Manager)(nil)

// New returns a Manager that keeps the leases of the shared resource named
// prefix (for example "/batcher/orders-cosmos") in client's cluster. Every
// instance sharing the capacity must use the same prefix. Two resources must
// not, and neither prefix may be the other's followed by "/lease" or
// "/demand": the keys would mix. The prefix must not be empty; a trailing
// slash is dropped.
func New(client *clientv3.Client, prefix string) (*Manager, error) {
	var errs []error
	if client == nil {
		errs = append(errs, errors.New("ratelimiter/etcd: New: client is nil"))
	}
	trimmed := strings.TrimRight(prefix, "/")
	if trimmed == "" {
		errs = append(errs, fmt.Errorf("ratelimiter/etcd: New: prefix %q is empty", prefix))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Manager{
		client:  client,
		prefix:  trimmed + "/",
		leases:  make(map[leaseKey]grant),
		demands: make(map[string]grant),
		spares:  make(map[int64]clientv3.LeaseID),
	}, nil
}

func (m *Manager) countKey() string              { return m.prefix + "partitions" }
func (m *Manager) leaseKey(p int) string         { return m.prefix + "lease/" + strconv.Itoa(p) }
func (m *Manager) demandPrefix() string          { return m.prefix + "demand/" }
func (m *Manager) demandKey(owner string) string { return m.demandPrefix() + owner }

func errorf(format string, a ...any) error { return fmt.Errorf("ratelimiter/etcd: "+format, a...) }

// padded writes n so that strings compare as the numbers do, for the
// transactions' comparisons of the partition count.
func padded(n int) string { return fmt.Sprintf("%019d", n) }

// seconds converts d to whole seconds, rounded up, and refuses durations
// under a millisecond, as the other stores do.
func seconds(setting string, d time.Duration) (int64, error) {
	if d < time.Millisecond {
		return 0, errorf("%s %v is under 1ms", setting, d)
	}
	return int64((d + time.Second - 1) / time.Second), nil
}

// checkCall returns ctx's error, or one for a bad partition or owner.
func checkCall(ctx context.Context, method string, p int, owner string) error {
	return leasecall.Check(ctx, "ratelimiter/etcd", method, p, owner)
}

// wrap annotates an error of the client; see leasecall.Wrap.
func wrap(ctx context.Context, err error, format string, a ...any) error {
	return leasecall.Wrap(ctx, "ratelimiter/etcd", err, format, a...)
}

// revoke revokes an etcd lease nobody needs any more. It is tidiness, not
// correctness (the lease would end by itself), so it ignores errors.
func (m *Manager) revoke(ctx context.Context, id clientv3.LeaseID) {
	if id != clientv3.NoLease {
		_, _ = m.client.Revoke(ctx, id)
	}
}

// newLease returns an etcd lease of ttl seconds that carries no key: a spare
// one, kept alive so that its TTL starts now, or a new one.
func (m *Manager) newLease(ctx context.Context, ttl int64) (clientv3.LeaseID, error) {
	m.mu.Lock()
	id, ok := m.spares[ttl]
	delete(m.spares, ttl)
	m.mu.Unlock()
	if ok {
		_, err := m.client.KeepAliveOnce(ctx, id)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			m.spare(ctx, ttl, id)
			return 0, err
		}
	}
	resp, err := m.client.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("granting a %ds lease: %w", ttl, err)
	}
	return resp.ID, nil
}

// spare keeps id, an etcd lease of ttl seconds that carries no key, for the
// next newLease, or revokes it if a spare of that TTL is kept already.
func (m *Manager) spare(ctx context.Context, ttl int64, id clientv3.LeaseID) {
	m.mu.Lock()
	_, full := m.spares[ttl]
	if !full {
		m.spares[ttl] = id
	}
	m.mu.Unlock()
	if full {
		m.revoke(ctx, id)
	}
}

func (m *Manager) remember(p int, owner string, g grant) {
	m.mu.Lock()
	m.leases[leaseKey{p, owner}] = g
	m.mu.Unlock()
}

func (m *Manager) forget(p int, owner string) {
	m.mu.Lock()
	delete(m.leases, leaseKey{p, owner})
	m.mu.Unlock()
}

func (m *Manager) remembered(p int, owner string) (grant, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.leases[leaseKey{p, owner}]
	return g, ok
}

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
	key, val := m.countKey(), padded(n)
	put := clientv3.OpPut(key, val)
	_, err := m.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(put).
		Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "<", val)}, []clientv3.Op{put}, nil)).
		Commit()
	if err != nil {
		return wrap(ctx, err, "Provision(%d)", n)
	}
	return nil
}

// Acquire implements [ratelimiter.LeaseManager]. d is rounded up to whole
// seconds (see the package doc) and must be at least 1 ms. A partition
// beyond the count that Provision recorded is an error (not
// [ratelimiter.ErrLeaseHeld]).
func (m *Manager) Acquire(ctx context.Context, p int, owner string, d time.Duration) error {
	if err := checkCall(ctx, "Acquire", p, owner); err != nil {
		return err
	}
	ttl, err := seconds("Acquire: lease duration", d)
	if err != nil {
		return err
	}
	return m.acquire(ctx, p, owner, ttl, false)
}

// acquire is Acquire after the checks. retried says it found the key
// owner's, and then not, once already.
func (m *Manager) acquire(ctx context.Context, p int, owner string, ttl int64, retried bool) error {
	id, err := m.newLease(ctx, ttl)
	if err != nil {
		return wrap(ctx, err, "Acquire partition %d", p)
	}
	key, count := m.leaseKey(p), m.countKey()
	resp, err := m.client.Txn(ctx).
		If(
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
			clientv3.Compare(clientv3.Value(count), ">", padded(p)),
		).
		Then(clientv3.OpPut(key, owner, clientv3.WithLease(id))).
		Else(clientv3.OpGet(key), clientv3.OpGet(count)).
		Commit()
	if err != nil {
		// The put may have happened; revoking the lease undoes it.
		m.revoke(ctx, id)
		return wrap(ctx, err, "Acquire partition %d", p)
	}
	if resp.Succeeded {
		m.remember(p, owner, grant{id, ttl})
		return nil
	}
	cur := resp.Responses[0].GetResponseRange().GetKvs()
	if len(cur) == 0 {
		m.spare(ctx, ttl, id)
		n := "no partitions"
		if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
			c, _ := strconv.Atoi(string(kvs[0].Value))
			n = strconv.Itoa(c)
		}
		return errorf("Acquire: partition %d is out of range: %s provisioned", p, n)
	}
	if string(cur[0].Value) != owner {
		m.spare(ctx, ttl, id)
		return errorf("Acquire partition %d: %w", p, ratelimiter.ErrLeaseHeld)
	}
	// owner holds it already: move the key to the new lease, which has the
	// duration asked for.
	if err := m.move(ctx, p, owner, grant{id, ttl}); err != nil {
		if errors.Is(err, ratelimiter.ErrLeaseLost) && !retried {
			// It ended or was released in between; try afresh, once.
			return m.acquire(ctx, p, owner, ttl, true)
		}
		if errors.Is(err, ratelimiter.ErrLeaseLost) {
			return errorf("Acquire partition %d: %w", p, ratelimiter.ErrLeaseHeld)
		}
		return wrap(ctx, err, "Acquire partition %d", p)
	}
	return nil
}

// move attaches owner's key of partition p to the etcd lease g, if owner
// still holds it, and revokes the lease it was attached to. It revokes g and
// returns ErrLeaseLost if owner does not hold it.
func (m *Manager) move(ctx context.Context, p int, owner string, g grant) error {
	key := m.leaseKey(p)
	resp, err := m.client.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", owner)).
		Then(clientv3.OpGet(key), clientv3.OpPut(key, owner, clientv3.WithLease(g.id))).
		Commit()
	if err != nil {
		m.revoke(ctx, g.id)
		return err
	}
	if !resp.Succeeded {
		m.spare(ctx, g.ttl, g.id)
		m.forget(p, owner)
		return ratelimiter.ErrLeaseLost
	}
	m.remember(p, owner, g)
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 && clientv3.LeaseID(kvs[0].Lease) != g.id {
		m.revoke(ctx, clientv3.LeaseID(kvs[0].Lease))
	}
	return nil
}

// Renew implements [ratelimiter.LeaseManager]. d is rounded up to whole
// seconds (see the package doc) and must be at least 1 ms. A lease that
// ended is lost even when nobody took it: etcd deleted its key.
func (m *Manager) Renew(ctx context.Context, p int, owner string, d time.Duration) error {
	if err := checkCall(ctx, "Renew", p, owner); err != nil {
		return err
	}
	ttl, err := seconds("Renew: lease duration", d)
	if err != nil {
		return err
	}
	lost := errorf("Renew partition %d: %w", p, ratelimiter.ErrLeaseLost)
	var stale clientv3.LeaseID // an etcd lease of ours that the key left
	if g, ok := m.remembered(p, owner); ok && g.ttl == ttl {
		_, err := m.client.KeepAliveOnce(ctx, g.id)
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return wrap(ctx, err, "Renew partition %d", p)
		}
		if err == nil {
			// The etcd lease lives; check that the key is still on it,
			// and still owner's.
			resp, err := m.client.Get(ctx, m.leaseKey(p))
			if err != nil {
				return wrap(ctx, err, "Renew partition %d", p)
			}
			if len(resp.Kvs) == 0 || string(resp.Kvs[0].Value) != owner {
				m.forget(p, owner)
				m.spare(ctx, g.ttl, g.id) // the key left it
				return lost
			}
			if clientv3.LeaseID(resp.Kvs[0].Lease) == g.id {
				return nil
			}
			stale = g.id
		}
		// The etcd lease is gone, or the key is owner's on another lease
		// (another Manager with the same owner moved it): the key's value
		// decides, below.
	}
	// A new duration, or a lease this Manager does not know: move the key,
	// if it is still owner's, to a new etcd lease.
	id, err := m.newLease(ctx, ttl)
	if err != nil {
		return wrap(ctx, err, "Renew partition %d", p)
	}
	err = m.move(ctx, p, owner, grant{id, ttl})
	m.revoke(ctx, stale)
	if err != nil {
		if errors.Is(err, ratelimiter.ErrLeaseLost) {
			return lost
		}
		return wrap(ctx, err, "Renew partition %d", p)
	}
	return nil
}

// Release implements [ratelimiter.LeaseManager]. It deletes the key if owner
// holds it, then revokes the etcd lease it was on; an error revoking is
// ignored, as the lease then ends by itself.
func (m *Manager) Release(ctx context.Context, p int, owner string) error {
	if err := checkCall(ctx, "Release", p, owner); err != nil {
		return err
	}
	key := m.leaseKey(p)
	resp, err := m.client.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", owner)).
		Then(clientv3.OpGet(key), clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return wrap(ctx, err, "Release partition %d", p)
	}
	m.forget(p, owner)
	if resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			m.revoke(ctx, clientv3.LeaseID(kvs[0].Lease))
		}
	}
	return nil
}

// Announce implements [ratelimiter.LeaseManager]. The demand's TTL is
// rounded up to whole seconds (see the package doc) and must be at least
// 1 ms; its Want and its Held partitions must not be negative. The owner's
// etcd lease for its demand is kept alive from one announcement to the next
// with the same TTL. The demands come back sorted by owner.
func (m *Manager) Announce(ctx context.Context, d ratelimiter.Demand) ([]ratelimiter.Demand, error) {
	if err := ctx.Err(); err != nil {
		return nil, errorf("Announce owner %q: %w", d.Owner, err)
	}
	if d.Owner == "" {
		return nil, errorf("Announce: owner is empty")
	}
	ttl, err := seconds(fmt.Sprintf("Announce owner %q: demand TTL", d.Owner), d.TTL)
	if err != nil {
		return nil, err
	}
	if d.Want < 0 {
		return nil, errorf("Announce owner %q: Want %d is negative", d.Owner, d.Want)
	}
	if i := slices.IndexFunc(d.Held, func(p int) bool { return p < 0 }); i >= 0 {
		return nil, errorf("Announce owner %q: held partition %d is negative", d.Owner, d.Held[i])
	}

	m.mu.Lock()
	g, ok := m.demands[d.Owner]
	m.mu.Unlock()
	var old clientv3.LeaseID
	if ok && g.ttl == ttl {
		_, err := m.client.KeepAliveOnce(ctx, g.id)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			ok = false
		} else if err != nil {
			return nil, wrap(ctx, err, "Announce owner %q", d.Owner)
		}
	} else if ok {
		old, ok = g.id, false
	}
	if !ok {
		id, err := m.newLease(ctx, ttl)
		if err != nil {
			return nil, wrap(ctx, err, "Announce owner %q", d.Owner)
		}
		g = grant{id, ttl}
	}
	resp, err := m.client.Txn(ctx).
		Then(
			clientv3.OpPut(m.demandKey(d.Owner), leasecall.EncodeDemand(d), clientv3.WithLease(g.id)),
			clientv3.OpGet(m.demandPrefix(), clientv3.WithPrefix()),
		).
		Commit()
	if err != nil {
		// The lease may or may not carry the demand now; keep it either
		// way, so that it ends when the demand does.
		return nil, wrap(ctx, err, "Announce owner %q", d.Owner)
	}
	m.mu.Lock()
	m.demands[d.Owner] = g
	m.mu.Unlock()
	m.revoke(ctx, old)

	kvs := resp.Responses[1].GetResponseRange().GetKvs()
	out := make([]ratelimiter.Demand, 0, len(kvs))
	for _, kv := range kvs {
		owner := strings.TrimPrefix(string(kv.Key), m.demandPrefix())
		dd, err := leasecall.DecodeDemand("ratelimiter/etcd", owner, string(kv.Value))
		if err != nil {
			return nil, err
		}
		out = append(out, dd)
	}
	slices.SortFunc(out, func(a, b ratelimiter.Demand) int { return strings.Compare(a.Owner, b.Owner) })
	return out, nil
}
