package redisstream

import (
	"context"
	"time"

	"github.com/ratebatch/batcher/spool"
)

// ReadOnce is one pass of Read: at most one claim scan and one XREADGROUP.
func (s *Stream) ReadOnce(ctx context.Context, max int) ([]spool.Entry, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	return s.readOnce(ctx, max)
}

// WithBlock sets how long an XREADGROUP waits for new records.
func (s *Stream) WithBlock(d time.Duration) *Stream {
	s.block = d
	return s
}
