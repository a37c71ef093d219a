// Command bulkload loads a data set into Azure Cosmos DB through a
// batcher.Batcher, as fast as the container's throughput allows and no
// faster, and compares it, in the same run, with a naive loader that writes
// with unbounded concurrency.
//
// Usage:
//
//	go run ./cmd/bulkload [flags]
//
// With no flags it needs no service: it starts an embedded throttling model
// of Cosmos DB (internal/cosmosmodel) provisioned for 10,000 RU/s, generates
// 10,000 documents of about 1 KB, loads them through the Batcher (package
// samples/cosmos) with a live progress line, checks that every item is
// stored once, loads them again into a fresh model with the naive loader,
// prints a summary of the two, and writes a chart of RU/s over time against
// the capacity as SVG.
//
// Flags point it elsewhere: -input loads a JSON-lines file instead of
// generated documents; -cosmos-endpoint (with -cosmos-key, -database,
// -container) loads into a real Cosmos DB account or emulator; -clickhouse
// loads into ClickHouse instead (rows per second; no naive comparison).
// Run with -h for every flag.
//
// -lease-store shares the Batcher's limit with other loaders through Redis
// (redis://, rediss:// with a password or a user), etcd (etcd://,
// etcds://, with a user) or an Azure Blob Storage container (a SAS token,
// an account key or an Azure identity). A store, Cosmos DB endpoint or
// ClickHouse server that does not answer, or refuses the credentials, at
// start is an error within seconds, in one line that names it; a lease store
// that goes away later is survived on the reserved capacity and shown on the
// progress line. No password, key or token is ever printed: every address
// in the output goes through internal/redact.
//
// The exit status is 0 when every item was loaded, 1 when the load failed or
// items failed, 2 for bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	_, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	case errors.As(err, new(*usageError)):
		fmt.Fprintln(os.Stderr, "bulkload:", err)
		fmt.Fprintln(os.Stderr, "run 'bulkload -h' for the flags")
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "bulkload:", err)
		os.Exit(1)
	}
}
