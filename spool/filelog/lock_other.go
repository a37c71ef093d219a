//go:build !unix

package filelog

import (
	"errors"
	"os"
)

func lock(f *os.File) (held bool, err error) {
	return false, errors.New("filelog: locking a spool directory is supported on unix systems only")
}
