// Package leasestore opens a lease store for a SharedResource from a
// command-line address, for the programs in cmd/: Redis, etcd or Azure Blob
// Storage (Azurite included), each with client settings that suit leases:
// calls that fail within a second when the store is down, rather than retry
// for long, since the SharedResource retries every round anyway.
package leasestore

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	goredis "github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

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

// Parse reads a store address: redis://host:port, etcd://host:port (or
// etcd+https://host:port), or the URL of an Azure Blob Storage container
// (https://account.blob.core.windows.net/container, or Azurite's
// http://127.0.0.1:10000/devstoreaccount1/container). It returns the kind
// and the address Open takes.
func Parse(spec string) (kind, addr string, err error) {
	u, err := url.Parse(spec)
	if err != nil || u.Host == "" {
		return "", "", fmt.Errorf("lease store %q: want redis://host:port, etcd://host:port or a blob container URL", spec)
	}
	switch u.Scheme {
	case "redis":
		return "redis", u.Host, nil
	case "etcd":
		return "etcd", "http://" + u.Host, nil
	case "etcd+https":
		return "etcd", "https://" + u.Host, nil
	case "http", "https":
		if strings.Trim(u.Path, "/") == "" {
			return "", "", fmt.Errorf("lease store %q: a blob store URL must name the container, such as https://account.blob.core.windows.net/leases", spec)
		}
		return "azblob", strings.TrimSuffix(spec, "/"), nil
	}
	return "", "", fmt.Errorf("lease store %q: unknown scheme %q; want redis, etcd, or http(s) for Azure Blob Storage", spec, u.Scheme)
}

// Open returns a lease manager of the given kind at addr, its names in the
// store starting with prefix, and a function that closes its client. For
// Azure Blob Storage, addr is the container URL; the credential is
// Azurite's key for an Azurite URL, a shared key from AZURE_STORAGE_KEY if
// set, and otherwise azidentity's DefaultAzureCredential.
func Open(ctx context.Context, kind, addr, prefix string) (ratelimiter.LeaseManager, func(), error) {
	switch kind {
	case "redis":
		goredis.SetLogger(quiet{}) // failed dials reach the limiter's error events
		c := goredis.NewClient(&goredis.Options{Addr: addr, DialTimeout: time.Second, MaxRetries: -1, ContextTimeoutEnabled: true})
		m, err := leaseredis.New(c, prefix)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		return m, func() { c.Close() }, nil
	case "etcd":
		// Reconnect within a second of the server's return: gRPC's
		// default back-off between attempts grows to two minutes.
		c, err := clientv3.New(clientv3.Config{
			Endpoints: []string{addr}, DialTimeout: 2 * time.Second, Context: ctx, Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: time.Second,
			})},
		})
		if err != nil {
			return nil, nil, fmt.Errorf("etcd at %s: %w", addr, err)
		}
		m, err := leaseetcd.New(c, prefix)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		return m, func() { c.Close() }, nil
	case "azblob":
		// Fail a call soon when the store is down, rather than retry it
		// for seconds.
		opts := &leaseblob.Options{Prefix: prefix + "/", ClientOptions: &container.ClientOptions{ClientOptions: azcore.ClientOptions{
			Retry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 50 * time.Millisecond, MaxRetryDelay: 200 * time.Millisecond, TryTimeout: time.Second},
		}}}
		u, err := url.Parse(addr)
		if err != nil {
			return nil, nil, err
		}
		var m *leaseblob.Manager
		switch {
		case strings.HasPrefix(u.Path, "/"+AzuriteAccount+"/"):
			m, err = leaseblob.NewWithSharedKey(addr, AzuriteAccount, AzuriteKey, opts)
		case os.Getenv("AZURE_STORAGE_KEY") != "":
			account, _, _ := strings.Cut(u.Hostname(), ".")
			m, err = leaseblob.NewWithSharedKey(addr, account, os.Getenv("AZURE_STORAGE_KEY"), opts)
		default:
			var cred azcore.TokenCredential
			cred, err = azidentity.NewDefaultAzureCredential(nil)
			if err == nil {
				m, err = leaseblob.NewWithCredential(addr, cred, opts)
			}
		}
		if err != nil {
			return nil, nil, fmt.Errorf("azure blob container %s: %w", addr, err)
		}
		return m, func() {}, nil
	}
	return nil, nil, fmt.Errorf("unknown lease store kind %q; want one of %s", kind, strings.Join(Kinds, ", "))
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}
