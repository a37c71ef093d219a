package cosmosbulk

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/ratebatch/batcher"
)

// TestRangesRouteKeys checks the routing of partition keys to watchers: a
// key no answer named is in the default lane's watchers; once learned, in
// its range's, the same watcher for the same key, another watcher for a
// key of another range in the same bucket; a split (a new range id) moves
// the key; and the map of keys stays bounded.
func TestRangesRouteKeys(t *testing.T) {
	l := newLoader(newFakeStore(1000), batcher.NewBatcher())
	def, err := l.watchers()
	if err != nil {
		t.Fatal(err)
	}
	a := "a"
	var b string // a key in a's bucket
	for i := 0; b == ""; i++ {
		if k := fmt.Sprint("b", i); l.Lane(k) == l.Lane(a) {
			b = k
		}
	}
	if w := l.watcherOf(a, def); w != def[l.Lane(a)] {
		t.Errorf("an unknown key is not in the default lane's watcher")
	}
	l.learn(a, "")
	if w := l.watcherOf(a, def); w != def[l.Lane(a)] {
		t.Errorf("an answer naming no range moved the key")
	}
	l.learn(a, "1")
	l.learn(b, "2")
	wa, wb := l.watcherOf(a, def), l.watcherOf(b, def)
	if wa == def[l.Lane(a)] || wa == wb {
		t.Errorf("keys of ranges 1 and 2 share a watcher, or stayed in the default one")
	}
	if l.watcherOf(a, def) != wa {
		t.Errorf("one key, two watchers")
	}
	l.learn(b, "1") // b's partition split, or merged, into range 1
	if l.watcherOf(b, def) != wa {
		t.Errorf("after a new range id, the key is not in that range's watcher")
	}
	for i := range maxKnownKeys + 10 {
		l.learn(fmt.Sprint("k", i), "3")
	}
	if n := len(l.ranges.keys); n != maxKnownKeys {
		t.Errorf("%d keys remembered, want at most %d", n, maxKnownKeys)
	}
	for i := range maxRanges + 10 {
		l.learn("x", fmt.Sprint("r", i))
	}
	if n := len(l.ranges.lanes); n != maxRanges {
		t.Errorf("%d ranges with lanes, want at most %d", n, maxRanges)
	}
}

// TestPartitionKeyRangeID checks reading the range id of an error's
// response.
func TestPartitionKeyRangeID(t *testing.T) {
	withRange := func(id string) error {
		h := http.Header{}
		h.Set("x-ms-documentdb-partitionkeyrangeid", id)
		return fmt.Errorf("wrapped: %w", &azcore.ResponseError{StatusCode: 429, RawResponse: &http.Response{StatusCode: 429, Header: h}})
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{withRange("7"), "7"},
		{withRange(" 12 "), "12"},
		{withRange(strings.Repeat("9", 100)), ""},
		{&azcore.ResponseError{StatusCode: 500}, ""},
		{errors.New("reset"), ""},
		{nil, ""},
	} {
		if got := PartitionKeyRangeID(c.err); got != c.want {
			t.Errorf("PartitionKeyRangeID(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
