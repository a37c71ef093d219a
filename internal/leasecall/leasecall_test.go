package leasecall

import (
	"slices"
	"strings"
	"testing"

	"github.com/ratebatch/batcher/ratelimiter"
)

func TestDemandRoundTrip(t *testing.T) {
	for _, d := range []ratelimiter.Demand{
		{Owner: "a", Want: 3, Held: []int{0, 4, 17}},
		{Owner: "b", Want: 0, Held: []int{}},
	} {
		s := EncodeDemand(d)
		got, err := DecodeDemand("pkg", d.Owner, s)
		if err != nil || got.Owner != d.Owner || got.Want != d.Want || !slices.Equal(got.Held, d.Held) {
			t.Errorf("DecodeDemand(EncodeDemand(%+v) = %q) = %+v, %v", d, s, got, err)
		}
	}
	for _, bad := range []string{"", "3", "x 1", "3 1,y"} {
		if _, err := DecodeDemand("pkg", "o", bad); err == nil || !strings.HasPrefix(err.Error(), "pkg: ") || !strings.Contains(err.Error(), `"o"`) {
			t.Errorf("DecodeDemand(%q) = %v, want an error naming the package and owner", bad, err)
		}
	}
}
