package leasestore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ratebatch/batcher/internal/leasestore"
	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/internal/sharedsim"
	"github.com/ratebatch/batcher/ratelimiter"
)

// secret is the password and SAS signature of the addresses below: no
// message may show it.
const secret = "Pw0rdLeaseStoreXyz"

func noSecret(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, secret) {
		t.Errorf("%s shows the secret: %s", what, s)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct{ spec, kind, str string }{
		{"redis://127.0.0.1:6379", "redis", "redis://127.0.0.1:6379"},
		{"redis://:" + secret + "@127.0.0.1:6379/2", "redis", "redis://:REDACTED@127.0.0.1:6379/2"},
		{"rediss://user:" + secret + "@cache.example:6380?dial_timeout=3s", "redis", "rediss://user:REDACTED@cache.example:6380?dial_timeout=3s"},
		{"etcd://127.0.0.1:2379", "etcd", "etcd://127.0.0.1:2379"},
		{"etcd://root:" + secret + "@127.0.0.1:2379", "etcd", "etcd://root:REDACTED@127.0.0.1:2379"},
		{"etcds://etcd.example:2379", "etcd", "etcds://etcd.example:2379"},
		{"etcd+https://etcd.example:2379", "etcd", "etcd+https://etcd.example:2379"},
		{"http://127.0.0.1:10000/devstoreaccount1/leases/", "azblob", "http://127.0.0.1:10000/devstoreaccount1/leases/"},
		{"https://acct.blob.core.windows.net/leases?sv=2023-11-03&sp=rwdl&sig=" + secret, "azblob", "https://acct.blob.core.windows.net/leases?sv=REDACTED&sp=REDACTED&sig=REDACTED"},
	} {
		s, err := leasestore.Parse(tc.spec)
		if err != nil || s.Kind != tc.kind || s.String() != tc.str {
			t.Errorf("Parse(%q) = %v, %v; want kind %q, shown as %q", tc.spec, s, err, tc.kind, tc.str)
		}
	}
	for _, tc := range []struct{ spec, err string }{
		{"https://acct.blob.core.windows.net/", "must name the container"},
		{"mongo://x:1", `unknown scheme "mongo"`},
		{"127.0.0.1:6379", "want redis://"},
		{"redis://:" + secret + "@127.0.0.1:6379/x", "lease store redis://:REDACTED@127.0.0.1:6379/x: redis: invalid database number"},
		{"redis://:" + secret + "@127.0.0.1:6379?bogus=1", "lease store redis://:REDACTED@127.0.0.1:6379?bogus=1: redis: unexpected option: bogus"},
		{"redis://:" + secret + "@127.0.0.1:6379?ca=/x.pem", "ca=/x.pem is for rediss://"},
		{"rediss://:" + secret + "@127.0.0.1:6379?ca=/nonexistent.pem", "ca: open /nonexistent.pem"},
		{"etcd://root@127.0.0.1:2379", "needs both a user name and a password"},
		{"etcd://root:" + secret + "@127.0.0.1", "want host:port"},
		{"etcd://root:" + secret + "@127.0.0.1:2379/x", "no path"},
		{"etcd://root:" + secret + "@127.0.0.1:2379?x=1", `unknown option "x"`},
		{"redis://:" + secret + "@127.0.0.1:port", "lease store redis://:REDACTED@127.0.0.1:port: want"},
	} {
		_, err := leasestore.Parse(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", tc.spec, err, tc.err)
			continue
		}
		noSecret(t, "Parse's error", err.Error())
	}
}

func open(t *testing.T, spec string) (ratelimiter.LeaseManager, error) {
	t.Helper()
	s, err := leasestore.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	m, closeStore, err := s.Open(t.Context(), "leasestore-test")
	if err == nil {
		t.Cleanup(closeStore)
	}
	return m, err
}

// TestUnreachable opens stores nobody listens for: each is an error within
// a few seconds, naming the store with its secret masked.
func TestUnreachable(t *testing.T) {
	for _, spec := range []string{
		"redis://:" + secret + "@127.0.0.1:1",
		"rediss://u:" + secret + "@127.0.0.1:1/3",
		"etcd://root:" + secret + "@127.0.0.1:1",
		"http://127.0.0.1:1/devstoreaccount1/leases",
		"http://127.0.0.1:1/acct/leases?sv=2023-11-03&sp=rwdl&sig=" + secret,
	} {
		start := time.Now()
		_, err := open(t, spec)
		d := time.Since(start)
		if err == nil {
			t.Errorf("Open(%s) succeeded", spec)
			continue
		}
		noSecret(t, "Open's error", err.Error())
		s, _ := leasestore.Parse(spec)
		if !strings.HasPrefix(err.Error(), "lease store "+s.String()+": ") {
			t.Errorf("Open(%s) = %v; want it to start with the store's address, redacted", s, err)
		}
		if d > leasestore.CheckTimeout+2*time.Second {
			t.Errorf("Open(%s) took %v", s, d)
		}
		t.Logf("%v: %v", d.Round(time.Millisecond), err)
	}
}

