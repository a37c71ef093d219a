package clickhouse

import (
	"errors"
	"fmt"
	"strconv"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
)

// A Class says what an Ingester does about an insert that failed: try it
// again after its back-off (Transient), try it again after a pause of every
// insert (Throttle), or give up on its events at once (Permanent). The
// package doc has the table of ClickHouse's exception codes and their
// classes; [Classify] applies it.
//
// The zero value is Transient.
type Class int

const (
	// Transient: the insert may succeed if tried again (the network, a
	// timeout, a server restarting, a memory limit). Its events are retried
	// after the back-off, and fail once MaxAttempts tries have failed.
	Transient Class = iota
	// Throttle: the server asks its clients to slow down (too many parts
	// to merge, too many simultaneous queries). The Batcher pauses every
	// insert and then retries; throttles do not count towards MaxAttempts.
	Throttle
	// Permanent: trying again cannot help (an unknown table or column, data
	// that do not fit the column's type, a refused login, a bad request).
	// The events fail at once, without a retry, with an error that says so.
	Permanent
)

// String returns "transient", "throttle" or "permanent".
func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Throttle:
		return "throttle"
	case Permanent:
		return "permanent"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// codeClasses classifies ClickHouse's exception codes; a code not listed is
// Transient. Each code's name is the server's (ErrorCodes.cpp), for errors.
var codeClasses = map[int32]struct {
	name  string
	class Class
}{
	// The table or its columns are not what the insert expects.
	16: {"NO_SUCH_COLUMN_IN_TABLE", Permanent},
	8:  {"THERE_IS_NO_COLUMN", Permanent},
	10: {"NOT_FOUND_COLUMN_IN_BLOCK", Permanent},
	47: {"UNKNOWN_IDENTIFIER", Permanent},
	60: {"UNKNOWN_TABLE", Permanent},
	81: {"UNKNOWN_DATABASE", Permanent},
	// The data do not fit the columns' types.
	6:   {"CANNOT_PARSE_TEXT", Permanent},
	26:  {"CANNOT_PARSE_QUOTED_STRING", Permanent},
	27:  {"CANNOT_PARSE_INPUT_ASSERTION_FAILED", Permanent},
	38:  {"CANNOT_PARSE_DATE", Permanent},
	41:  {"CANNOT_PARSE_DATETIME", Permanent},
	43:  {"ILLEGAL_TYPE_OF_ARGUMENT", Permanent},
	44:  {"ILLEGAL_COLUMN", Permanent},
	50:  {"UNKNOWN_TYPE", Permanent},
	53:  {"TYPE_MISMATCH", Permanent},
	69:  {"ARGUMENT_OUT_OF_BOUND", Permanent},
	70:  {"CANNOT_CONVERT_TYPE", Permanent},
	72:  {"CANNOT_PARSE_NUMBER", Permanent},
	117: {"INCORRECT_DATA", Permanent},
	131: {"TOO_LARGE_STRING_SIZE", Permanent},
	349: {"CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", Permanent},
	386: {"NO_COMMON_TYPE", Permanent},
	// The request itself is bad.
	36:  {"BAD_ARGUMENTS", Permanent},
	48:  {"NOT_IMPLEMENTED", Permanent},
	62:  {"SYNTAX_ERROR", Permanent},
	73:  {"UNKNOWN_FORMAT", Permanent},
	115: {"UNKNOWN_SETTING", Permanent},
	// The login or its rights.
	164: {"READONLY", Permanent},
	192: {"UNKNOWN_USER", Permanent},
	193: {"WRONG_PASSWORD", Permanent},
	194: {"REQUIRED_PASSWORD", Permanent},
	195: {"IP_ADDRESS_NOT_ALLOWED", Permanent},
	291: {"DATABASE_ACCESS_DENIED", Permanent},
	497: {"ACCESS_DENIED", Permanent},
	516: {"AUTHENTICATION_FAILED", Permanent},

	// The server asks for fewer inserts.
	202: {"TOO_MANY_SIMULTANEOUS_QUERIES", Throttle},
	252: {"TOO_MANY_PARTS", Throttle},
	364: {"RECEIVED_ERROR_TOO_MANY_REQUESTS", Throttle},

	// Listed for their names; any code not listed is Transient too.
	3:    {"UNEXPECTED_END_OF_FILE", Transient},
	23:   {"CANNOT_READ_FROM_ISTREAM", Transient},
	24:   {"CANNOT_WRITE_TO_OSTREAM", Transient},
	32:   {"ATTEMPT_TO_READ_AFTER_EOF", Transient},
	33:   {"CANNOT_READ_ALL_DATA", Transient},
	159:  {"TIMEOUT_EXCEEDED", Transient},
	160:  {"TOO_SLOW", Transient},
	173:  {"CANNOT_ALLOCATE_MEMORY", Transient},
	201:  {"QUOTA_EXCEEDED", Transient},
	209:  {"SOCKET_TIMEOUT", Transient},
	210:  {"NETWORK_ERROR", Transient},
	225:  {"NO_ZOOKEEPER", Transient},
	236:  {"ABORTED", Transient},
	241:  {"MEMORY_LIMIT_EXCEEDED", Transient},
	242:  {"TABLE_IS_READ_ONLY", Transient},
	285:  {"TOO_FEW_LIVE_REPLICAS", Transient},
	319:  {"UNKNOWN_STATUS_OF_INSERT", Transient},
	394:  {"QUERY_WAS_CANCELLED", Transient},
	999:  {"KEEPER_EXCEPTION", Transient},
	1000: {"POCO_EXCEPTION", Transient},
}

// Classify returns the class of err, an error from an insert through
// clickhouse-go (or one that wraps it, such as the errors an Ingester
// passes to OnFailed):
//
//   - a ClickHouse exception ([ch.Exception]) by its code, as the table in
//     the package doc says; codes not in it are Transient;
//   - clickhouse-go's own errors for data that do not fit a column's type
//     (converting []float64 to String, say) are Permanent: the server's
//     table is not what the insert expects;
//   - anything else, such as a refused or broken connection, a timeout or
//     a cancelled context, is Transient.
//
// Classify(nil) is Transient, the zero Class; it is safe for concurrent
// use.
func Classify(err error) Class {
	if ex, ok := errors.AsType[*ch.Exception](err); ok {
		return codeClasses[ex.Code].class // Transient if not listed
	}
	if _, ok := errors.AsType[*column.ColumnConverterError](err); ok {
		return Permanent
	}
	if _, ok := errors.AsType[*column.UnsupportedColumnTypeError](err); ok {
		return Permanent
	}
	if _, ok := errors.AsType[*column.Error](err); ok {
		return Permanent
	}
	if errors.Is(err, ch.ErrBatchInvalid) {
		return Permanent
	}
	return Transient
}

// describe returns err's class and, for a ClickHouse exception, its code
// and name, as "permanent error, code 60 UNKNOWN_TABLE".
func describe(err error) string {
	c := Classify(err)
	ex, ok := errors.AsType[*ch.Exception](err)
	if !ok {
		return c.String() + " error"
	}
	if name := codeClasses[ex.Code].name; name != "" {
		return fmt.Sprintf("%s error, code %d %s", c, ex.Code, name)
	}
	return fmt.Sprintf("%s error, code %d", c, ex.Code)
}
