package redact

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	const secret = "S3cr3tXyZ"
	cases := []string{
		"redis://:" + secret + "@127.0.0.1:6379/0",
		"rediss://user:" + secret + "@host:6380",
		"etcd://root:" + secret + "@127.0.0.1:2379",
		"dial redis://u:p@ss" + secret + "@h:1: refused",
		"https://acct.blob.core.windows.net/c?sv=2022-11-02&se=2030&sp=rwd&sig=" + secret,
		"lease store https://h/c?sig=" + secret + " failed",
		"DefaultEndpointsProtocol=https;AccountName=a;AccountKey=" + secret + ";EndpointSuffix=core",
		"BlobEndpoint=https://h;SharedAccessSignature=sv=1&sig=" + secret,
		"clickhouse://default:" + secret + "@127.0.0.1:9000/db?dial_timeout=1s",
		"tcp://127.0.0.1:9000?username=u&password=" + secret,
		"host=h user=u password=" + secret + " dbname=d",
		"AccountEndpoint=https://x:8081/;AccountKey=" + secret + ";",
		// Passwords with characters a URL should have escaped.
		"redis://:pa/" + secret + "@127.0.0.1:6379/0",
		"redis://u:" + secret + "#x@h:1",
		"redis://u:x?" + secret + "@h:1",
		`parse "redis://:` + secret + `@h:x": invalid port ":x" after host`,
		"etcds://root:" + secret + "@h1:2379,h2:2379",
		"Put \"http://127.0.0.1:1/devstoreaccount1/c/x?comp=lease&sig=" + secret + "\": dial tcp 127.0.0.1:1",
	}
	for _, c := range cases {
		got := String(c)
		if strings.Contains(got, secret) {
			t.Errorf("String(%q) = %q: the secret is still there", c, got)
		}
		if !strings.Contains(got, Mask) {
			t.Errorf("String(%q) = %q: no %s", c, got, Mask)
		}
	}
}

func TestStringKeepsTheRest(t *testing.T) {
	for in, want := range map[string]string{
		"redis://:pw@127.0.0.1:6379/2":             "redis://:REDACTED@127.0.0.1:6379/2",
		"redis://127.0.0.1:6379":                   "redis://127.0.0.1:6379",
		"redis://user@h:1":                         "redis://user@h:1",
		"https://h/c?restype=container&comp=list":  "https://h/c?restype=container&comp=list",
		"no address here":                          "no address here",
		"a=https://u:p@h/x and b=etcd://v:q@h2":    "a=https://u:REDACTED@h/x and b=etcd://v:REDACTED@h2",
		"redis://:pa/ss@h:1/0 down":                "redis://:REDACTED@h:1/0 down",
		"https://h/x@y":                            "https://h/x@y",
		"Get \"https://h/c?sig=abc\": refused":     "Get \"https://h/c?sig=REDACTED\": refused",
		"lease store https://h/c?sig=abc: refused": "lease store https://h/c?sig=REDACTED: refused",
		"Password=abc: refused":                    "Password=REDACTED: refused",
	} {
		if got := String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestError(t *testing.T) {
	base := errors.New("refused")
	err := fmt.Errorf("redis://:hunter2@h:1: %w", base)
	got := Error(err)
	if strings.Contains(got.Error(), "hunter2") || !errors.Is(got, base) {
		t.Fatalf("Error() = %q, Is(base) = %v", got, errors.Is(got, base))
	}
	if Error(nil) != nil {
		t.Fatal("Error(nil) != nil")
	}
	if Error(base) != base {
		t.Fatal("an error with no secret should come back as it is")
	}
}
