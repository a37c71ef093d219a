package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"

	"github.com/ratebatch/batcher"
	"github.com/ratebatch/batcher/internal/redact"
)

// Classify sorts errors as the package doc's table says, through the
// wrappings that reach OnFailed.
func TestClassify(t *testing.T) {
	ex := func(code int32) error {
		return &ch.Exception{Code: code, Name: "DB::Exception", Message: "msg " + strconv.Itoa(int(code))}
	}
	cases := []struct {
		err  error
		want Class
	}{
		{ex(60), Permanent},  // UNKNOWN_TABLE
		{ex(16), Permanent},  // NO_SUCH_COLUMN_IN_TABLE
		{ex(53), Permanent},  // TYPE_MISMATCH
		{ex(6), Permanent},   // CANNOT_PARSE_TEXT
		{ex(193), Permanent}, // WRONG_PASSWORD
		{ex(516), Permanent}, // AUTHENTICATION_FAILED
		{ex(62), Permanent},  // SYNTAX_ERROR
		{ex(202), Throttle},  // TOO_MANY_SIMULTANEOUS_QUERIES
		{ex(252), Throttle},  // TOO_MANY_PARTS
		{ex(241), Transient}, // MEMORY_LIMIT_EXCEEDED
		{ex(209), Transient}, // SOCKET_TIMEOUT
		{ex(12345), Transient},
		{&column.ColumnConverterError{Op: "Append", From: "[]float64", To: "String"}, Permanent},
		{fmt.Errorf("%w: %w", ch.ErrBatchInvalid, errors.New("bad value")), Permanent},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, Transient},
		{io.ErrUnexpectedEOF, Transient},
		{context.DeadlineExceeded, Transient},
		{ch.ErrAcquireConnTimeout, Transient},
		{errors.New("something else"), Transient},
		{nil, Transient},
	}
	for _, c := range cases {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %v, want %v", c.err, got, c.want)
		}
		if c.err == nil {
			continue
		}
		// As OnFailed gets them: redacted, wrapped, and wrapped again by
		// the Batcher when the attempts ran out.
		wrapped := fmt.Errorf("%w (3): %w", batcher.ErrTooManyAttempts,
			fmt.Errorf("clickhouse: insert of 3 rows into events: %w", redact.Error(c.err)))
		if got := Classify(wrapped); got != c.want {
			t.Errorf("Classify(%v) = %v, want %v", wrapped, got, c.want)
		}
	}
	for c, want := range map[Class]string{Transient: "transient", Throttle: "throttle", Permanent: "permanent", 7: "Class(7)"} {
		if c.String() != want {
			t.Errorf("Class %d: String %q, want %q", int(c), c.String(), want)
		}
	}
}

// The package doc's table lists exactly the codes Classify knows, each with
// its name and class.
func TestDocTableMatchesClassify(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`(?m)^//\t\s*(\d+)\s+([A-Z_]+)\s+(permanent|throttle|transient)\s*$`)
	rows := row.FindAllStringSubmatch(string(doc), -1)
	seen := map[int32]bool{}
	for _, r := range rows {
		code, _ := strconv.Atoi(r[1])
		c, ok := codeClasses[int32(code)]
		switch {
		case !ok:
			t.Errorf("doc.go lists code %d %s, which Classify does not know", code, r[2])
		case c.name != r[2] || c.class.String() != r[3]:
			t.Errorf("doc.go: %d %s %s; Classify: %d %s %s", code, r[2], r[3], code, c.name, c.class)
		}
		seen[int32(code)] = true
	}
	for code, c := range codeClasses {
		if !seen[code] {
			t.Errorf("code %d %s (%s) is missing from doc.go's table", code, c.name, c.class)
		}
	}
}
