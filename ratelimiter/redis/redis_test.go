package redis_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/leasetest"
	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/ratelimiter"
	"github.com/ratebatch/batcher/ratelimiter/redis"
)

// newClient returns a client of the test server, closed when t ends.
func newClient(t *testing.T) *goredis.Client {
	t.Helper()
	addr := servicetest.Need(t, servicetest.Redis)
	c := goredis.NewClient(&goredis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// newPrefix returns a prefix no other test uses, and deletes its keys when t
// ends.
func newPrefix(t *testing.T, c *goredis.Client) string {
	t.Helper()
	prefix := "batcher-test-" + rand.Text()[:12]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var keys []string
		it := c.Scan(ctx, 0, "{"+prefix+"}:*", 100).Iterator()
		for it.Next(ctx) {
			keys = append(keys, it.Val())
		}
		err := it.Err()
		if err == nil && len(keys) > 0 {
			err = c.Del(ctx, keys...).Err()
		}
		if err != nil {
			t.Errorf("deleting the keys of %s: %v", prefix, err)
		}
	})
	return prefix
}

func newManager(t *testing.T, c *goredis.Client, prefix string) *redis.Manager {
	t.Helper()
	m, err := redis.New(c, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConformance(t *testing.T) {
	c := newClient(t)
	var prefixes sync.Map // *redis.Manager -> prefix
	leasetest.Run(t, func(t *testing.T) ratelimiter.LeaseManager {
		prefix := newPrefix(t, c)
		m := newManager(t, c, prefix)
		prefixes.Store(m, prefix)
		return m
	}, leasetest.Options{
		// Redis expires keys to the millisecond; the grace is for the
		// test's own stalls on a loaded machine.
		MinDuration: time.Second,
		Grace:       500 * time.Millisecond,
		// Another process: its own client, the same prefix.
		Peer: func(t *testing.T, m ratelimiter.LeaseManager) ratelimiter.LeaseManager {
			prefix, _ := prefixes.Load(m)
			return newManager(t, newClient(t), prefix.(string))
		},
	})
}

// TestLeaseKeyExpires checks that a lease ends by itself in Redis, with no
// call from anyone: the key carries the lease's expiry.
func TestLeaseKeyExpires(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	m := newManager(t, c, prefix)
	ctx := t.Context()
	if err := m.Provision(ctx, 1); err != nil {
		t.Fatal(err)
	}
	const d = 300 * time.Millisecond
	start := time.Now()
	if err := m.Acquire(ctx, 0, "owner-a", d); err != nil {
		t.Fatal(err)
	}
	key := "{" + prefix + "}:lease:0"
	if owner, err := c.Get(ctx, key).Result(); err != nil || owner != "owner-a" {
		t.Fatalf("GET %s = %q, %v; want owner-a", key, owner, err)
	}
	if ttl, err := c.PTTL(ctx, key).Result(); err != nil || ttl <= 0 || ttl > d {
		t.Fatalf("PTTL %s = %v, %v; want in (0, %v]", key, ttl, err, d)
	}
	for {
		n, err := c.Exists(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Since(start) > d+time.Second {
			t.Fatalf("%s still there %v after a %v lease", key, time.Since(start), d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the key of a %v lease was gone %v after Acquire", d, time.Since(start))
	if err := m.Renew(ctx, 0, "owner-a", d); !errors.Is(err, ratelimiter.ErrLeaseLost) {
		t.Fatalf("Renew after the key expired = %v, want ErrLeaseLost", err)
	}
}

// TestDemandsKeyExpires checks that the demands' hash goes when its last
// demand ends, so a resource nobody uses leaves no demands behind.
func TestDemandsKeyExpires(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	m := newManager(t, c, prefix)
	ctx := t.Context()
	key := "{" + prefix + "}:demands"
	if _, err := m.Announce(ctx, ratelimiter.Demand{Owner: "a", Want: 1, TTL: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Announce(ctx, ratelimiter.Demand{Owner: "b", Want: 1, TTL: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// The shorter demand must not shorten the hash's life.
	if ttl, err := c.PTTL(ctx, key).Result(); err != nil || ttl < time.Second {
		t.Fatalf("PTTL %s = %v, %v; want over 1s", key, ttl, err)
	}
	if _, err := m.Announce(ctx, ratelimiter.Demand{Owner: "a", Want: 1, TTL: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	if n, err := c.Exists(ctx, key).Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS %s = %d, %v after every demand ended; want 0", key, n, err)
	}
}

func TestInvalid(t *testing.T) {
	if _, err := redis.New(nil, ""); err == nil || !strings.Contains(err.Error(), "client is nil") || !strings.Contains(err.Error(), "prefix is empty") {
		t.Errorf("New(nil, \"\") = %v, want errors naming the client and the prefix", err)
	}
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer c.Close()
	if _, err := redis.New(c, "a{b}"); err == nil || !strings.Contains(err.Error(), `"a{b}"`) {
		t.Errorf("New(c, \"a{b}\") = %v, want an error naming the prefix", err)
	}
	m, err := redis.New(c, "p")
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
		{m.Acquire(ctx, 0, "a", 999*time.Microsecond), "lease duration 999µs is under the 1ms"},
		{m.Renew(ctx, 0, "a", 0), "lease duration 0s is under the 1ms"},
		{m.Release(ctx, -3, "a"), "partition -3 is negative"},
		{announceErr(m, ratelimiter.Demand{Owner: "a", Want: 1, TTL: time.Microsecond}), "demand TTL 1µs is under the 1ms"},
		{announceErr(m, ratelimiter.Demand{Owner: "a", Want: -1, TTL: time.Second}), "Want -1 is negative"},
		{announceErr(m, ratelimiter.Demand{Owner: "a", Held: []int{1, -4}, TTL: time.Second}), "held partition -4 is negative"},
		{announceErr(m, ratelimiter.Demand{Want: 1, TTL: time.Second}), "owner is empty"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("got error %v, want one containing %q", tc.err, tc.want)
		}
	}
}

func announceErr(m *redis.Manager, d ratelimiter.Demand) error {
	_, err := m.Announce(context.Background(), d)
	return err
}

// BenchmarkRenew measures one round trip of a lease call.
func BenchmarkRenew(b *testing.B) {
	addr := servicetest.Need(b, servicetest.Redis)
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	defer c.Close()
	prefix := "batcher-bench-" + rand.Text()[:12]
	m, err := redis.New(c, prefix)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	defer c.Del(ctx, "{"+prefix+"}:partitions", "{"+prefix+"}:lease:0")
	if err := m.Provision(ctx, 1); err != nil {
		b.Fatal(err)
	}
	if err := m.Acquire(ctx, 0, "a", 10*time.Second); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := m.Renew(ctx, 0, "a", 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAnnounce measures Announce with 10 owners' demands in the hash.
func BenchmarkAnnounce(b *testing.B) {
	addr := servicetest.Need(b, servicetest.Redis)
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	defer c.Close()
	prefix := "batcher-bench-" + rand.Text()[:12]
	m, err := redis.New(c, prefix)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	defer c.Del(ctx, "{"+prefix+"}:demands")
	for i := range 10 {
		d := ratelimiter.Demand{Owner: string(rune('a' + i)), Want: 3, Held: []int{i, i + 10}, TTL: 10 * time.Second}
		if _, err := m.Announce(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, err := m.Announce(ctx, ratelimiter.Demand{Owner: "a", Want: 3, Held: []int{1, 2, 3}, TTL: 10 * time.Second}); err != nil {
			b.Fatal(err)
		}
	}
}

// silentServer returns the address of a TCP server that accepts connections
// and never answers, as a hung or partitioned Redis does.
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

// TestHungServer checks how calls to a server that never answers end. With
// ContextTimeoutEnabled, go-redis ends a call at ctx's deadline; a ctx
// cancelled without one is only noticed at the client's ReadTimeout (see the
// package doc). Either way the error wraps ctx's.
func TestHungServer(t *testing.T) {
	const readTimeout = 500 * time.Millisecond
	c := goredis.NewClient(&goredis.Options{
		Addr:                  silentServer(t),
		ContextTimeoutEnabled: true,
		ReadTimeout:           readTimeout,
		MaxRetries:            -1,
	})
	defer c.Close()
	m := newManager(t, c, "hung")
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
			want, limit := context.DeadlineExceeded, after+300*time.Millisecond
			if how == "cancel" {
				ctx, cancel = context.WithCancel(t.Context())
				time.AfterFunc(after, cancel)
				want, limit = context.Canceled, readTimeout+300*time.Millisecond
			}
			start := time.Now()
			err := call(ctx)
			took := time.Since(start)
			cancel()
			if !errors.Is(err, want) {
				t.Errorf("%s, ctx ended by %s: %v, want an error wrapping %v", name, how, err, want)
			}
			if took > limit {
				t.Errorf("%s, ctx ended by %s after %v: returned after %v, want within %v", name, how, after, took, limit)
			}
			t.Logf("%s, ctx ended by %s after %v: returned after %v", name, how, after, took)
		}
	}
}
