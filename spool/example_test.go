package spool_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

type Click struct {
	ID   int
	Page string
}

func Example() {
	dir, _ := os.MkdirTemp("", "spool-example")
	defer os.RemoveAll(dir)
	l := filelog.New(dir).WithSync(filelog.SyncEveryAppend)
	if err := l.Open(); err != nil {
		fmt.Println(err)
		return
	}
	sp := spool.New(l, spool.JSON[Click]())
	defer sp.Close()

	b := batcher.NewBatcher()
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	var mu sync.Mutex
	var pages []string
	w := spool.NewWatcher(func(ctx context.Context, batch []*spool.Record[Click]) error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range batch {
			pages = append(pages, r.Value.Page) // typed: no assertion
		}
		return nil // the records are removed from the spool
	})
	c := sp.Consumer(b, w)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	for i, page := range []string{"/", "/pricing", "/signup"} {
		if err := sp.Append(ctx, Click{ID: i, Page: page}); err != nil {
			fmt.Println(err)
		}
	}
	for c.Stats().Acked < 3 {
		b.Flush(context.Background())
	}
	cancel()
	fmt.Println(<-done)
	b.Shutdown(context.Background())
	slices.Sort(pages)
	fmt.Println(pages)
	// Output:
	// <nil>
	// [/ /pricing /signup]
}
