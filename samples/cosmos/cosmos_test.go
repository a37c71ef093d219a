package cosmos_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ratebatch/batcher/samples/cosmos"
)

// TestClientOptionsRefusesInsecureTLSForRemoteHosts checks that
// ClientOptions(true) skips certificate verification for a loopback server
// only: a remote host name that reaches the same self-signed server is
// refused.
func TestClientOptionsRefusesInsecureTLSForRemoteHosts(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	defer srv.Close()
	hc := cosmos.ClientOptions(true).Transport.(*http.Client)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatalf("loopback server with a self-signed certificate: %v", err)
	}
	resp.Body.Close()
	tr := hc.Transport.(*http.Transport)
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
	}
	if resp, err := hc.Get("https://myaccount.documents.azure.com/"); err == nil {
		resp.Body.Close()
		t.Errorf("a remote host's self-signed certificate was accepted")
	}
}
