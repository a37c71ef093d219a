package filelog_test

import (
	"testing"

	"github.com/ratebatch/batcher/internal/spooltest"
	"github.com/ratebatch/batcher/spool"
	"github.com/ratebatch/batcher/spool/filelog"
)

func TestBackend(t *testing.T) {
	for _, p := range []filelog.SyncPolicy{filelog.SyncEveryAppend, filelog.DefaultSync, filelog.SyncNever} {
		t.Run(p.String(), func(t *testing.T) {
			spooltest.Run(t, func(t *testing.T) func() spool.Backend {
				dir := t.TempDir()
				return func() spool.Backend {
					l := filelog.New(dir).WithSync(p).WithMaxBytes(1 << 20).WithSegmentSize(300).WithMaxRecordSize(100)
					if err := l.Open(); err != nil {
						t.Fatal(err)
					}
					return l
				}
			})
		})
	}
}
