package main

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The minimal pipeline is a yardstick for figure 1: the least that any
// batcher handing out per-operation results must do for each operation, on
// the same machine, moments after each run. It has none of the Batcher's
// settings, limiter, ledger, statistics, events, retries, flushes or
// shutdown; what it keeps is what the figure's path cannot do without:
//
//   - an operation of 48 bytes holding three pointers, allocated by the
//     producer (the size of batcher.Operation);
//   - a compare-and-swap claiming it, so that it is enqueued only once;
//   - a per-CPU shard under a mutex, picked through a sync.Pool, holding at
//     most its share of a 10,000-operation buffer;
//   - one consumer goroutine that takes whole shards, cuts batches of 100,
//     gives each batch's copy to a no-op ProcessBatch, and ends each
//     operation with a compare-and-swap, as a future must.
//
// If the Batcher runs near this, what is left of a target above it is the
// machine and the Go runtime (allocation and garbage collection with a
// small heap, and traffic between the CPUs), not the Batcher's design. It
// is a yardstick of the work, not of where it is done: its one consumer
// takes every CPU's shard, so most operations cross from one CPU to the
// other, where the Batcher's intake keeps a streaming CPU's operations on
// that CPU (see intake.go) and can run faster than this.

// minOp is the minimal pipeline's operation: the size and pointer count of
// batcher.Operation.
type minOp struct {
	watcher *int
	_       any  // payload
	_       *int // ext
	cost    int32
	_       int32
	state   atomic.Uint32
	_       uint32
}

type minShard struct {
	mu  sync.Mutex
	ops []*minOp
	_   [64]byte
}

type minPipe struct {
	shards []*minShard
	pool   sync.Pool
	next   atomic.Uint32
	share  int // operations a shard may hold
	kick   chan struct{}
	ended  atomic.Int64
}

// minProcess is the no-op ProcessBatch, called through a variable so that
// the call is not optimised away.
var minProcess = func([]*minOp) error { return nil }

func newMinPipe(buffer int) *minPipe {
	n := runtime.GOMAXPROCS(0)
	p := &minPipe{kick: make(chan struct{}, 1), share: max(buffer/n, 1)}
	for range n {
		p.shards = append(p.shards, &minShard{})
	}
	p.pool.New = func() any { return p.shards[int(p.next.Add(1))%n] }
	return p
}

func (p *minPipe) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *minPipe) enqueue(op *minOp) {
	if !op.state.CompareAndSwap(0, 1) {
		panic("batchbench: minimal pipeline: an operation enqueued twice")
	}
	sh := p.pool.Get().(*minShard)
	sh.mu.Lock()
	for len(sh.ops) >= p.share { // full: let the consumer run
		sh.mu.Unlock()
		p.wake()
		runtime.Gosched()
		sh.mu.Lock()
	}
	sh.ops = append(sh.ops, op)
	first := len(sh.ops) == 1
	sh.mu.Unlock()
	p.pool.Put(sh)
	if first {
		p.wake()
	}
}

func (p *minPipe) consume(stop <-chan struct{}) {
	var spare []*minOp
	for {
		select {
		case <-p.kick:
		case <-stop:
			return
		}
		for more := true; more; {
			more = false
			for _, sh := range p.shards {
				sh.mu.Lock()
				ops := sh.ops
				sh.ops = spare[:0]
				sh.mu.Unlock()
				more = more || len(ops) > 0
				for rest := ops; len(rest) > 0; {
					k := min(100, len(rest))
					batch := make([]*minOp, k) // ProcessBatch's copy
					copy(batch, rest[:k])
					_ = minProcess(batch)
					for _, op := range rest[:k] {
						op.state.CompareAndSwap(1, 3)
					}
					p.ended.Add(int64(k))
					rest = rest[k:]
				}
				clear(ops)
				spare = ops[:0]
			}
		}
	}
}

var minWatcher = new(int)

// measureMinimal times n operations from the given number of producers
// through the minimal pipeline, until the last has ended, in operations per
// second.
func measureMinimal(n, producers int) float64 {
	p := newMinPipe(10000)
	stop := make(chan struct{})
	var consumer sync.WaitGroup
	consumer.Go(func() { p.consume(stop) })
	var wg sync.WaitGroup
	runtime.GC()
	start := time.Now()
	for i := range producers {
		k := share(n, producers, i)
		wg.Go(func() {
			for range k {
				p.enqueue(&minOp{watcher: minWatcher, cost: 1})
			}
		})
	}
	wg.Wait()
	for p.ended.Load() < int64(n) {
		p.wake()
		runtime.Gosched()
	}
	elapsed := time.Since(start)
	close(stop)
	consumer.Wait()
	return float64(n) / elapsed.Seconds()
}
