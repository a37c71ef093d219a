package main

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// counter is an azcosmos pipeline policy that counts a client's document
// requests (every attempt: it sits below the SDK's retries), their 429s
// and their request charges, in all and per second of the model's life.
type counter struct {
	born time.Time // the model's creation: its seconds count from here

	mu       sync.Mutex
	requests int64
	throttle int64
	ru       float64
	sec      []perSecond // by the second a request was sent in
}

// perSecond is what a client sent in one second of the model's life.
type perSecond struct {
	requests, throttled int64
	ru                  float64
}

func newCounter(born time.Time) *counter { return &counter{born: born} }

// Do implements policy.Policy.
func (c *counter) Do(req *policy.Request) (*http.Response, error) {
	if !strings.Contains(req.Raw().URL.Path, "/docs") {
		return req.Next() // metadata: databases, containers, offers
	}
	sent := time.Now()
	resp, err := req.Next()
	c.mu.Lock()
	defer c.mu.Unlock()
	i := int(sent.Sub(c.born) / time.Second)
	for len(c.sec) <= i {
		c.sec = append(c.sec, perSecond{})
	}
	c.requests++
	c.sec[i].requests++
	if resp == nil {
		return resp, err
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		c.throttle++
		c.sec[i].throttled++
	}
	if ru, perr := strconv.ParseFloat(resp.Header.Get("x-ms-request-charge"), 64); perr == nil {
		c.ru += ru
		c.sec[i].ru += ru
	}
	return resp, err
}

func (c *counter) totals() (requests, throttled int64, ru float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requests, c.throttle, c.ru
}

// second returns what was sent in the model's second i.
func (c *counter) second(i int) perSecond {
	if c == nil {
		return perSecond{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.sec) {
		return perSecond{}
	}
	return c.sec[i]
}

// seedPause is the seed-like policy's pause on any throttle.
const seedPause = 500 * time.Millisecond

// fixedRetryAfter rewrites the retry-after of every 429 to seedPause, so
// that a Loader with one lane pauses all its releases for 500ms on any
// throttle, as the seed did (and not for the time to the model's next
// second, which the model asks for).
type fixedRetryAfter struct{}

func (fixedRetryAfter) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
		resp.Header.Set("x-ms-retry-after-ms", strconv.Itoa(int(seedPause/time.Millisecond)))
	}
	return resp, err
}
