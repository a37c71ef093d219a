package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// The README's example is this program, whole: a user who pastes it into a
// module of their own gets a program that builds and runs.
func TestREADMEShowsThisProgram(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "\n## Example\n")
	if !ok {
		t.Fatal("README.md has no \"## Example\" section")
	}
	_, block, ok := strings.Cut(after, "```go\n")
	if !ok {
		t.Fatal("README.md's Example section has no ```go block")
	}
	block, _, ok = strings.Cut(block, "```\n")
	if !ok {
		t.Fatal("README.md's Example block is not closed")
	}
	if block != string(src) {
		t.Errorf("README.md's Example block differs from samples/quickstart/main.go; copy main.go into it")
	}
}

func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "stored 100 of 100 orders, 0 failed, in ") {
		t.Errorf("run printed %q", out.String())
	}
}
