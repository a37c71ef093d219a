package batcher_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/ratebatch/batcher"
)

// Events logged with slog: at the handler's Info level the failure is
// logged, and the Debug events (the target, the audits, the shutdown) are
// not. Payloads are not printed. (The handler drops the time so that the
// output is the same on every run.)
func ExampleLogListener() {
	handler := slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	})
	b := batcher.NewBatcher()
	b.AddListener(batcher.NewLogListener(slog.New(handler)).Listen)
	if err := b.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	w := batcher.NewWatcher(func(ctx context.Context, batch []*batcher.Operation) error {
		return errors.New("table missing")
	}).WithMaxAttempts(1)
	if err := b.Enqueue(batcher.NewOperation(w, 1, "customer@example.com", true)); err != nil {
		fmt.Println(err)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Println(err)
	}
	// Output: level=ERROR msg="batcher failed" kind=failed ops=1 err="table missing"
}
