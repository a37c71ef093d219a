// Package leasestore opens a lease store for a SharedResource from a
// command-line address, for the programs in cmd/: Redis, etcd or Azure Blob
// Storage (Azurite included), each with client settings that suit leases:
// calls that fail within a second when the store is down, rather than retry
// for long, since the SharedResource retries every round anyway.
//
// # Addresses
//
//	redis://[user][:password]@host:port[/db][?options]
//	rediss://...                         the same, over TLS
//	etcd://[user:password@]host:port      etcd over plain HTTP/2
//	etcds://[user:password@]host:port     etcd over TLS (etcd+https:// too)
//	https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS token]
//	http://127.0.0.1:10000/devstoreaccount1/CONTAINER   (Azurite)
//
// Redis addresses are read by go-redis's own ParseURL, so its query options
// (db, dial_timeout, skip_verify, ...) work as it documents them. The TLS
// forms verify the server's certificate against the system's roots, or
// against the PEM file that the query option ca=/path/to/ca.pem names. A
// blob container URL with a SAS token (sig=...) uses the token; one
// without uses Azurite's key for Azurite, a shared key from
// AZURE_STORAGE_KEY if set, and azidentity's DefaultAzureCredential
// otherwise.
//
// # Secrets
//
// Passwords and SAS tokens never reach a message: [Store.String] and every
// error of this package show the address through internal/redact.
package leasestore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	goredis "github.com/redis/go-redis/v9"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
	leaseblob "github.com/ratebatch/batcher/ratelimiter/azblob"
	leaseetcd "github.com/ratebatch/batcher/ratelimiter/etcd"
	leaseredis "github.com/ratebatch/batcher/ratelimiter/redis"
)

