// Command sharedsim shows shared capacity at work across real processes:
// for each lease store (Redis, etcd, Azure Blob Storage through Azurite) it
// starts a private server of that store, then four instances of itself, each
// a Batcher on a SharedResource with a backlog (shared 10,000 cost units a
// second in partitions of 1,000, and 500 reserved each), and measures:
//
//   - the cost all of them released together in any one-second window,
//     against shared + reserved (never over);
//   - the utilization while they share, and the partitions each settled at;
//   - how long one instance alone takes to lease every partition;
//   - after a SIGKILL of one, how long until the others use its partitions;
//   - with the store stopped for 10 s, how fast they fall back to their
//     reserved capacity and recover once it returns.
//
// It needs redis-server, etcd and Azurite installed: `scripts/services.sh up`
// installs them. Usage:
//
//	go run ./cmd/sharedsim [-stores redis,etcd,azblob] [-json]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ratebatch/batcher/internal/sharedsim"
)

func main() {
	sharedsim.Main() // an instance, if Run started this process as one
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("sharedsim", flag.ContinueOnError)
	stores := fs.String("stores", strings.Join(sharedsim.Stores, ","), "the lease stores to run the scenario on")
	asJSON := fs.Bool("json", false, "print the figures as JSON")
	nodeDir := fs.String("node-dir", "", "where npm installed azurite (default: .node in the repository, as scripts/services.sh does)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var list []string
	for _, s := range strings.Split(*stores, ",") {
		if !slices.Contains(sharedsim.Stores, s) {
			fmt.Fprintf(os.Stderr, "sharedsim: -stores: unknown store %q; want some of %s\n", s, strings.Join(sharedsim.Stores, ","))
			return 2
		}
		list = append(list, s)
	}
	if *nodeDir == "" {
		*nodeDir = defaultNodeDir()
	}
	bin, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sharedsim:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var all []sharedsim.Figures
	for _, store := range list {
		dir, err := os.MkdirTemp("", "sharedsim-"+store)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sharedsim:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		srv, err := sharedsim.StartServer(store, dir, *nodeDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fig, err := sharedsim.Run(ctx, sharedsim.Config{Server: srv, Binary: bin, Logf: func(f string, a ...any) {
			if !*asJSON {
				fmt.Fprintf(os.Stderr, f+"\n", a...)
			}
		}})
		srv.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		all = append(all, fig)
		if !*asJSON {
			fmt.Print(fig)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(all)
	}
	return 0
}

// defaultNodeDir returns the .node directory of the repository the working
// directory is in, where scripts/services.sh installs npm packages.
func defaultNodeDir() string {
	if d := os.Getenv("NODE_DIR"); d != "" {
		return d
	}
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, ".node")
		}
		if filepath.Dir(d) == d {
			return filepath.Join(dir, ".node")
		}
	}
}
