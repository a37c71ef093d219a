package cosmosmodel

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// client forwards requests to the backend of a proxy-mode Model.
type client struct {
	base *url.URL
	c    *http.Client
}

func newClient(base *url.URL, rt http.RoundTripper) *client {
	if rt == nil {
		t := &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
		}
		if isLoopback(base.Hostname()) {
			// Local Cosmos DB servers use self-signed certificates.
			t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
		}
		rt = t
	}
	return &client{base: base, c: &http.Client{Transport: rt}}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hopHeaders are not forwarded, in either direction.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade", "Content-Length", "Accept-Encoding", "Host"}

// forward sends r, with body, to the backend and reads its answer. The
// backend's charge header is dropped; the caller sets the model's.
func (b *client) forward(r *http.Request, body []byte) (reply, error) {
	u := *b.base
	u.Path = r.URL.Path
	u.RawPath = r.URL.RawPath
	u.RawQuery = r.URL.RawQuery
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	for k, v := range r.Header {
		req.Header[k] = v
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return reply{}, fmt.Errorf("reading the answer: %w", err)
	}
	h := resp.Header.Clone()
	for _, k := range hopHeaders {
		h.Del(k)
	}
	h.Del(hdrCharge)
	h.Del("Content-Location")
	h.Del("Content-Encoding") // the transport decompressed the body
	return reply{status: resp.StatusCode, body: rb, header: h}, nil
}
