package cosmosbulk

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"
)

// ClientOptions returns azcosmos client options for a [Loader]: the SDK's
// own retries turned off (Retry.MaxRetries -1), so that 429s reach the
// Loader, which throttles their lane and retries every write itself.
//
// insecureLoopbackTLS skips the verification of the server's certificate
// for servers on a loopback address only (127.0.0.0/8, ::1, "localhost"):
// local emulators use self-signed certificates. Any other host's
// certificate is verified as usual, against the system's roots, whatever
// insecureLoopbackTLS says: a mistyped endpoint cannot turn verification
// off for a remote server. With insecureLoopbackTLS false the SDK's default
// transport is used.
func ClientOptions(insecureLoopbackTLS bool) *azcosmos.ClientOptions {
	o := &azcosmos.ClientOptions{}
	o.Retry = policy.RetryOptions{MaxRetries: -1}
	if insecureLoopbackTLS {
		o.Transport = &http.Client{Transport: loopbackTransport()}
	}
	return o
}

// loopbackTransport returns a transport that skips certificate
// verification for loopback servers only. Its TLS connections are dialled
// with its DialContext, as it is when they are made (tests replace it).
func loopbackTransport() *http.Transport {
	t := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	// The TLS handshake is ours, so that whether to verify is decided by
	// the address dialled, not by anything the server says.
	t.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		raw, err := t.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(raw, &tls.Config{
			MinVersion:         tls.VersionTLS12,
			ServerName:         host,
			NextProtos:         []string{"h2", "http/1.1"},
			InsecureSkipVerify: IsLoopback(host), // a local server's self-signed certificate
		})
		hctx, cancel := context.WithTimeout(ctx, t.TLSHandshakeTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("cosmosbulk: TLS handshake with %s (certificates are verified for any host but a loopback one): %w", host, err)
		}
		return tc, nil
	}
	return t
}

// IsLoopback reports whether host (a host name or an IP address, without
// a port) is a loopback address: "localhost", 127.0.0.0/8 or ::1.
func IsLoopback(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CreateContainer creates the database and the container, with a
// partition key path such as "/pk", unless they exist, and returns a client
// for the container. Neither is given a throughput of its own.
func CreateContainer(ctx context.Context, client *azcosmos.Client, database, container, partitionKeyPath string) (*azcosmos.ContainerClient, error) {
	if _, err := client.CreateDatabase(ctx, azcosmos.DatabaseProperties{ID: database}, nil); err != nil && StatusCode(err) != http.StatusConflict {
		return nil, fmt.Errorf("cosmosbulk: creating database %q: %w", database, err)
	}
	db, err := client.NewDatabase(database)
	if err != nil {
		return nil, fmt.Errorf("cosmosbulk: database %q: %w", database, err)
	}
	props := azcosmos.ContainerProperties{
		ID:                     container,
		PartitionKeyDefinition: azcosmos.PartitionKeyDefinition{Paths: []string{partitionKeyPath}},
	}
	if _, err := db.CreateContainer(ctx, props, nil); err != nil && StatusCode(err) != http.StatusConflict {
		return nil, fmt.Errorf("cosmosbulk: creating container %q: %w", container, err)
	}
	return db.NewContainer(container)
}
