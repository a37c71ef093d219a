package leasestore_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// testCA writes a CA certificate, and a server certificate for 127.0.0.1
// that it signed, into dir: ca.pem, server.pem and server-key.pem.
func testCA(t *testing.T) (dir string) {
	t.Helper()
	dir = t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "leasestore test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string]*pem.Block{
		"ca.pem":         {Type: "CERTIFICATE", Bytes: caDER},
		"server.pem":     {Type: "CERTIFICATE", Bytes: srvDER},
		"server-key.pem": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// TestRedisTLS runs a private redis-server that serves TLS with a
// certificate of a private CA (and plain TCP beside it, for the test
// helper's readiness check): rediss:// with ?ca= and the password works;
// without the CA the certificate is refused, at Open.
func TestRedisTLS(t *testing.T) {
	certs := testCA(t)
	port := freePort(t)
	servicetest.StartRedis(t, "--requirepass", secret, "--tls-port", port,
		"--tls-cert-file", filepath.Join(certs, "server.pem"), "--tls-key-file", filepath.Join(certs, "server-key.pem"),
		"--tls-ca-cert-file", filepath.Join(certs, "ca.pem"), "--tls-auth-clients", "no")
	m, err := open(t, "rediss://:"+secret+"@127.0.0.1:"+port+"/2?ca="+filepath.Join(certs, "ca.pem"))
	if err != nil {
		t.Fatalf("rediss with the CA: %v", err)
	}
	checkWorks(t, m)
	_, err = open(t, "rediss://:"+secret+"@127.0.0.1:"+port)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("rediss without the CA: %v, want a certificate error", err)
	} else {
		noSecret(t, "Open's error", err.Error())
	}
}

// TestEtcdTLS runs a private etcd that serves TLS with a certificate of a
// private CA: etcds:// with ?ca= works; without the CA the certificate is
// refused, at Open, within the check's time.
func TestEtcdTLS(t *testing.T) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if servicetest.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	certs := testCA(t)
	client, peer := "https://127.0.0.1:"+freePort(t), "http://127.0.0.1:"+freePort(t)
	cmd := exec.Command(bin, "--name", "tls", "--data-dir", filepath.Join(t.TempDir(), "etcd"), "--log-level", "error",
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "tls="+peer,
		"--cert-file", filepath.Join(certs, "server.pem"), "--key-file", filepath.Join(certs, "server-key.pem"))
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	spec := "etcds://" + strings.TrimPrefix(client, "https://") + "?ca=" + filepath.Join(certs, "ca.pem")
	var m ratelimiter.LeaseManager
	for deadline := time.Now().Add(30 * time.Second); ; {
		if m, err = open(t, spec); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd over TLS did not answer within 30s: %v\n%s", err, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkWorks(t, m)
	_, err = open(t, "etcds://"+strings.TrimPrefix(client, "https://"))
	if err == nil || !strings.Contains(err.Error(), "TLS: tls: failed to verify certificate") {
		t.Errorf("etcds without the CA: %v, want the certificate's error", err)
	}
}
