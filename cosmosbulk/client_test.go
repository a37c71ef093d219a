package cosmosbulk_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ratebatch/batcher/cosmosbulk"
)

// TestClientOptionsInsecureOnlyForLoopback checks that ClientOptions(true)
// leaves a self-signed certificate unverified on a loopback address, and
// verifies it for any other host, even one that reaches the same server.
func TestClientOptionsInsecureOnlyForLoopback(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.StartTLS()
	defer srv.Close()
	o := cosmosbulk.ClientOptions(true)
	if o.Retry.MaxRetries != -1 {
		t.Errorf("MaxRetries = %d, want -1 (429s left to the Loader)", o.Retry.MaxRetries)
	}
	hc := o.Transport.(*http.Client)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatalf("GET %s (loopback, self-signed): %v", srv.URL, err)
	}
	resp.Body.Close()

	// Every other host is dialled to the same server: its self-signed
	// certificate must be refused.
	tr := hc.Transport.(*http.Transport)
	addr := srv.Listener.Addr().String()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	for _, u := range []string{"https://myaccount.documents.azure.com:443/", "https://10.1.2.3/", "https://[2001:db8::1]:8081/", "https://localhost.evil.example/"} {
		resp, err := hc.Get(u)
		if err == nil {
			resp.Body.Close()
			t.Errorf("GET %s with a self-signed certificate succeeded; want it refused", u)
			continue
		}
		if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("GET %s: %v; want a certificate error", u, err)
		}
	}
	if resp, err := hc.Get("https://localhost:" + srv.URL[strings.LastIndex(srv.URL, ":")+1:] + "/"); err != nil {
		t.Errorf("GET via localhost: %v", err)
	} else {
		resp.Body.Close()
	}

	if o := cosmosbulk.ClientOptions(false); o.Transport != nil || o.Retry.MaxRetries != -1 {
		t.Errorf("ClientOptions(false) = %+v; want the SDK's transport and MaxRetries -1", o)
	}
}

func TestIsLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "[::1]": true, "localhost": true, "LOCALHOST": true,
		"10.0.0.1": false, "localhost.example": false, "example.com": false, "": false, "0.0.0.0": false,
	} {
		if got := cosmosbulk.IsLoopback(host); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", host, got, want)
		}
	}
}
