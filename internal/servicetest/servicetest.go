// Package servicetest lets tests find the real services (ClickHouse, the
// Cosmos DB API server, Azurite, Redis, etcd) that scripts/services.sh
// starts, and decides what a test does when one is missing.
//
// `make test` starts the services and sets BATCHER_SERVICES=1: a test that
// then cannot reach its service fails. A plain `go test ./...` without them
// skips such tests, saying which service is missing and how to start it.
//
// Addresses default to the ports scripts/services.sh uses on 127.0.0.1; the
// environment variables named below override them.
package servicetest

import (
	"net"
	"net/url"
	"os"
	"testing"
	"time"
)

// The services and their default addresses.
const (
	// ClickHouse's native protocol; BATCHER_CLICKHOUSE_ADDR overrides it.
	ClickHouse = "127.0.0.1:9000"
	// The Cosmos DB API server (HTTPS, self-signed); BATCHER_COSMOS_URL.
	Cosmos = "https://127.0.0.1:8081/"
	// Azurite's blob endpoint for the devstoreaccount1 account;
	// BATCHER_AZURITE_URL.
	Azurite = "http://127.0.0.1:10000/devstoreaccount1/"
	// Redis; BATCHER_REDIS_ADDR.
	Redis = "127.0.0.1:6379"
	// etcd's client URL; BATCHER_ETCD_URL.
	Etcd = "http://127.0.0.1:2379"
)

// Well-known development credentials of the local servers.
const (
	// AzuriteAccount and AzuriteKey are Azurite's built-in account.
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	// CosmosKey is the Cosmos DB emulator's well-known key; the local
	// server accepts any valid base64 key.
	CosmosKey = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)

var envNames = map[string]string{
	ClickHouse: "BATCHER_CLICKHOUSE_ADDR",
	Cosmos:     "BATCHER_COSMOS_URL",
	Azurite:    "BATCHER_AZURITE_URL",
	Redis:      "BATCHER_REDIS_ADDR",
	Etcd:       "BATCHER_ETCD_URL",
}

// Required reports whether the test command started the services, so that
// a missing one is a failure rather than a skip.
func Required() bool { return os.Getenv("BATCHER_SERVICES") == "1" }

// Need returns the address of service (one of the constants above, or the
// value of its environment variable) once it accepts a TCP connection. If it
// does not within a few seconds, the test fails when the services are
// required, and is skipped otherwise.
func Need(t testing.TB, service string) string {
	t.Helper()
	addr := service
	if env, ok := envNames[service]; ok {
		if v := os.Getenv(env); v != "" {
			addr = v
		}
	}
	hostport := addr
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		hostport = u.Host
	}
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		var c net.Conn
		c, err = net.DialTimeout("tcp", hostport, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if Required() {
		t.Fatalf("%s is not reachable at %s, and the test command started the services (BATCHER_SERVICES=1): %v", service, hostport, err)
	}
	t.Skipf("skipped: needs a real service at %s (%v); `make test` starts it, or run scripts/services.sh up", hostport, err)
	return ""
}
