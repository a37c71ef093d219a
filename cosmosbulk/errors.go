package cosmosbulk

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/ratebatch/batcher/internal/redact"
)

// A Class says what to do about an error from Cosmos DB; see [Classify] and
// the table in the package doc.
type Class int

const (
	// OK: no error.
	OK Class = iota
	// Throttle: the service refused the request for now (429); retry it
	// after the wait it asked for ([RetryAfter]), without counting an
	// attempt, and slow down.
	Throttle
	// Transient: the request failed in a way that may pass (a timeout, a
	// connection reset, 408, 410, 449, 5xx, ...); retry it after a
	// back-off, a limited number of times.
	Transient
	// Permanent: the service refused the request for good (400, 401, 403,
	// 404, 409, 412, 413, ...); retrying would fail the same way.
	Permanent
)

// String returns the class's name: "ok", "throttle", "transient" or
// "permanent".
func (c Class) String() string {
	switch c {
	case OK:
		return "ok"
	case Throttle:
		return "throttle"
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Sub-statuses (x-ms-substatus) that change a status's class.
const (
	subStatusWriteForbidden          = 3    // 403.3: a region is failing over; write elsewhere, or soon
	subStatusReadSessionNotAvailable = 1002 // 404.1002: a replica has not caught up with the session yet
)

// Classify says what to do about err, an error from the azcosmos SDK (an
// *azcore.ResponseError, maybe wrapped), a [*BatchOperationError], or a
// transport error. See the table in the package doc:
//
//   - nil is [OK];
//   - 429 is [Throttle];
//   - 408, 410, 449, 500, 502, 503 and 504, 403 with sub-status 3 (write
//     forbidden during a failover) and 404 with sub-status 1002 (read
//     session not available) are [Transient], and so is any other 5xx;
//   - any other 4xx (400, 401, 403, 404, 409, 412, 413, ...) is
//     [Permanent];
//   - an error without a status (a connection reset, a DNS failure, a
//     timeout, a cancelled context) is [Transient]: the request may not
//     have reached the service, and an upsert may be repeated safely.
func Classify(err error) Class {
	if err == nil {
		return OK
	}
	status, sub, ok := statusOf(err)
	if !ok {
		return Transient
	}
	return classifyStatus(status, sub)
}

func classifyStatus(status, sub int) Class {
	switch {
	case status < 400:
		return OK
	case status == http.StatusTooManyRequests:
		return Throttle
	case status == http.StatusForbidden && sub == subStatusWriteForbidden,
		status == http.StatusNotFound && sub == subStatusReadSessionNotAvailable,
		status == http.StatusRequestTimeout, status == http.StatusGone, status == 449,
		status >= 500:
		return Transient
	}
	return Permanent
}

// statusOf returns the HTTP status and sub-status err carries, if any.
func statusOf(err error) (status, sub int, ok bool) {
	var re *azcore.ResponseError
	var be *BatchOperationError
	switch {
	case errors.As(err, &be):
		return be.StatusCode, be.SubStatusCode, true
	case errors.As(err, &re):
		if re.RawResponse != nil {
			sub, _ = strconv.Atoi(strings.TrimSpace(re.RawResponse.Header.Get(headerSubStatus)))
		}
		return re.StatusCode, sub, true
	}
	return 0, 0, false
}

// StatusCode returns the HTTP status code err carries (from an
// *azcore.ResponseError or a [*BatchOperationError], maybe wrapped), or 0.
func StatusCode(err error) int {
	s, _, _ := statusOf(err)
	return s
}

// The response headers the package reads.
const (
	headerRetryAfter = "x-ms-retry-after-ms"
	headerCharge     = "x-ms-request-charge"
	headerSubStatus  = "x-ms-substatus"
)

// MaxRetryAfter is the longest wait [RetryAfter] returns: a retry-after
// beyond it (the service never asks for more than a few seconds) is taken
// as MaxRetryAfter rather than stalling a lane for hours.
const MaxRetryAfter = time.Minute

// RetryAfter returns the wait a throttled request's response asked for, in
// its x-ms-retry-after-ms header (milliseconds, fractions allowed), and
// whether it asked for a usable one. err is an *azcore.ResponseError, maybe
// wrapped.
//
//   - No response, no header, or a malformed value (not a number, NaN,
//     infinite): 0, false.
//   - Zero or negative: 0, false. The service asked for no wait, which is
//     no guide to how long to wait; the caller backs off on its own.
//   - More than [MaxRetryAfter]: MaxRetryAfter, true.
//   - Otherwise the value, rounded up to a whole microsecond, and true.
//
// The [Loader] hands the result to [batcher.Operation.Throttle], which
// honours a usable wait as given and backs off exponentially without one.
func RetryAfter(err error) (time.Duration, bool) {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil {
		return 0, false
	}
	return parseRetryAfter(re.RawResponse.Header.Get(headerRetryAfter))
}

func parseRetryAfter(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	ms, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(ms) || math.IsInf(ms, 0) || ms <= 0 {
		return 0, false
	}
	if ms >= float64(MaxRetryAfter/time.Millisecond) {
		return MaxRetryAfter, true
	}
	return time.Duration(math.Ceil(ms*1000)) * time.Microsecond, true
}

// RequestCharge returns the request charge in RU (x-ms-request-charge) of
// the response err carries, or 0. A failed request is charged too (about
// 1 RU for a 4xx; 0 for a 429).
func RequestCharge(err error) float64 {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil {
		return 0
	}
	c, perr := strconv.ParseFloat(strings.TrimSpace(re.RawResponse.Header.Get(headerCharge)), 64)
	if perr != nil || math.IsNaN(c) || math.IsInf(c, 0) || c < 0 {
		return 0
	}
	return c
}

// PartitionKeyRangeID returns the partition key range (the physical
// partition) that answered the request err failed with, from its
// x-ms-documentdb-partitionkeyrangeid header: "" if err is not an
// *azcore.ResponseError or the service did not say. Cosmos DB names the
// range in every document response, 429s included.
func PartitionKeyRangeID(err error) string {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return ""
	}
	return rangeIDOf(re.RawResponse)
}

// headerRangeID is the response header naming the partition key range that
// served a request.
const headerRangeID = "x-ms-documentdb-partitionkeyrangeid"

// maxRangeIDLen bounds a range id read from a response: Azure's are short
// decimal numbers; anything longer is not one.
const maxRangeIDLen = 64

func rangeIDOf(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	id := strings.TrimSpace(resp.Header.Get(headerRangeID))
	if len(id) > maxRangeIDLen {
		return ""
	}
	return id
}

// A BatchOperationError is the failure of one operation of a transactional
// batch whose response said StatusCode (and SubStatusCode, if any) for it.
// A request that fails as a whole fails with the SDK's
// *azcore.ResponseError instead.
type BatchOperationError struct {
	PartitionKey  string
	Index         int // the operation's place in the transactional batch
	StatusCode    int
	SubStatusCode int
}

// Error says which operation of the batch failed, its status and why.
func (e *BatchOperationError) Error() string {
	s := fmt.Sprintf("cosmosbulk: operation %d of a transactional batch of partition key %q: %d %s",
		e.Index, e.PartitionKey, e.StatusCode, http.StatusText(e.StatusCode))
	if e.SubStatusCode != 0 {
		s += fmt.Sprintf(" (sub-status %d)", e.SubStatusCode)
	}
	return s
}

// An ItemError is how the write of one item failed for good: the error
// that an item's [batcher.Operation.Wait] returns, and that [Loader.LoadAll]
// joins, when the service refused it (Class [Permanent]). Items whose
// retries ran out fail with the Batcher's error (wrapping
// batcher.ErrTooManyAttempts and an ItemError of Class [Transient]). Match
// it with errors.As; the message text is not part of the contract.
type ItemError struct {
	ID, PartitionKey string
	// StatusCode is the HTTP status of the answer, 0 without one (a
	// transport error).
	StatusCode int
	Class      Class
	// Err is the SDK's error (an *azcore.ResponseError), a
	// [*BatchOperationError], or a transport error.
	Err error
}

// Error names the item, its partition key, the status and the likely
// cause, with any secret masked.
func (e *ItemError) Error() string {
	what := "failed"
	switch {
	case e.Class == Permanent && e.StatusCode != 0:
		what = fmt.Sprintf("refused for good (%d %s%s)", e.StatusCode, http.StatusText(e.StatusCode), hint(e.StatusCode))
	case e.Class == Transient:
		what = "failed, transiently"
	case e.Class == Throttle:
		what = "throttled"
	}
	return fmt.Sprintf("cosmosbulk: item %q (partition key %q) %s: %s", e.ID, e.PartitionKey, what, redact.String(e.Err.Error()))
}

// Unwrap returns the error the write failed with, for errors.Is and errors.As.
func (e *ItemError) Unwrap() error { return e.Err }

// hint says in a few words what a permanent status usually means.
func hint(status int) string {
	switch status {
	case http.StatusBadRequest:
		return ": the document or the request is malformed, e.g. no id, or a partition key that differs from the document's"
	case http.StatusUnauthorized:
		return ": the key or token is wrong or has expired"
	case http.StatusForbidden:
		return ": the principal may not do this, or the account blocks it (firewall, quota)"
	case http.StatusNotFound:
		return ": the database or container does not exist"
	case http.StatusConflict:
		return ": an item with this id already exists"
	case http.StatusPreconditionFailed:
		return ": the item changed since its etag was read"
	case http.StatusRequestEntityTooLarge:
		return ": the document is over 2 MB, or the batch over its limits"
	}
	return ""
}
