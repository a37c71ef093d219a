// Package ratelimiter holds the rate limiters a [batcher.Batcher] can use:
// a fixed provisioned capacity ([NewProvisioned]), a token bucket
// ([NewTokenBucket]), a capacity shared among instances through leases
// ([NewSharedResource]), and two that learn from the datastore's throttles: a
// [Controller] that finds the throughput the datastore really gives, up to
// a ceiling ([NewController]), and [Adaptive], which cuts a wrapped
// limiter's capacity by a fixed factor ([NewAdaptive]).
//
// Whatever the limiter, the Batcher keeps the one-second bound on capacity
// itself; a limiter only says how much capacity there is, and a token bucket
// also how it is spread within the second.
package ratelimiter

import (
	"errors"

	"github.com/ratebatch/batcher"
)

// ErrWouldExceedDeadline is returned by a limiter's Wait when the capacity
// asked for would not be available before the context's deadline.
var ErrWouldExceedDeadline = errors.New("ratelimiter: would exceed context deadline")

// RateLimiter is the interface a Batcher uses; see [batcher.RateLimiter].
type RateLimiter = batcher.RateLimiter

// Pacer is the interface of limiters that pace releases within each second;
// see [batcher.Pacer].
type Pacer = batcher.Pacer
