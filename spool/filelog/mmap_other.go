//go:build !unix

package filelog

import (
	"errors"
	"os"
)

func mapFile(f *os.File, size int64) ([]byte, error) {
	return nil, errors.New("filelog: the local log runs on unix systems only")
}

func unmap(b []byte) error { return nil }
