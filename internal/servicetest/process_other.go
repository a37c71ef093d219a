//go:build !linux

package servicetest

import "syscall"

// sysProcAttr puts a private server in its own process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
