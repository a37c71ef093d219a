// Package leasecall holds what the lease managers in ratelimiter/redis and
// ratelimiter/etcd check before each call and how they wrap their clients'
// errors.
package leasecall

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Check returns ctx's error, or one for a bad partition or owner, each
// starting with pkg (such as "ratelimiter/redis").
func Check(ctx context.Context, pkg, method string, p int, owner string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s partition %d: %w", pkg, method, p, err)
	}
	if p < 0 {
		return fmt.Errorf("%s: %s: partition %d is negative", pkg, method, p)
	}
	if owner == "" {
		return fmt.Errorf("%s: %s partition %d: owner is empty", pkg, method, p)
	}
	return nil
}

// Wrap annotates an error of a store's client, keeping ctx's error visible
// to errors.Is when ctx ended during the call. A call that timed out at
// ctx's deadline may return before ctx's timer has fired: that counts as
// ctx's deadline too.
func Wrap(ctx context.Context, pkg string, err error, format string, a ...any) error {
	msg := fmt.Sprintf(format, a...)
	cerr := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && cerr == nil && !time.Now().Before(dl) {
		cerr = context.DeadlineExceeded
	}
	if cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%s: %s: %w (%w)", pkg, msg, cerr, err)
	}
	return fmt.Errorf("%s: %s: %w", pkg, msg, err)
}