// checkWorks makes calls a SharedResource makes.
func checkWorks(t *testing.T, m ratelimiter.LeaseManager) {
	t.Helper()
	ctx := t.Context()
	owner := "owner-" + t.Name()
	if err := m.Provision(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := m.Acquire(ctx, 1, owner, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.Renew(ctx, 1, owner, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Announce(ctx, ratelimiter.Demand{Owner: owner, Want: 1, Held: []int{1}, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, 1, owner); err != nil {
		t.Fatal(err)
	}
}

// TestRedisPassword runs a private redis-server with requirepass: the right
// password works; a wrong or missing one is a clear error at Open, the
// password masked.
func TestRedisPassword(t *testing.T) {
	srv := servicetest.StartRedis(t, "--requirepass", secret)
	m, err := open(t, "redis://:"+secret+"@"+srv.Addr()+"/1")
	if err != nil {
		t.Fatalf("the right password: %v", err)
	}
	checkWorks(t, m)
	for _, spec := range []string{
		"redis://:wrong" + secret + "@" + srv.Addr(),
		"redis://default:wrong" + secret + "@" + srv.Addr(),
		"redis://" + srv.Addr(),
	} {
		_, err := open(t, spec)
		if err == nil {
			t.Errorf("Open(%s) succeeded", spec)
			continue
		}
		noSecret(t, "Open's error", err.Error())
		s, _ := leasestore.Parse(spec)
		if want := "lease store " + s.String() + ": refused the credentials: "; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Open(%s) = %v; want it to start %q", s, err, want)
		}
	}
}

// TestRedisACLUser runs a private redis-server with an ACL user: the
// redis://user:password@ form works.
func TestRedisACLUser(t *testing.T) {
	srv := servicetest.StartRedis(t, "--user", "loader", "on", ">"+secret, "~*", "&*", "+@all")
	m, err := open(t, "redis://loader:"+secret+"@"+srv.Addr())
	if err != nil {
		t.Fatalf("the right user and password: %v", err)
	}
	checkWorks(t, m)
	if _, err := open(t, "redis://loader:x"+secret+"@"+srv.Addr()); err == nil || !strings.Contains(err.Error(), "refused the credentials") {
		t.Errorf("a wrong password: %v", err)
	} else {
		noSecret(t, "Open's error", err.Error())
	}
}

// TestEtcdAuth runs a private etcd with authentication enabled: a user
// with the right password works; a wrong password, or none, is a clear
// error at Open, the password masked.
func TestEtcdAuth(t *testing.T) {
	srv := startEtcd(t)
	host := strings.TrimPrefix(srv.Addr, "http://")
	// Enable authentication, as an operator would: a root user and role,
	// and a user for the loaders with a role on their prefix.
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	steps := []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "root-"+secret); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.RoleAdd(ctx, "loaders"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "loaders", "leasestore-test", clientv3.GetPrefixRangeEnd("leasestore-test"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserAdd(ctx, "loader", secret); return err },
		func() error { _, err := c.UserGrantRole(ctx, "loader", "loaders"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	}
	for i, f := range steps {
		if err := f(); err != nil {
			t.Fatalf("enabling auth, step %d: %v", i, err)
		}
	}
	c.Close()

	m, err := open(t, "etcd://loader:"+secret+"@"+host)
	if err != nil {
		t.Fatalf("the right password: %v", err)
	}
	checkWorks(t, m)
	for _, spec := range []string{
		"etcd://loader:wrong" + secret + "@" + host,
		"etcd://" + host,
	} {
		_, err := open(t, spec)
		if err == nil {
			t.Errorf("Open(%s) succeeded", spec)
			continue
		}
		noSecret(t, "Open's error", err.Error())
		s, _ := leasestore.Parse(spec)
		if want := "lease store " + s.String() + ": refused the credentials: "; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Open(%s) = %v; want it to start %q", s, err, want)
		}
	}
}

func startEtcd(t *testing.T) *sharedsim.Server {
	t.Helper()
	srv, err := sharedsim.StartServer("etcd", t.TempDir(), "")
	if err != nil {
		if servicetest.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("stopping etcd: %v", err)
		}
	})
	return srv
}
