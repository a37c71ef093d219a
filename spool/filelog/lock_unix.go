//go:build unix

package filelog

import (
	"errors"
	"os"
	"syscall"
)

// lock takes an exclusive, non-blocking advisory lock on f, which the
// kernel drops when the process dies however it dies.
func lock(f *os.File) (held bool, err error) {
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	return false, err
}
