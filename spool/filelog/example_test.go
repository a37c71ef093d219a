package filelog_test

import (
	"fmt"
	"os"
	"time"

	"github.com/ratebatch/batcher/spool/filelog"
)

func ExampleNew() {
	dir, _ := os.MkdirTemp("", "filelog-example")
	defer os.RemoveAll(dir)
	l := filelog.New(dir).
		WithSync(filelog.SyncEvery(50 * time.Millisecond)). // default 10ms
		WithMaxBytes(256 << 20).                            // default 1 GiB
		WithErrorWhenFull().                                // default: Append waits
		OnCut(func(c filelog.Cut) { fmt.Println(c) })
	if err := l.Open(); err != nil {
		fmt.Println(err)
		return
	}
	defer l.Close()
	fmt.Println(l.Cuts())
	// Output: []
}
