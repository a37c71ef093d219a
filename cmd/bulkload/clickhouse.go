package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/samples/cosmos"
)

// clickHouseBatch is the most rows one INSERT carries.
const clickHouseBatch = 10000

// loadClickHouse loads items into a ClickHouse table through a Batcher whose
// capacity is in rows per second: one operation a row, costing 1, written
// in batches with PrepareBatch (never INSERT ... VALUES, which ClickHouse
// 18.16 answers by waiting for data blocks). Each run tags its rows with a
// run id, so that verification counts only its own.
func loadClickHouse(ctx context.Context, cfg config, lim batcher.RateLimiter, items []cosmos.Item, prog *progress, metrics *metricsServer) (phase, error) {
	opts, err := clickhouse.ParseDSN(cfg.clickhouse)
	if err != nil {
		return phase{}, redact.Error(fmt.Errorf("-clickhouse %s: %w", cfg.clickhouse, err))
	}
	opts.DialTimeout = 5 * time.Second
	opts.ReadTimeout = 30 * time.Second
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return phase{}, fmt.Errorf("clickhouse %v: %w", opts.Addr, err)
	}
	defer conn.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := conn.Ping(pctx); err != nil {
		if ex := new(clickhouse.Exception); errors.As(err, &ex) {
			return phase{}, fmt.Errorf("clickhouse %v refused: %w", opts.Addr, err) // a wrong password, say
		}
		return phase{}, fmt.Errorf("clickhouse %v is unreachable: %w", opts.Addr, err)
	}
	create := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (run String, id String, pk String, body String) ENGINE = MergeTree ORDER BY (run, pk, id)", cfg.table)
	if err := conn.Exec(pctx, create); err != nil {
		return phase{}, fmt.Errorf("clickhouse %v: creating table %s: %w", opts.Addr, cfg.table, err)
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	insert := fmt.Sprintf("INSERT INTO %s (run, id, pk, body)", cfg.table)

	s := newSeries()
	var written, inserts atomic.Int64
	w := batcher.NewWatcher(func(ctx context.Context, ops []*batcher.Operation) error {
		// Rows count in the second the Batcher released them, as its
		// capacity does, not in the one the insert ended.
		released := time.Now()
		inserts.Add(1)
		if err := insertRows(ctx, conn, insert, run, ops); err != nil {
			s.record(released, 0, false)
			return batcher.Retry(err)
		}
		s.record(released, float64(len(ops)), false)
		written.Add(int64(len(ops)))
		return nil
	}).WithMaxBatchSize(clickHouseBatch).WithMaxAttempts(5)
	var sent sends
	b := batcher.NewBatcher().WithRateLimiter(lim).
		WithBufferSize(4 * clickHouseBatch).WithEmitBatch()
	b.AddListener(sent.event)
	if err := b.Start(ctx); err != nil {
		return phase{}, err
	}
	if err := metrics.serve(ctx, b); err != nil {
		b.Close()
		return phase{}, err
	}

	s.restart()
	stop := prog.start("batcher", len(items), written.Load, s, s.rate)
	ops := make([]*batcher.Operation, 0, len(items))
	var enqueueErr error
	for it := range slices.Values(items) {
		op := batcher.NewOperation(w, 1, it, true)
		if enqueueErr = b.EnqueueContext(ctx, op); enqueueErr != nil {
			break
		}
		ops = append(ops, op)
	}
	shutdownErr := b.Shutdown(context.WithoutCancel(ctx))
	elapsed := time.Since(s.start())
	stop()

	bs := b.Stats()
	p := phase{name: "batcher", items: len(items), written: written.Load(), failed: bs.Failed, elapsed: elapsed}
	p.first, p.resent = sent.counts()
	p.fill(s, &cosmosTarget{})
	p.requests = inserts.Load()
	for _, op := range ops {
		if err := op.Err(); err != nil {
			p.firstErr = err
			break
		}
	}
	if p.firstErr == nil {
		p.firstErr = enqueueErr
	}
	if p.firstErr == nil && shutdownErr != nil {
		p.firstErr = shutdownErr
	}
	if ctx.Err() != nil {
		return p, ctx.Err()
	}
	var rows, ids uint64
	q := fmt.Sprintf("SELECT count(), uniqExact(id) FROM %s WHERE run = ?", cfg.table)
	if err := conn.QueryRow(ctx, q, run).Scan(&rows, &ids); err != nil {
		p.verified = "could not count the table: " + err.Error()
	} else if rows == uint64(len(items)) && ids == uint64(len(items)) {
		p.verified = fmt.Sprintf("all %s rows of run %s stored, each once", commas(int64(rows)), run)
	} else {
		p.verified = fmt.Sprintf("MISMATCH: run %s has %d rows, %d distinct ids; want %d", run, rows, ids, len(items))
	}
	return p, nil
}

// insertRows inserts ops' items in one batch. The batch does not run under
// ctx: clickhouse-go v2.50.0 closes a batch's connection when its context
// ends, from a goroutine that may run after Send has returned the connection
// to the pool, breaking whichever batch uses it next (and a batch retried
// after such an error may already be stored). The driver's ReadTimeout
// bounds a hung insert instead.
func insertRows(ctx context.Context, conn driver.Conn, insert, run string, ops []*batcher.Operation) error {
	batch, err := conn.PrepareBatch(context.WithoutCancel(ctx), insert)
	if err != nil {
		return err
	}
	for _, op := range ops {
		it := op.Payload().(cosmos.Item)
		if err := batch.Append(run, it.ID, it.PartitionKey, string(it.Body)); err != nil {
			batch.Abort()
			return err
		}
	}
	return batch.Send()
}
