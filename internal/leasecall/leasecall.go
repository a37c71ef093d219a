// Package leasecall holds what the lease managers in ratelimiter/redis and
// ratelimiter/etcd share: the check before each call, how they wrap their
// clients' errors, and how they write a demand.
package leasecall

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ratebatch/batcher/ratelimiter"
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

// EncodeDemand writes d's want and held partitions as "want p1,p2,...",
// the form the Redis and etcd managers store.
func EncodeDemand(d ratelimiter.Demand) string {
	b := strconv.AppendInt(nil, int64(d.Want), 10)
	b = append(b, ' ')
	for i, p := range d.Held {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(p), 10)
	}
	return string(b)
}

// DecodeDemand reads what EncodeDemand wrote for owner; a malformed s gets
// an error starting with pkg.
func DecodeDemand(pkg, owner, s string) (ratelimiter.Demand, error) {
	bad := func() (ratelimiter.Demand, error) {
		return ratelimiter.Demand{}, fmt.Errorf("%s: Announce: owner %q's demand %q is malformed", pkg, owner, s)
	}
	want, held, ok := strings.Cut(s, " ")
	if !ok {
		return bad()
	}
	w, err := strconv.Atoi(want)
	if err != nil {
		return bad()
	}
	d := ratelimiter.Demand{Owner: owner, Want: w, Held: []int{}}
	if held != "" {
		for ps := range strings.SplitSeq(held, ",") {
			p, err := strconv.Atoi(ps)
			if err != nil {
				return bad()
			}
			d.Held = append(d.Held, p)
		}
	}
	return d, nil
}
