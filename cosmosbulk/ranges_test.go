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
// key's first item goes to the default lane's watcher and its further items
// are held until an answer speaks for the key (no answer at all does not);
// once learned, in its range's, the same watcher for the same key, another
// watcher for a key of another range in the same bucket; a split (a new
// range id) moves the key; an answer naming no range stops the holding;
// without range lanes nothing is held; and the maps stay bounded.
func TestRangesRouteKeys(t *testing.T) {
	l := newLoader(newFakeStore(1000), batcher.NewBatcher())
	def, err := l.watchers()
	if err != nil {
		t.Fatal(err)
	}
	route := func(l *Loader, pk string) route { return l.route(pk, def, newWrite(Item{PartitionKey: pk})) }
	watcher := func(pk string) *batcher.Watcher {
		t.Helper()
		rt := route(l, pk)
		if rt.held || rt.w == nil {
			t.Fatalf("key %s: held, want a watcher", pk)
		}
		return rt.w
	}
	a := "a"
	var b string // a key in a's bucket
	for i := 0; b == ""; i++ {
		if k := fmt.Sprint("b", i); l.Lane(k) == l.Lane(a) {
			b = k
		}
	}
	first := route(l, a)
	if first.w != def[l.Lane(a)] || first.learner == nil || first.held {
		t.Fatalf("an unknown key's first item: %+v; want the default lane's watcher, learning", first)
	}
	if rt := route(l, a); !rt.held {
		t.Errorf("a learning key's second item is not held: %+v", rt)
	}
	l.learn(a, "", false) // no answer: the key is still learning
	select {
	case <-first.learner.learned:
		t.Errorf("a request without an answer released the held items")
	default:
	}
	l.learn(a, "1", true)
	select {
	case <-first.learner.learned:
	default:
		t.Errorf("an answer naming the range did not release the held items")
	}
	if n := len(first.learner.pending); n != 1 {
		t.Errorf("%d items held, want 1", n)
	}
	l.learn(b, "2", true)
	wa, wb := watcher(a), watcher(b)
	if wa == def[l.Lane(a)] || wa == wb {
		t.Errorf("keys of ranges 1 and 2 share a watcher, or stayed in the default one")
	}
	if watcher(a) != wa {
		t.Errorf("one key, two watchers")
	}
	l.learn(b, "1", true) // b's partition split, or merged, into range 1
	if watcher(b) != wa {
		t.Errorf("after a new range id, the key is not in that range's watcher")
	}
	for i := range maxKnownKeys + 10 {
		l.learn(fmt.Sprint("k", i), "3", true)
	}
	if n := len(l.ranges.keys); n != maxKnownKeys {
		t.Errorf("%d keys remembered, want at most %d", n, maxKnownKeys)
	}
	for i := range maxRanges + 10 {
		l.learn("x", fmt.Sprint("r", i), true)
	}
	if n := len(l.ranges.lanes); n != maxRanges {
		t.Errorf("%d ranges with lanes, want at most %d", n, maxRanges)
	}

	// A service that names no ranges: after its first answer, nothing is
	// held.
	l2 := newLoader(newFakeStore(1000), batcher.NewBatcher())
	l2.lanes = len(def)
	c := "c"
	if rt := route(l2, c); rt.learner == nil {
		t.Fatalf("first item of c not learning")
	}
	l2.learn(c, "", true)
	for range 2 {
		if rt := route(l2, c); rt.held || rt.w != def[l.Lane(c)] {
			t.Errorf("after an answer naming no range: %+v; want the default lane, not held", rt)
		}
	}

	// Without range lanes: the default lane, nothing learned or held.
	l3 := newLoader(newFakeStore(1000), batcher.NewBatcher()).WithRangeLanes(false)
	for range 2 {
		if rt := route(l3, a); rt.held || rt.learner != nil || rt.w != def[l.Lane(a)] {
			t.Errorf("without range lanes: %+v; want the default lane", rt)
		}
	}
	l3.learn(a, "1", true)
	if rt := route(l3, a); rt.w != def[l.Lane(a)] {
		t.Errorf("without range lanes, an answer moved the key")
	}

	// At most maxHeld items are held; beyond, the default lane.
	l.ranges.held = maxHeld
	d := "d"
	route(l, d)
	if rt := route(l, d); rt.held || rt.w != def[l.Lane(d)] {
		t.Errorf("with %d items held: %+v; want the default lane", maxHeld, rt)
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
