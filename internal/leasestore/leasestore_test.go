package leasestore

import (
	"context"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct{ spec, kind, addr, err string }{
		{"redis://127.0.0.1:6379", "redis", "127.0.0.1:6379", ""},
		{"etcd://127.0.0.1:2379", "etcd", "http://127.0.0.1:2379", ""},
		{"etcd+https://etcd.example:2379", "etcd", "https://etcd.example:2379", ""},
		{"http://127.0.0.1:10000/devstoreaccount1/leases/", "azblob", "http://127.0.0.1:10000/devstoreaccount1/leases", ""},
		{"https://acct.blob.core.windows.net/leases", "azblob", "https://acct.blob.core.windows.net/leases", ""},
		{"https://acct.blob.core.windows.net/", "", "", "must name the container"},
		{"mongo://x:1", "", "", `unknown scheme "mongo"`},
		{"127.0.0.1:6379", "", "", "want redis://host:port"},
	} {
		kind, addr, err := Parse(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.spec) {
				t.Errorf("Parse(%q) = %v, want an error naming it and saying %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || kind != tc.kind || addr != tc.addr {
			t.Errorf("Parse(%q) = %q, %q, %v; want %q, %q", tc.spec, kind, addr, err, tc.kind, tc.addr)
		}
	}
}

func TestOpenUnknownKind(t *testing.T) {
	if _, _, err := Open(context.Background(), "mongo", "x", "p"); err == nil || !strings.Contains(err.Error(), `"mongo"`) {
		t.Errorf("Open(mongo) = %v", err)
	}
}
