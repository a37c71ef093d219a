package servicetest_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ratebatch/batcher/internal/servicetest"
)

// redisDo sends one command and returns the first line of the reply.
func redisDo(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c, "$%d\r\n%s\r\n", len(a), a)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestRedisStopStartKill(t *testing.T) {
	s := servicetest.StartRedis(t)
	if got, err := redisDo(s.Addr(), "SET", "k", "v1"); err != nil || got != "+OK" {
		t.Fatalf("SET: %q %v", got, err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if s.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := redisDo(s.Addr(), "PING"); err == nil {
		t.Fatal("PING answered after Stop")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if got, _ := redisDo(s.Addr(), "GET", "k"); got != "$2" {
		t.Fatalf("GET after restart: %q, want the value kept", got)
	}
	redisDo(s.Addr(), "SET", "k", "v22")
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if got, _ := redisDo(s.Addr(), "GET", "k"); got != "$3" {
		t.Fatalf("GET after kill and restart: %q, want the value kept", got)
	}
}

func TestClickHouseStopStart(t *testing.T) {
	s := servicetest.StartClickHouse(t)
	if s.HTTPAddr() == "" || s.Addr() == s.HTTPAddr() {
		t.Fatalf("addresses %q %q", s.Addr(), s.HTTPAddr())
	}
	start := time.Now()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start))
	if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("native port answers after Stop")
	}
	start = time.Now()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted in %v", time.Since(start))
	if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
}