// Azurite's built-in development account.
const (
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Kinds are the stores Open knows.
var Kinds = []string{"redis", "etcd", "azblob"}

// Usage describes the address forms, for a flag's help.
const Usage = "redis://[user][:password]@host:port[/db] (rediss:// for TLS), " +
	"etcd://[user:password@]host:port (etcds:// for TLS), " +
	"or an Azure Blob Storage container URL (Azurite's http://127.0.0.1:10000/devstoreaccount1/leases, " +
	"or https://ACCOUNT.blob.core.windows.net/CONTAINER with a SAS token, $AZURE_STORAGE_KEY or an Azure identity); " +
	"the TLS forms take ?ca=FILE for a private CA"

// CheckTimeout bounds the check Open makes that the store answers.
const CheckTimeout = 5 * time.Second

// A Store is a lease store's address, parsed. Create one with [Parse]; the
// zero value is not usable.
type Store struct {
	// Kind is "redis", "etcd" or "azblob".
	Kind string

	spec  string
	redis *goredis.Options
	etcd  clientv3.Config // Endpoints, Username, Password, TLS
	blob  struct {
		url string
		sas bool
	}
}

// String returns the address as given, its secrets masked.
func (s *Store) String() string { return redact.String(s.spec) }

// errorf returns an error that starts with the store's (redacted) address.
func (s *Store) errorf(format string, a ...any) error {
	return redact.Error(fmt.Errorf("lease store %s: "+format, append([]any{s}, a...)...))
}

// Parse reads a store address (see the package doc for the forms). Its
// errors show the address with its secrets masked.
func Parse(spec string) (*Store, error) {
	s := &Store{spec: spec}
	u, err := url.Parse(spec)
	if err != nil || u.Host == "" {
		return nil, s.errorf("want %s", Usage)
	}
	q := u.Query()
	caFile := q.Get("ca")
	q.Del("ca")
	switch u.Scheme {
	case "redis", "rediss":
		s.Kind = "redis"
		u.RawQuery = q.Encode()
		o, err := goredis.ParseURL(u.String())
		if err != nil {
			return nil, s.errorf("%v", err)
		}
		if caFile != "" {
			if o.TLSConfig == nil {
				return nil, s.errorf("ca=%s is for rediss:// (TLS) only", caFile)
			}
			if o.TLSConfig.RootCAs, err = loadCA(caFile); err != nil {
				return nil, s.errorf("%v", err)
			}
		}
		// Fail within a second when the store is down: the SharedResource
		// retries every round anyway.
		o.DialTimeout, o.MaxRetries, o.ContextTimeoutEnabled = time.Second, -1, true
		s.redis = o
		return s, nil
	case "etcd", "etcds", "etcd+https":
		s.Kind = "etcd"
		if len(q) > 0 {
			return nil, s.errorf("unknown option %q; etcd addresses take only ca=FILE", firstKey(q))
		}
		if u.Path != "" && u.Path != "/" {
			return nil, s.errorf("an etcd address has no path; want etcd://[user:password@]host:port")
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return nil, s.errorf("want host:port: %v", err)
		}
		scheme := "http://"
		if u.Scheme != "etcd" {
			scheme = "https://"
			s.etcd.TLS = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
			if caFile != "" {
				if s.etcd.TLS.RootCAs, err = loadCA(caFile); err != nil {
					return nil, s.errorf("%v", err)
				}
			}
		} else if caFile != "" {
			return nil, s.errorf("ca=%s is for etcds:// (TLS) only", caFile)
		}
		s.etcd.Endpoints = []string{scheme + u.Host}
		if u.User != nil {
			s.etcd.Username = u.User.Username()
			s.etcd.Password, _ = u.User.Password()
			if s.etcd.Username == "" || s.etcd.Password == "" {
				return nil, s.errorf("etcd needs both a user name and a password, as etcd://user:password@host:port")
			}
		}
		return s, nil
	case "http", "https":
		s.Kind = "azblob"
		if strings.Trim(u.Path, "/") == "" {
			return nil, s.errorf("a blob store URL must name the container, such as https://account.blob.core.windows.net/leases")
		}
		if caFile != "" {
			return nil, s.errorf("ca= is for redis and etcd addresses only")
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawPath = ""
		s.blob.url = u.String()
		s.blob.sas = q.Has("sig")
		return s, nil
	}
	return nil, s.errorf("unknown scheme %q; want redis, rediss, etcd, etcds, or http(s) for Azure Blob Storage", u.Scheme)
}

func firstKey(q url.Values) string {
	for k := range q {
		return k
	}
	return ""
}

func loadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca: %s holds no PEM certificate", file)
	}
	return pool, nil
}

// Open returns a lease manager on the store, its names in the store
// starting with prefix, and a function that closes its client. It first
// checks, within [CheckTimeout], that the store answers and accepts the
// credentials, so that a wrong address or password is an error now rather
// than a limiter that never gets any shared capacity. Its errors start with
// "lease store " and the redacted address.
func (s *Store) Open(ctx context.Context, prefix string) (ratelimiter.LeaseManager, func(), error) {
	cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	switch s.Kind {
	case "redis":
		goredis.SetLogger(quiet{}) // failed dials reach the limiter's error events
		c := goredis.NewClient(s.redis)
		if err := c.Ping(cctx).Err(); err != nil {
			c.Close()
			return nil, nil, s.checkError(cctx, err)
		}
		m, err := leaseredis.New(c, prefix)
		if err != nil {
			c.Close()
			return nil, nil, s.errorf("%w", err)
		}
		return m, func() { c.Close() }, nil
	case "etcd":
		// Reconnect within a second of the server's return: gRPC's
		// default back-off between attempts grows to two minutes.
		cfg := s.etcd
		cfg.DialTimeout, cfg.Context, cfg.Logger = 2*time.Second, ctx, zap.NewNop()
		cfg.DialOptions = []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})}
		c, err := clientv3.New(cfg)
		if err != nil {
			return nil, nil, s.checkError(cctx, err)
		}
		if _, err := c.Get(cctx, prefix+"/", clientv3.WithCountOnly(), clientv3.WithPrefix()); err != nil {
			c.Close()
			if terr := s.tlsError(ctx); terr != nil {
				// gRPC only says it had no connection: say why.
				return nil, nil, s.errorf("TLS: %w", terr)
			}
			return nil, nil, s.checkError(cctx, err)
		}
		m, err := leaseetcd.New(c, prefix)
		if err != nil {
			c.Close()
			return nil, nil, s.errorf("%w", err)
		}
		return m, func() { c.Close() }, nil
	case "azblob":
		c, err := s.blobClient()
		if err != nil {
			return nil, nil, s.errorf("%w", err)
		}
		// The container may not exist yet (Provision creates it): any
		// answer but a refusal will do.
		if _, err := c.GetProperties(cctx, nil); err != nil && !bloberror.HasCode(err, bloberror.ContainerNotFound) {
			return nil, nil, s.checkError(cctx, err)
		}
		m, err := leaseblob.New(c, &leaseblob.Options{Prefix: prefix + "/"})
		if err != nil {
			return nil, nil, s.errorf("%w", err)
		}
		return m, func() {}, nil
	}
	return nil, nil, s.errorf("unknown kind %q; want one of %s", s.Kind, strings.Join(Kinds, ", "))
}

