//go:build unix

package filelog

import (
	"os"
	"syscall"
)

// mapFile sizes f to size bytes, reserved on disk where the system can
// (so that a full disk is an error here, not a fault when the mapping is
// written), and maps it shared, read and write.
func mapFile(f *os.File, size int64) ([]byte, error) {
	if err := reserve(f, size); err != nil {
		return nil, err
	}
	return syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
}

func unmap(b []byte) error {
	if b == nil {
		return nil
	}
	return syscall.Munmap(b)
}
