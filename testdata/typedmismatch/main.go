// Command typedmismatch must not compile: TestTypedWrongPayloadDoesNotCompile
// checks that each wrong payload type below is a compile error.
package main

import (
	"context"

	"github.com/ratebatch/batcher"
)

func main() {
	w := batcher.NewTypedWatcher(func(ctx context.Context, batch []*batcher.TypedOperation[int]) error {
		for _, op := range batch {
			var s string
			s = op.Payload() // an int, not a string
			_ = s
		}
		return nil
	})
	_ = batcher.NewTypedOperation(w, 1, "one", true) // a string for a TypedWatcher[int]
}
