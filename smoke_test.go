package batcher_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/ratelimiter"
)

func TestSmoke(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sink{}
		b := start(t, batcher.NewBatcher().WithRateLimiter(ratelimiter.NewProvisioned(10000)))
		w := s.watcher().WithMaxBatchSize(100)
		ctx, cancel := context.WithCancel(t.Context())
		feed(ctx, b, w, 10)
		time.Sleep(30 * time.Second)
		cancel()
		peak := checkWindows(t, &s.log, 10000)
		total := s.log.Total()
		t.Logf("peak %d total %d batches %d", peak, total, s.numBatches())
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Logf("stats %+v", b.Stats())
	})
}
