package batcher

import (
	"context"
	"sync"
	"time"
)

// batchCtx is the context ProcessBatch gets. It behaves as one made with
// context.WithDeadline from the Batcher's run context: it is done at its
// deadline with DeadlineExceeded, when the Batcher is closed with Canceled,
// and with Canceled once ProcessBatch has returned. But it has no timer of
// its own (the worker's one reusable timer ends it, see worker.overran) and
// no entry in its parent's list of children, which context.WithDeadline
// adds, and removes, for every batch.
//
// Contexts derived from it are cancelled through its AfterFunc method, as
// the context package does for any parent that has one, so they see its
// error (DeadlineExceeded after an overrun) and need no goroutine.
type batchCtx struct {
	values   context.Context // for Value: the run context without its cancellation
	released time.Time       // for ReleasedAt
	deadline time.Time

	mu     sync.Mutex
	done   chan struct{} // made by the first Done, or closedChan if it ended first
	err    error
	afters []*func()
}

func (c *batchCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *batchCtx) Value(key any) any {
	if key == (releasedKey{}) {
		return c.released
	}
	return c.values.Value(key)
}

// releasedKey is the key a ProcessBatch context answers ReleasedAt's
// question under, and contexts derived from it pass the question on.
type releasedKey struct{}

// ReleasedAt returns, given the context of a ProcessBatch call or a context
// derived from it, the moment the Batcher released the batch: the moment
// its rate limiting counts the batch from (at most Capacity in any
// one-second window of these moments), taken just before the call. ok is
// false for any other context.
//
// A ProcessBatch that paces its requests, or an observer that checks the
// releases against a datastore's own accounting, can stamp the batch with
// it; time.Now inside ProcessBatch is a little later, by however long the
// goroutine took to start the call.
func ReleasedAt(ctx context.Context) (t time.Time, ok bool) {
	t, ok = ctx.Value(releasedKey{}).(time.Time)
	return t, ok
}

func (c *batchCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.err != nil {
			c.done = closedChan
		} else {
			c.done = make(chan struct{})
		}
	}
	return c.done
}

func (c *batchCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// AfterFunc arranges for f to be called once c is done, and returns a
// function that stops that if it has not happened yet, reporting whether it
// did stop it. The context package calls it to cancel derived contexts; f is
// called on the goroutine that ends c (it is the context package's own
// cancellation of a child, which only takes that child's lock).
func (c *batchCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		f()
		return func() bool { return false }
	}
	p := &f
	c.afters = append(c.afters, p)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.afters {
			if x == p {
				c.afters = append(c.afters[:i], c.afters[i+1:]...)
				return true
			}
		}
		return false
	}
}

// cancel ends c with err, if it has not ended yet.
func (c *batchCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done == nil {
		c.done = closedChan
	} else {
		close(c.done)
	}
	afters := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, f := range afters {
		(*f)()
	}
}

func (c *batchCtx) String() string { return "batcher.ProcessBatch context" }