// blobClient returns a client of the container with the credential the
// address calls for.
func (s *Store) blobClient() (*container.Client, error) {
	// Fail a call soon when the store is down, rather than retry it for
	// seconds.
	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		Retry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 50 * time.Millisecond, MaxRetryDelay: 200 * time.Millisecond, TryTimeout: time.Second},
	}}
	u, err := url.Parse(s.blob.url)
	if err != nil {
		return nil, err
	}
	switch {
	case s.blob.sas:
		return container.NewClientWithNoCredential(s.blob.url, opts)
	case strings.HasPrefix(u.Path, "/"+AzuriteAccount+"/"):
		cred, err := container.NewSharedKeyCredential(AzuriteAccount, AzuriteKey)
		if err != nil {
			return nil, err
		}
		return container.NewClientWithSharedKeyCredential(s.blob.url, cred, opts)
	case os.Getenv("AZURE_STORAGE_KEY") != "":
		account, _, _ := strings.Cut(u.Hostname(), ".")
		cred, err := container.NewSharedKeyCredential(account, os.Getenv("AZURE_STORAGE_KEY"))
		if err != nil {
			return nil, fmt.Errorf("$AZURE_STORAGE_KEY: %w", err)
		}
		return container.NewClientWithSharedKeyCredential(s.blob.url, cred, opts)
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, err
	}
	return container.NewClient(s.blob.url, cred, opts)
}

// tlsError returns the error of a TLS handshake with the etcd endpoint,
// if it uses TLS and the handshake fails (a certificate the CA did not
// sign, say); nil otherwise.
func (s *Store) tlsError(ctx context.Context) error {
	if s.etcd.TLS == nil {
		return nil
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: s.etcd.TLS.Clone()}
	d.Config.NextProtos = []string{"h2"}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(hctx, "tcp", strings.TrimPrefix(s.etcd.Endpoints[0], "https://"))
	if err != nil {
		var cv *tls.CertificateVerificationError
		if errors.As(err, &cv) || strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:") {
			return err
		}
		return nil
	}
	c.Close()
	return nil
}

// checkError says why the check failed: refused credentials, no answer in
// time, or the client's own error.
func (s *Store) checkError(ctx context.Context, err error) error {
	msg := err.Error()
	var re *azcore.ResponseError
	switch {
	case strings.Contains(msg, "WRONGPASS"), strings.Contains(msg, "NOAUTH"),
		errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.As(err, &re) && (re.StatusCode == 401 || re.StatusCode == 403):
		return s.errorf("refused the credentials: %w", err)
	case ctx.Err() != nil:
		return s.errorf("no answer within %v: %w", CheckTimeout, err)
	case errors.Is(err, context.DeadlineExceeded):
		return s.errorf("unreachable: no connection in time: %w", err)
	}
	return s.errorf("unreachable: %w", err)
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}
