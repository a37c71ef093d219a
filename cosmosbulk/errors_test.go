package cosmosbulk

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// respErr is an SDK error of status, with headers (name, value, ...).
func respErr(status int, headers ...string) error {
	h := http.Header{}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Set(headers[i], headers[i+1])
	}
	return &azcore.ResponseError{StatusCode: status, RawResponse: &http.Response{StatusCode: status, Header: h}}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want Class
	}{
		{nil, OK},
		{errors.New("connection reset by peer"), Transient},
		{context.DeadlineExceeded, Transient},
		{context.Canceled, Transient},
		{throttleErr(time.Second), Throttle},
		{fmt.Errorf("wrapped: %w", throttleErr(time.Second)), Throttle},
		{respErr(429, "x-ms-substatus", "3200"), Throttle},
		{respErr(408), Transient},
		{respErr(410, "x-ms-substatus", "1002"), Transient},
		{respErr(449), Transient},
		{respErr(500), Transient},
		{respErr(502), Transient},
		{respErr(503), Transient},
		{respErr(504), Transient},
		{respErr(507), Transient},
		{respErr(403, "x-ms-substatus", "3"), Transient},
		{respErr(404, "x-ms-substatus", "1002"), Transient},
		{respErr(400), Permanent},
		{respErr(400, "x-ms-substatus", "1001"), Permanent},
		{respErr(401), Permanent},
		{respErr(403), Permanent},
		{respErr(403, "x-ms-substatus", "1008"), Permanent},
		{respErr(404), Permanent},
		{respErr(409), Permanent},
		{respErr(412), Permanent},
		{respErr(413), Permanent},
		{respErr(422), Permanent},
		{&BatchOperationError{StatusCode: 400}, Permanent},
		{&BatchOperationError{StatusCode: 429}, Throttle},
		{&BatchOperationError{StatusCode: 503}, Transient},
		{&BatchOperationError{StatusCode: 403, SubStatusCode: 3}, Transient},
		{&ItemError{Err: respErr(409)}, Permanent},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	for c, s := range map[Class]string{OK: "ok", Throttle: "throttle", Transient: "transient", Permanent: "permanent", 9: "Class(9)"} {
		if c.String() != s {
			t.Errorf("%d.String() = %q, want %q", int(c), c.String(), s)
		}
	}
	if StatusCode(fmt.Errorf("x: %w", respErr(409))) != 409 || StatusCode(errors.New("x")) != 0 {
		t.Errorf("StatusCode")
	}
}

func TestRetryAfter(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		header string // "-" for none
		want   time.Duration
		ok     bool
	}{
		{"-", 0, false},
		{"", 0, false},
		{"500", 500 * ms, true},
		{" 500 ", 500 * ms, true},
		{"12.5", 12500 * time.Microsecond, true},
		{"0.0001", time.Microsecond, true}, // rounded up, never to nothing
		{"0", 0, false},
		{"-100", 0, false},
		{"abc", 0, false},
		{"100ms", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
		{"-Inf", 0, false},
		{"1e300", MaxRetryAfter, true},
		{"7200000", MaxRetryAfter, true}, // two hours
		{"60000", MaxRetryAfter, true},
		{"59999", 59999 * ms, true},
	} {
		var err error
		if c.header == "-" {
			err = respErr(429)
		} else {
			err = respErr(429, "x-ms-retry-after-ms", c.header)
		}
		if got, ok := RetryAfter(fmt.Errorf("wrapped: %w", err)); got != c.want || ok != c.ok {
			t.Errorf("RetryAfter(x-ms-retry-after-ms %q) = %v, %v; want %v, %v", c.header, got, ok, c.want, c.ok)
		}
	}
	if d, ok := RetryAfter(nil); d != 0 || ok {
		t.Errorf("RetryAfter(nil) = %v, %v", d, ok)
	}
	if d, ok := RetryAfter(&azcore.ResponseError{StatusCode: 429}); d != 0 || ok {
		t.Errorf("RetryAfter without a response = %v, %v", d, ok)
	}
}

func TestRequestCharge(t *testing.T) {
	for h, want := range map[string]float64{"1": 1, "5.71": 5.71, "": 0, "x": 0, "-3": 0, "NaN": 0} {
		if got := RequestCharge(respErr(400, "x-ms-request-charge", h)); got != want {
			t.Errorf("RequestCharge(%q) = %v, want %v", h, got, want)
		}
	}
	if RequestCharge(errors.New("x")) != 0 {
		t.Errorf("RequestCharge of a transport error is not 0")
	}
}

func TestItemError(t *testing.T) {
	sdk := respErr(409)
	err := fmt.Errorf("op: %w", &ItemError{ID: "a", PartitionKey: "p", StatusCode: 409, Class: Permanent, Err: sdk})
	var ie *ItemError
	if !errors.As(err, &ie) || ie.ID != "a" || !errors.Is(err, sdk) {
		t.Fatalf("errors.As/Is on %v", err)
	}
	msg := err.Error()
	for _, want := range []string{`item "a"`, `partition key "p"`, "409 Conflict", "already exists"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not say %q", msg, want)
		}
	}
	// Secrets in the wrapped error do not reach the message.
	leaky := &ItemError{ID: "b", Class: Transient, Err: errors.New("GET https://acct.documents.azure.com/?sig=SECRETSIG&se=2030 failed")}
	if strings.Contains(leaky.Error(), "SECRETSIG") {
		t.Errorf("the message leaks a secret: %s", leaky.Error())
	}
	be := &BatchOperationError{PartitionKey: "p", Index: 3, StatusCode: 400, SubStatusCode: 1001}
	if s := be.Error(); !strings.Contains(s, "operation 3") || !strings.Contains(s, "400 Bad Request") || !strings.Contains(s, "1001") {
		t.Errorf("BatchOperationError: %s", s)
	}
}
