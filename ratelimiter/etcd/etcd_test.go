package etcd_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ratebatch/batcher/internal/leasetest"
	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/ratelimiter/etcd"
)

// newClient returns a client of the test server, closed when t ends.
func newClient(t testing.TB) *clientv3.Client {
	t.Helper()
	url := servicetest.Need(t, servicetest.Etcd)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client for %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newPrefix returns a prefix no other test uses, and deletes its keys when t
// ends.
func newPrefix(t testing.TB, c *clientv3.Client) string {
	t.Helper()
	prefix := "/batcher-test/" + rand.Text()[:12]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Delete(ctx, prefix+"/", clientv3.WithPrefix()); err != nil {
			t.Errorf("deleting the keys of %s: %v", prefix, err)
		}
	})
	return prefix
}

func newManager(t testing.TB, c *clientv3.Client, prefix string) *etcd.Manager {
	t.Helper()
	m, err := etcd.New(c, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConformance(t *testing.T) {
	c := newClient(t)
	var prefixes sync.Map // *etcd.Manager -> prefix
	leasetest.Run(t, func(t *testing.T) ratelimiter.LeaseManager {
		prefix := newPrefix(t, c)
		m := newManager(t, c, prefix)
		prefixes.Store(m, prefix)
		return m
	}, leasetest.Options{
		// etcd's minimum TTL with its default election timeout. Its
		// leases end when the leader, checking twice a second, revokes
		// them: 2.2-2.6 s after a 2 s grant here.
		MinDuration: 2 * time.Second,
		Grace:       1500 * time.Millisecond,
		// Another process: its own client, the same prefix.
		Peer: func(t *testing.T, m ratelimiter.LeaseManager) ratelimiter.LeaseManager {
			prefix, _ := prefixes.Load(m)
			return newManager(t, newClient(t), prefix.(string))
		},
	})
}

// leaseOf returns the etcd lease that partition p's key is on.
func leaseOf(t *testing.T, c *clientv3.Client, prefix string, p string) clientv3.LeaseID {
	t.Helper()
	resp, err := c.Get(t.Context(), prefix+"/lease/"+p)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("key of partition %s: %d keys", p, len(resp.Kvs))
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// TestRevokedBehindBack revokes the etcd lease under a partition lease, as
// an operator or a lost etcd member would: the holder's Renew says the lease
// is lost, and another owner takes it.
func TestRevokedBehindBack(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	m := newManager(t, c, prefix)
	ctx := t.Context()
	if err := m.Provision(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := m.Acquire(ctx, 0, "owner-a", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(ctx, leaseOf(t, c, prefix, "0")); err != nil {
		t.Fatal(err)
	}
	if err := m.Renew(ctx, 0, "owner-a", 10*time.Second); !errors.Is(err, ratelimiter.ErrLeaseLost) {
		t.Fatalf("Renew after its lease was revoked = %v, want ErrLeaseLost", err)
	}
	if err := m.Acquire(ctx, 0, "owner-b", 10*time.Second); err != nil {
		t.Fatalf("Acquire by another owner after the lease was revoked: %v", err)
	}
}

// TestDeletedBehindBack deletes a partition's key while its etcd lease
// lives: the holder's Renew must not keep the lease alive for nothing.
func TestDeletedBehindBack(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	m := newManager(t, c, prefix)
	ctx := t.Context()
	if err := m.Provision(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.Acquire(ctx, 0, "owner-a", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	id := leaseOf(t, c, prefix, "0")
	if _, err := c.Delete(ctx, prefix+"/lease/0"); err != nil {
		t.Fatal(err)
	}
	if err := m.Renew(ctx, 0, "owner-a", 10*time.Second); !errors.Is(err, ratelimiter.ErrLeaseLost) {
		t.Fatalf("Renew after its key was deleted = %v, want ErrLeaseLost", err)
	}
	// The etcd lease the key left is kept as a spare, and the next Acquire
	// with the same duration uses it rather than granting another.
	if err := m.Acquire(ctx, 0, "owner-b", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := leaseOf(t, c, prefix, "0"); got != id {
		t.Errorf("Acquire put the key on etcd lease %x, want the spare %x", got, id)
	}
}

// TestSpareLease checks that failed Acquires leave at most one etcd lease
// with no key behind, and that a successful one uses it.
func TestSpareLease(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a, b := newManager(t, c, prefix), newManager(t, c, prefix)
	ctx := t.Context()
	if err := a.Provision(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := a.Acquire(ctx, 0, "owner-a", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	before, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := b.Acquire(ctx, 0, "owner-b", 10*time.Second); !errors.Is(err, ratelimiter.ErrLeaseHeld) {
			t.Fatalf("Acquire of a held partition = %v, want ErrLeaseHeld", err)
		}
	}
	after, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Other tests share the server, so count only the leases that appeared.
	var added []clientv3.LeaseID
	for _, l := range after.Leases {
		if !slices.ContainsFunc(before.Leases, func(o clientv3.LeaseStatus) bool { return o.ID == l.ID }) {
			added = append(added, l.ID)
		}
	}
	if err := b.Acquire(ctx, 1, "owner-b", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	got := leaseOf(t, c, prefix, "1")
	if !slices.Contains(added, got) {
		t.Errorf("Acquire put the key on etcd lease %x, want the spare, one of %x", got, added)
	}
	t.Logf("5 failed Acquires left %d new etcd leases (other tests may add some)", len(added))
}

// TestTwoManagersOneOwner has an owner's leases renewed by a Manager that
// did not acquire them, then by the one that did: both must work, as the
// key's value, not the Manager's memory, says who holds it.
func TestTwoManagersOneOwner(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	m1, m2 := newManager(t, c, prefix), newManager(t, newClient(t), prefix)
	ctx := t.Context()
	if err := m1.Provision(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := m1.Acquire(ctx, 0, "owner-a", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for i, m := range []*etcd.Manager{m2, m1, m2, m1} {
		if err := m.Renew(ctx, 0, "owner-a", 10*time.Second); err != nil {
			t.Fatalf("Renew %d: %v", i, err)
		}
	}
	if err := m2.Release(ctx, 0, "owner-a"); err != nil {
		t.Fatal(err)
	}
	if err := m1.Renew(ctx, 0, "owner-a", 10*time.Second); !errors.Is(err, ratelimiter.ErrLeaseLost) {
		t.Fatalf("Renew after the other Manager released = %v, want ErrLeaseLost", err)
	}
}

// TestGrantedTTL records what etcd makes of short durations: it rounds up to
// whole seconds and raises them to its minimum.
func TestGrantedTTL(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	m := newManager(t, c, prefix)
	ctx := t.Context()
	if err := m.Provision(ctx, 3); err != nil {
		t.Fatal(err)
	}
	for p, d := range []time.Duration{time.Millisecond, 1500 * time.Millisecond, 3 * time.Second} {
		if err := m.Acquire(ctx, p, "owner-a", d); err != nil {
			t.Fatal(err)
		}
		ttl, err := c.TimeToLive(ctx, leaseOf(t, c, prefix, string(rune('0'+p))))
		if err != nil {
			t.Fatal(err)
		}
		if time.Duration(ttl.GrantedTTL)*time.Second < d {
			t.Errorf("a %v lease was granted %ds", d, ttl.GrantedTTL)
		}
		t.Logf("a %v lease was granted %ds", d, ttl.GrantedTTL)
	}
}

func TestInvalid(t *testing.T) {
	if _, err := etcd.New(nil, "/"); err == nil || !strings.Contains(err.Error(), "client is nil") || !strings.Contains(err.Error(), `prefix "/" is empty`) {
		t.Errorf(`New(nil, "/") = %v, want errors naming the client and the prefix`, err)
	}
	// A client that never dials: validation comes before any call.
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, err := etcd.New(c, "p")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{m.Provision(ctx, -2), "partition count -2 is negative"},
		{m.Acquire(ctx, -1, "a", time.Second), "partition -1 is negative"},
		{m.Acquire(ctx, 0, "", time.Second), "owner is empty"},
		{m.Acquire(ctx, 0, "a", 999*time.Microsecond), "lease duration 999µs is under 1ms"},
		{m.Renew(ctx, 0, "a", 0), "lease duration 0s is under 1ms"},
		{m.Release(ctx, -3, "a"), "partition -3 is negative"},
		{announceErr(m, ratelimiter.Demand{Owner: "a", Want: 1, TTL: time.Microsecond}), "demand TTL 1µs is under 1ms"},
		{announceErr(m, ratelimiter.Demand{Owner: "a", Want: -1, TTL: time.Second}), "Want -1 is negative"},
		{announceErr(m, ratelimiter.Demand{Owner: "a", Held: []int{1, -4}, TTL: time.Second}), "held partition -4 is negative"},
		{announceErr(m, ratelimiter.Demand{Want: 1, TTL: time.Second}), "owner is empty"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("got error %v, want one containing %q", tc.err, tc.want)
		}
	}
}

func announceErr(m *etcd.Manager, d ratelimiter.Demand) error {
	_, err := m.Announce(context.Background(), d)
	return err
}

func benchManager(b *testing.B) (*etcd.Manager, context.Context) {
	c := newClient(b)
	m := newManager(b, c, newPrefix(b, c))
	ctx := context.Background()
	if err := m.Provision(ctx, 1); err != nil {
		b.Fatal(err)
	}
	return m, ctx
}

// BenchmarkRenew measures a renewal with the same duration: a keep-alive and
// a read.
func BenchmarkRenew(b *testing.B) {
	m, ctx := benchManager(b)
	if err := m.Acquire(ctx, 0, "a", 10*time.Second); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := m.Renew(ctx, 0, "a", 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcquireRelease measures taking a free partition and giving it up.
func BenchmarkAcquireRelease(b *testing.B) {
	m, ctx := benchManager(b)
	for b.Loop() {
		if err := m.Acquire(ctx, 0, "a", 10*time.Second); err != nil {
			b.Fatal(err)
		}
		if err := m.Release(ctx, 0, "a"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAnnounce measures an announcement with the same TTL as the last.
func BenchmarkAnnounce(b *testing.B) {
	m, ctx := benchManager(b)
	for b.Loop() {
		if _, err := m.Announce(ctx, ratelimiter.Demand{Owner: "a", Want: 3, Held: []int{1, 2, 3}, TTL: 10 * time.Second}); err != nil {
			b.Fatal(err)
		}
	}
}

// silentServer returns the address of a TCP server that accepts connections
// and never answers, as a hung or partitioned etcd member does.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { io.Copy(io.Discard, c) })
		}
	})
	return ln.Addr().String()
}

// TestHungServer checks that every call to a server that never answers
// returns with ctx's error soon after ctx ends, by deadline or by cancel.
func TestHungServer(t *testing.T) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{silentServer(t)}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := newManager(t, c, "/hung")
	calls := map[string]func(ctx context.Context) error{
		"Provision": func(ctx context.Context) error { return m.Provision(ctx, 1) },
		"Acquire":   func(ctx context.Context) error { return m.Acquire(ctx, 0, "a", time.Second) },
		"Renew":     func(ctx context.Context) error { return m.Renew(ctx, 0, "a", time.Second) },
		"Release":   func(ctx context.Context) error { return m.Release(ctx, 0, "a") },
		"Announce": func(ctx context.Context) error {
			_, err := m.Announce(ctx, ratelimiter.Demand{Owner: "a", TTL: time.Second})
			return err
		},
	}
	const after = 100 * time.Millisecond
	for name, call := range calls {
		for _, how := range []string{"deadline", "cancel"} {
			ctx, cancel := context.WithTimeout(t.Context(), after)
			want := context.DeadlineExceeded
			if how == "cancel" {
				ctx, cancel = context.WithCancel(t.Context())
				time.AfterFunc(after, cancel)
				want = context.Canceled
			}
			start := time.Now()
			err := call(ctx)
			took := time.Since(start)
			cancel()
			if !errors.Is(err, want) {
				t.Errorf("%s, ctx ended by %s: %v, want an error wrapping %v", name, how, err, want)
			}
			if took > after+time.Second {
				t.Errorf("%s, ctx ended by %s after %v: returned after %v", name, how, after, took)
			}
		}
	}
}
